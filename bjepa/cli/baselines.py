"""``bjepa baselines``: the state-space baselines on Noisy TV — the Kalman filter with the true
system (oracle), a linear-Gaussian state-space model learned from the observations, and an
RSSM — probed like the other models (linear probe of the representation to s_{t+1})."""

from __future__ import annotations

import argparse

from bjepa.cli._common import parse_float_list, parse_int_list


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("baselines", help="Kalman oracle, learned LGSSM and RSSM on Noisy TV",
                       description=__doc__)
    p.add_argument("--models", default=None,
                   help="comma-separated: kalman,lgssm,rssm (default: all)")
    p.add_argument("--sigmas", type=parse_float_list, default=None, help="default 0,4,8")
    p.add_argument("--seeds", type=parse_int_list, default=None, help="default 0-2")
    p.add_argument("--steps", type=int, default=None,
                   help="optimiser steps of every trained model (default: lgssm 300, "
                        "rssm 400)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate")
    p.add_argument("--latent-dim", type=int, default=None,
                   help="state size of the learned models (default 4)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda")
    p.add_argument("--quick", action="store_true",
                   help="σ ∈ {0, 8}, one seed, 60 steps on 1000 frames")
    p.add_argument("--out", default=None, help="run folder (default: runs/baselines-<time>)")
    p.add_argument("--overwrite", action="store_true", help="replace a run in --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bjepa.experiments.baselines import BaselinesConfig, format_table, summarise
    from bjepa.experiments.baselines import run as run_experiment
    from bjepa.runs import RunFolder, default_run_dir

    given = {k: v for k, v in {"models": args.models.split(",") if args.models else None,
                               "sigmas": args.sigmas, "seeds": args.seeds, "steps": args.steps,
                               "lr": args.lr, "device": args.device,
                               "latent_dim": args.latent_dim}.items() if v is not None}
    cfg = (BaselinesConfig.quick(**given) if args.quick else BaselinesConfig(**given)).validate()
    with RunFolder(args.out or default_run_dir("baselines"), overwrite=args.overwrite) as folder:
        print(f"baselines: {', '.join(cfg.models)} × σ {cfg.sigmas} × seeds {cfg.seeds} → "
              f"{folder.path}")
        rows = run_experiment(cfg, folder)
    print(format_table(summarise(rows)))
    print(f"\nwrote {folder.path}/: config.json results.csv results.json summary.json "
          "r2_vs_sigma.png checkpoints/")
    return 0
