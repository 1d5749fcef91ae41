"""``bjepa noisy-tv``: the Noisy TV reproduction (SPEC §4.1)."""

from __future__ import annotations

import argparse

from bjepa.cli._common import add_training_args, parse_float_list, parse_int_list, parse_tau


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("noisy-tv", help="train models on Noisy TV and probe their representations",
                       description=__doc__)
    p.add_argument("--models", default=None,
                   help="comma-separated: vjepa,bjepa,jepa,vae,ar (default: vjepa,jepa,vae,ar)")
    p.add_argument("--sigmas", type=parse_float_list, default=None,
                   help="distractor strengths, e.g. 0,1,2,4,8")
    p.add_argument("--seeds", type=parse_int_list, default=None, help="e.g. 0-4 or 0,3")
    p.add_argument("--beta", type=float, default=None, help="VJEPA/BJEPA KL weight β")
    p.add_argument("--tau", type=parse_tau, default=None,
                   help="EMA momentum τ in [0,1] or 'cosine' (0.99→1)")
    p.add_argument("--encoder", choices=["linear", "mlp"], default=None)
    p.add_argument("--quick", action="store_true",
                   help="small, fast configuration (σ ∈ {0,4,8}, 2 seeds, 800 steps)")
    add_training_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bjepa.experiments.noisy_tv import NoisyTVConfig, format_table, summarise
    from bjepa.experiments.noisy_tv import run as run_experiment
    from bjepa.runs import RunFolder, default_run_dir

    overrides = {
        "models": args.models.split(",") if args.models else None,
        "sigmas": args.sigmas, "seeds": args.seeds, "steps": args.steps, "lr": args.lr,
        "batch_size": args.batch_size, "beta": args.beta, "tau": args.tau,
        "encoder": args.encoder, "device": args.device, "progress": not args.no_progress,
    }
    if args.quick:
        cfg = NoisyTVConfig.quick(**overrides)
    else:
        cfg = NoisyTVConfig(**{k: v for k, v in overrides.items() if v is not None})
    cfg.validate()
    folder = RunFolder(args.out or default_run_dir("noisy-tv"), overwrite=args.overwrite)
    n = len(cfg.models) * len(cfg.sigmas) * len(cfg.seeds)
    print(f"Noisy TV: {n} runs ({', '.join(cfg.models)} × σ {cfg.sigmas} × seeds {cfg.seeds}), "
          f"{cfg.steps} steps each → {folder.path}")
    rows = run_experiment(cfg, folder)
    print(format_table(summarise(rows)))
    print(f"\nwrote {folder.path}/: config.json metrics.jsonl results.csv results.json "
          "r2_vs_sigma.png")
    return 0
