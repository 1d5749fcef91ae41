"""β sweep: how VJEPA's KL weight moves it from over-confident to collapsed.

See docs/method.md#beta-sweep.

Trains one VJEPA per β × σ × seed on Noisy TV and reports, per β, the signal/distractor probe
R², active units, KL per dimension, 90 % coverage and NLL (mean ± sd over seeds). Writes a run
folder with ``config.json``, ``results.csv/json`` and ``beta_sweep.png``.

    python examples/beta_sweep.py --quick
    python examples/beta_sweep.py --betas 1e-4,1e-2,1,10 --sigmas 4,8 --seeds 0-4
"""

from __future__ import annotations

import argparse

from bjepa.cli._common import parse_float_list, parse_int_list
from bjepa.experiments.sweeps import BetaSweepConfig, format_table, run_beta_sweep, summarise
from bjepa.runs import RunFolder, default_run_dir

#: the quickest flags, used by tests/test_cli_examples.py
QUICK_ARGS = ["--quick", "--betas", "1e-4,10", "--seeds", "0", "--num-steps", "30",
              "--train-steps", "200"]


def main(args: argparse.Namespace) -> list[dict]:
    overrides = dict(betas=args.betas, sigmas=args.sigmas, seeds=args.seeds,
                     steps=args.num_steps, train_steps=args.train_steps, device=args.device)
    if args.quick:
        cfg = BetaSweepConfig.quick(**overrides)
    else:
        cfg = BetaSweepConfig(**{k: v for k, v in overrides.items() if v is not None})
    # 1. train and evaluate every β × σ × seed; 2. the run folder holds results and the figure
    with RunFolder(args.out or default_run_dir("beta-sweep")) as folder:
        rows = run_beta_sweep(cfg.validate(), folder)
    # 3. mean ± sd over seeds per β
    print(format_table(summarise(rows, "beta"), "beta"))
    print(f"\nwrote {folder.path}/beta_sweep.png")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--betas", type=parse_float_list, default=None)
    parser.add_argument("--sigmas", type=parse_float_list, default=None)
    parser.add_argument("--seeds", type=parse_int_list, default=None)
    parser.add_argument("--num-steps", type=int, default=None)
    parser.add_argument("--train-steps", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="run folder (default: runs/beta-sweep-<time>)")
    parser.add_argument("--quick", action="store_true")
    main(parser.parse_args())
