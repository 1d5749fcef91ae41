"""EMA τ ablation: does the target encoder's momentum matter for VJEPA?

See docs/method.md#ema-tau-ablation.

Trains one VJEPA per τ × σ × seed on Noisy TV — τ = 0 makes the target a stop-gradient copy of
the context encoder, ``cosine:0.99:1`` ramps τ from 0.99 to 1 — and reports the signal and
distractor probe R² and the collapse metrics (mean ± sd over seeds). Writes a run folder with
``config.json``, ``results.csv/json`` and ``tau_ablation.png``.

    python examples/tau_ablation.py --quick
    python examples/tau_ablation.py --sigmas 0,8 --seeds 0-4
"""

from __future__ import annotations

import argparse

from bjepa.cli._common import parse_float_list, parse_int_list, parse_tau
from bjepa.experiments.sweeps import TauAblationConfig, format_table, run_tau_ablation, summarise
from bjepa.runs import RunFolder, default_run_dir

#: the quickest flags, used by tests/test_cli_examples.py
QUICK_ARGS = ["--quick", "--taus", "0,cosine:0.99:1", "--seeds", "0", "--num-steps", "30",
              "--train-steps", "200"]


def main(args: argparse.Namespace) -> list[dict]:
    taus = [parse_tau(t) for t in args.taus.split(",")] if args.taus else None
    overrides = dict(taus=taus, sigmas=args.sigmas, seeds=args.seeds, steps=args.num_steps,
                     train_steps=args.train_steps, device=args.device)
    if args.quick:
        cfg = TauAblationConfig.quick(**overrides)
    else:
        cfg = TauAblationConfig(**{k: v for k, v in overrides.items() if v is not None})
    # 1. train and evaluate every τ × σ × seed; 2. the run folder holds results and the figure
    with RunFolder(args.out or default_run_dir("tau-ablation")) as folder:
        rows = run_tau_ablation(cfg.validate(), folder)
    # 3. mean ± sd over seeds per τ
    print(format_table(summarise(rows, "tau"), "tau"))
    print(f"\nwrote {folder.path}/tau_ablation.png")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--taus", default=None, help="e.g. 0,0.99,cosine:0.99:1")
    parser.add_argument("--sigmas", type=parse_float_list, default=None)
    parser.add_argument("--seeds", type=parse_int_list, default=None)
    parser.add_argument("--num-steps", type=int, default=None)
    parser.add_argument("--train-steps", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None,
                        help="run folder (default: runs/tau-ablation-<time>)")
    parser.add_argument("--quick", action="store_true")
    main(parser.parse_args())
