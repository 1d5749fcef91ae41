"""``bjepa beta-sweep``: VJEPA's KL weight β on a log grid on Noisy TV.

See docs/method.md#beta-sweep."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from bjepa.cli._common import (
    add_training_args,
    parse_float_list,
    parse_int_list,
    parse_tau,
    resolve_resumed_config,
)

__all__ = ["add_sweep_args", "register", "run", "run_sweep_command"]


def add_sweep_args(p: argparse.ArgumentParser, quick_help: str) -> None:
    """Flags shared by ``beta-sweep`` and ``tau-ablation``."""
    p.add_argument("--sigmas", type=parse_float_list, default=None,
                   help="distractor strengths, e.g. 4,8")
    p.add_argument("--seeds", type=parse_int_list, default=None, help="e.g. 0-4 or 0,3")
    p.add_argument("--train-steps", type=int, default=None, help="training trajectory length")
    p.add_argument("--encoder", choices=["linear", "mlp"], default=None)
    p.add_argument("--quick", action="store_true", help=quick_help)
    add_training_args(p)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("beta-sweep", help="sweep VJEPA's KL weight β on Noisy TV",
                       description=__doc__)
    p.add_argument("--betas", type=parse_float_list, default=None,
                   help="KL weights (default: 1e-4,1e-3,1e-2,0.1,0.3,1,3,10)")
    p.add_argument("--tau", type=parse_tau, default=None,
                   help="EMA momentum τ in [0,1], 'cosine' or 'cosine:a:b' (default 0.99)")
    add_sweep_args(p, "small, fast configuration (5 β, σ = 8, 2 seeds, 600 steps)")
    p.set_defaults(func=run)


def run_sweep_command(args: argparse.Namespace, command: str, cfg_cls: type,
                      overrides: dict[str, Any], runner: Callable[..., list[dict[str, Any]]],
                      param: str, figure: str) -> int:
    """Build the config, open the run folder, run the sweep and print its table."""
    from dataclasses import asdict, fields

    from bjepa.experiments.sweeps import format_table, summarise
    from bjepa.runs import RunFolder, default_run_dir

    overrides = {**overrides, "sigmas": args.sigmas, "seeds": args.seeds, "steps": args.steps,
                 "lr": args.lr, "batch_size": args.batch_size, "encoder": args.encoder,
                 "train_steps": args.train_steps, "device": args.device,
                 "progress": not args.no_progress}
    if args.quick:
        cfg = cfg_cls.quick(**overrides)
    else:
        cfg = cfg_cls(**{k: v for k, v in overrides.items() if v is not None})
    cfg.validate()
    if args.resume and not args.out:
        raise ValueError("--resume needs --out (the run folder to continue)")
    with RunFolder(args.out or default_run_dir(command), overwrite=args.overwrite,
                   resume=args.resume) as folder:
        if folder.resumed:
            given = asdict(cfg) if args.quick else overrides
            known = {f.name for f in fields(cfg_cls)}
            stored = {k: v for k, v in folder.read_json("config.json").items() if k in known}
            cfg = cfg_cls(**resolve_resumed_config(stored, given)).validate()
        values = getattr(cfg, f"{param}s")
        n = len(values) * len(cfg.sigmas) * len(cfg.seeds)
        print(f"{command}: {n} runs ({param} {values} × σ {cfg.sigmas} × seeds {cfg.seeds}), "
              f"{cfg.steps} steps each → {folder.path}")
        try:
            rows = runner(cfg, folder, resume=args.resume)
        except KeyboardInterrupt:
            print(f"interrupted; continue with: bjepa {command} --out {folder.path} --resume",
                  file=sys.stderr)
            raise
    print(format_table(summarise(rows, param), param))
    print(f"\nwrote {folder.path}/: config.json metrics.jsonl results.csv results.json "
          f"summary.json {figure} checkpoints/")
    return 0


def run(args: argparse.Namespace) -> int:
    from bjepa.experiments.sweeps import BetaSweepConfig, run_beta_sweep

    return run_sweep_command(args, "beta-sweep", BetaSweepConfig,
                             {"betas": args.betas, "tau": args.tau}, run_beta_sweep, "beta",
                             "beta_sweep.png")
