"""``bjepa control``: online model-based control in DeepMind Control — an action-conditioned
VJEPA with a reward head, and a reconstruction baseline, planning with CEM in latent space, with
and without distractor dimensions (docs/control.md). Needs the ``control`` extra."""

from __future__ import annotations

import argparse
import sys

from bjepa.cli._common import add_training_args, parse_int_list, resolve_resumed_config

__all__ = ["FILES", "register", "run"]

FILES = ["config.json", "metrics.jsonl", "results.csv", "results.json", "summary.json",
         "curves.png", "checkpoints/"]
MODEL_NAMES = ["vjepa", "recon"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``control`` subcommand to the ``bjepa`` parser."""
    p = sub.add_parser("control", help="plan in DeepMind Control with latent world models",
                       description=__doc__)
    p.add_argument("--task", default=None,
                   help="dm-control 'domain-task' (default cartpole-swingup; e.g. reacher-easy)")
    p.add_argument("--models", default=None,
                   help=f"comma-separated, from {','.join(MODEL_NAMES)} (default vjepa)")
    p.add_argument("--distractor-dims", type=parse_int_list, default=None,
                   help="extra observation dimensions, e.g. 0,20 (default 0)")
    p.add_argument("--distractor", choices=["tv", "ar1"], default=None,
                   help="noisy TV (i.i.d.) or AR(1) distractor dimensions")
    p.add_argument("--sigma", type=float, default=None, help="distractor standard deviation")
    p.add_argument("--seeds", type=parse_int_list, default=None, help="e.g. 0-2 or 0,3")
    p.add_argument("--episodes", type=int, default=None, help="planned episodes per run")
    p.add_argument("--seed-episodes", type=int, default=None, help="random-action episodes first")
    p.add_argument("--action-repeat", type=int, default=None, help="control steps per action")
    p.add_argument("--plan-horizon", type=int, default=None,
                   help="CEM horizon in agent steps (default 20)")
    p.add_argument("--population", type=int, default=None,
                   help="CEM candidates per iteration (default 300)")
    p.add_argument("--iterations", type=int, default=None,
                   help="CEM iterations per decision (default 5)")
    planning = p.add_mutually_exclusive_group()
    planning.add_argument("--mean-planning", action="store_true",
                          help="imagine by following the predictive mean (the default)")
    planning.add_argument("--sample-planning", action="store_true",
                          help="imagine by sampling every next latent from the predictive "
                               "distribution instead of following its mean")
    p.add_argument("--pixels", action="store_true",
                   help="observe rendered frames (CNN encoders; --distractor-dims is then the "
                        "noise patch's side in pixels; needs EGL or OSMesa)")
    p.add_argument("--size", type=int, default=None, help="frame side in pixels (--pixels)")
    p.add_argument("--eval-every", type=int, default=None, help="episodes between evaluations")
    p.add_argument("--report", nargs="+", default=None, metavar="RUN",
                   help="combine finished run folders (e.g. one per seed, run in parallel) "
                        "into --out: summary table, results and curves; trains nothing")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: one seed, two short episodes, small networks (seconds)")
    add_training_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the experiment described by parsed ``args``; returns the exit status."""
    from dataclasses import fields

    from bjepa.experiments.control import ControlConfig, format_table, summarise
    from bjepa.experiments.control import run as run_experiment
    from bjepa.runs import RunFolder, default_run_dir

    if args.report:
        return _report(args)
    overrides = {
        "task": args.task, "models": args.models.split(",") if args.models else None,
        "distractor_dims": args.distractor_dims, "distractor": args.distractor,
        "sigma": args.sigma, "seeds": args.seeds, "episodes": args.episodes,
        "seed_episodes": args.seed_episodes, "action_repeat": args.action_repeat,
        "plan_horizon": args.plan_horizon, "population": args.population,
        "iterations": args.iterations, "eval_every": args.eval_every,
        "train_steps": args.steps, "lr": args.lr, "batch_size": args.batch_size,
        "sample": False if args.mean_planning else True if args.sample_planning else None,
        "pixels": True if args.pixels else None, "size": args.size,
    }
    given = {k: v for k, v in overrides.items() if v is not None}
    cfg = ControlConfig.quick(**given) if args.quick else ControlConfig(**given).validate()
    if args.resume and not args.out:
        raise ValueError("--resume needs --out (the run folder to continue)")
    with RunFolder(args.out or default_run_dir("control"), overwrite=args.overwrite,
                   resume=args.resume) as folder:
        if folder.resumed:
            known = {f.name for f in fields(ControlConfig)}
            stored = {k: v for k, v in folder.read_json("config.json").items() if k in known}
            cfg = ControlConfig(**resolve_resumed_config(stored, overrides)).validate()
        verb = "resuming" if folder.resumed else "control:"
        print(f"{verb} {cfg.task}, models {', '.join(cfg.models)} × distractor dims "
              f"{cfg.distractor_dims} × seeds {cfg.seeds}, {cfg.episodes} episodes each "
              f"→ {folder.path}", flush=True)
        try:
            rows = run_experiment(cfg, folder, device=args.device,
                                  progress=not args.no_progress)
        except KeyboardInterrupt:
            print(f"interrupted; continue with: bjepa control --out {folder.path} --resume",
                  file=sys.stderr)
            raise
    print(format_table(summarise(rows)))
    print(f"\nwrote {folder.path}/: {' '.join(FILES)}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from bjepa.experiments.control import collect, format_table, plot_curves, summarise
    from bjepa.runs import RunFolder

    if not args.out:
        raise ValueError("--report needs --out (the folder for the combined table and curves)")
    rows = collect(args.report)
    with RunFolder(args.out, overwrite=args.overwrite) as folder:
        folder.write_json("config.json", {"report_of": [str(p) for p in args.report]})
        folder.write_rows("results", rows)
        summary = summarise(rows)
        folder.write_json("summary.json", summary)
        plot_curves(rows, folder.file("curves.png"), title=rows[0]["task"] if rows else "")
    print(format_table(summary))
    print(f"\nwrote {folder.path}/: config.json results.csv results.json summary.json curves.png")
    return 0
