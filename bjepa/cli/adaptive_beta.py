"""``bjepa adaptive-beta``: VJEPA on Noisy TV with β set during training by a controller
(TargetRate, CalibratedBeta) from a start far from the good value, compared with fixed β.

See docs/adaptive_beta.md."""

from __future__ import annotations

import argparse

from bjepa.cli._common import parse_float_list, parse_int_list

__all__ = ["register", "run"]


def _schemes(text: str) -> list[str]:
    from bjepa.experiments.adaptive_beta import SCHEMES

    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in SCHEMES]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"schemes must be a comma list of {SCHEMES}, got "
                                         f"{text!r}")
    return names


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("adaptive-beta", help="VJEPA with an adaptive KL weight β on Noisy TV",
                       description=__doc__)
    p.add_argument("--schemes", type=_schemes, default=None,
                   help="comma list of rate, calibrated, fixed (default: calibrated,rate)")
    p.add_argument("--betas0", type=parse_float_list, default=None,
                   help="starting β values (default: 1,1e-4)")
    p.add_argument("--sigmas", type=parse_float_list, default=None,
                   help="distractor strengths (default: 8,4)")
    p.add_argument("--seeds", type=parse_int_list, default=None, help="e.g. 0-4 (default)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default 1000)")
    p.add_argument("--batch-size", type=int, default=None, help="mini-batch rows (default 256)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 3e-3)")
    p.add_argument("--target-rate", type=float, default=None,
                   help="TargetRate's nats per latent dimension (default 3)")
    p.add_argument("--coverage", type=float, default=None,
                   help="CalibratedBeta's required 90 %% coverage (default 0.9)")
    p.add_argument("--quick", action="store_true",
                   help="σ = 8, one seed, β₀ = 1, 300 steps: a look in well under a minute")
    p.add_argument("--out", default=None, help="run folder (default: runs/adaptive-beta-<time>)")
    p.add_argument("--resume", action="store_true",
                   help="keep the finished runs in --out and run the rest")
    p.add_argument("--overwrite", action="store_true", help="start again in an existing --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from bjepa.experiments.adaptive_beta import (
        AdaptiveBetaConfig,
        format_table,
        plot_beta_traces,
        run_noisy_tv,
        summarise,
    )
    from bjepa.runs import RunFolder, default_run_dir

    given = {"schemes": args.schemes, "betas0": args.betas0, "sigmas": args.sigmas,
             "seeds": args.seeds, "steps": args.steps, "batch_size": args.batch_size,
             "lr": args.lr}
    if args.quick:
        given = {"betas0": [1.0], "sigmas": [8.0], "seeds": [0], "steps": 300,
                 **{k: v for k, v in given.items() if v is not None}}
    options: dict[str, dict[str, float]] = {}
    if args.target_rate is not None:
        options["rate"] = {"nats_per_dim": args.target_rate}
    if args.coverage is not None:
        options["calibrated"] = {"coverage": args.coverage}
    cfg = AdaptiveBetaConfig(**{k: v for k, v in given.items() if v is not None},
                             options=options).validate()
    if args.resume and not args.out:
        raise ValueError("--resume needs --out (the run folder to continue)")
    with RunFolder(args.out or default_run_dir("adaptive-beta"), overwrite=args.overwrite,
                   resume=args.resume) as folder:
        folder.write_json("config.json", asdict(cfg))
        results = folder.file("results.jsonl")
        if not args.resume and results.exists():
            results.unlink()
        n = len(cfg.schemes) * len(cfg.betas0) * len(cfg.sigmas) * len(cfg.seeds)
        print(f"adaptive-beta: {n} runs ({cfg.schemes} × β₀ {cfg.betas0} × σ {cfg.sigmas} × "
              f"seeds {cfg.seeds}), {cfg.steps} steps each → {folder.path}")
        rows = run_noisy_tv(cfg, results)
        summary = summarise(rows)
        folder.write_json("summary.json", summary)
        table = format_table(summary)
        folder.file("table.md").write_text(table + "\n", encoding="utf-8")
        plot_beta_traces(rows, folder.file("beta_traces.png"))
        print(table)
    return 0
