"""``bjepa hallway``: a forking hallway — Gaussian vs mixture-density predictor head
(docs/method.md#multimodal-hallway)."""

from __future__ import annotations

import argparse

from bjepa.cli._common import add_training_args, parse_int_list, parse_tau

__all__ = ["register", "run"]

FILES = ["config.json", "metrics.jsonl", "results.csv", "results.json", "summary.json",
         "hallway_predictions.png", "hallway_summary.png"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``hallway`` subcommand to the ``bjepa`` parser."""
    p = sub.add_parser("hallway", help="multimodal futures: Gaussian vs mixture-density head",
                       description=__doc__)
    p.add_argument("--heads", default=None,
                   help="comma-separated predictor heads (default: diag,mdn)")
    p.add_argument("--components", type=int, default=None,
                   help="mixture components K of the mdn head (default 5)")
    p.add_argument("--seeds", type=parse_int_list, default=None, help="e.g. 0-4 or 0,3")
    p.add_argument("--beta", type=float, default=None, help="VJEPA KL weight β")
    p.add_argument("--tau", type=parse_tau, default=None,
                   help="EMA momentum τ in [0,1] or 'cosine' (0.99→1)")
    p.add_argument("--hidden-dim", type=int, default=None, help="width of the MLP heads")
    p.add_argument("--train-episodes", type=int, default=None,
                   help="episodes walked for training (default 120; when given, the test "
                        "set gets half as many)")
    p.add_argument("--quick", action="store_true",
                   help="small, fast configuration (fewer episodes and steps)")
    add_training_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the experiment described by parsed ``args``; returns the exit status."""
    from bjepa.experiments.hallway import HallwayConfig, format_table, summarise
    from bjepa.experiments.hallway import run as run_experiment
    from bjepa.runs import RunFolder, default_run_dir

    overrides = {
        "heads": args.heads.split(",") if args.heads else None,
        "n_components": args.components, "seeds": args.seeds, "steps": args.steps,
        "lr": args.lr, "batch_size": args.batch_size, "beta": args.beta, "tau": args.tau,
        "hidden_dim": args.hidden_dim, "train_episodes": args.train_episodes,
        "test_episodes": max(args.train_episodes // 2, 1) if args.train_episodes else None,
        "device": args.device, "progress": not args.no_progress,
    }
    if args.quick:
        cfg = HallwayConfig.quick(**overrides)
    else:
        cfg = HallwayConfig(**{k: v for k, v in overrides.items() if v is not None})
    cfg.validate()
    if getattr(args, "resume", False):
        raise ValueError("--resume is not supported by hallway (each model run takes about a "
                         "minute); start a new run in another --out or pass --overwrite")
    folder = RunFolder(args.out or default_run_dir("hallway"), overwrite=args.overwrite)
    try:
        n = len(cfg.heads) * len(cfg.seeds)
        print(f"Hallway: {n} runs (heads {', '.join(cfg.heads)} × seeds {cfg.seeds}), "
              f"{cfg.steps} steps each → {folder.path}")
        rows = run_experiment(cfg, folder)
    finally:
        close = getattr(folder, "close", None)  # releases the folder's lock where it has one
        if close is not None:
            close()
    print(format_table(summarise(rows)))
    print(f"\nwrote {folder.path}/: {' '.join(FILES)}")
    return 0
