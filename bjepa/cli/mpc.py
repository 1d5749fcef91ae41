"""``bjepa mpc``: sampling-based planning in the latent space of an action-conditioned VJEPA
on a linear control task seen through the Noisy TV (docs/method.md#sampling-based-mpc)."""

from __future__ import annotations

import argparse
import sys

from bjepa.cli._common import (
    add_training_args,
    parse_int_list,
    parse_tau,
    resolve_resumed_config,
)

__all__ = ["FILES", "register", "run"]

#: the planners of :data:`bjepa.experiments.mpc.PLANNERS` (listed here so that building the
#: parser does not import torch)
PLANNER_NAMES = ["random", "lqr-ce", "oracle", "mean", "sampling", "goal-prior",
                 "sampling-small", "goal-prior-small"]
FILES = ["config.json", "metrics.jsonl", "results.csv", "results.json", "summary.json",
         "mpc_summary.png", "mpc_trajectories.png", "seeds/"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``mpc`` subcommand to the ``bjepa`` parser."""
    p = sub.add_parser("mpc", help="latent MPC: mean vs sampling vs goal-prior planners",
                       description=__doc__)
    p.add_argument("--planners", default=None,
                   help=f"comma-separated, from {','.join(PLANNER_NAMES)} (default: all)")
    p.add_argument("--seeds", type=parse_int_list, default=None, help="e.g. 0-4 or 0,3")
    p.add_argument("--episodes", type=int, default=None, help="episodes per seed and planner")
    p.add_argument("--sigma", type=float, default=None, help="distractor strength σ")
    p.add_argument("--model", choices=["vjepa", "bjepa"], default=None,
                   help="action-conditioned VJEPA (default) or BJEPA")
    p.add_argument("--head", default=None, help="predictor head (default diag)")
    p.add_argument("--beta", type=float, default=None, help="KL weight β")
    p.add_argument("--tau", type=parse_tau, default=None, help="EMA momentum τ or 'cosine'")
    p.add_argument("--explore-steps", type=int, default=None,
                   help="length of the random-action exploration trajectory (training data)")
    p.add_argument("--episode-steps", type=int, default=None, help="steps T per episode")
    p.add_argument("--horizon", type=int, default=None, help="planning horizon H")
    p.add_argument("--iterations", type=int, default=None,
                   help="CEM iterations per step (first step of an episode: --cold-iterations)")
    p.add_argument("--cold-iterations", type=int, default=None,
                   help="CEM iterations on the first step of an episode")
    p.add_argument("--candidates", type=int, default=None, help="CEM candidates per iteration")
    p.add_argument("--samples", type=int, default=None,
                   help="sampled rollouts per candidate (sampling planners)")
    p.add_argument("--alpha", type=float, default=None, help="CVaR level α in (0, 1]")
    p.add_argument("--goal-scale", type=float, default=None, help="σ_goal of the goal prior")
    p.add_argument("--quick", action="store_true",
                   help="small, fast configuration (2 seeds, 16 episodes, fewer planners)")
    add_training_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the experiment described by parsed ``args``; returns the exit status."""
    from dataclasses import asdict, fields

    from bjepa.experiments.mpc import MPCConfig, check_bar, format_table, summarise
    from bjepa.experiments.mpc import run as run_experiment
    from bjepa.inference.fit import NonFiniteLossError
    from bjepa.runs import RunFolder, default_run_dir

    overrides = {
        "planners": args.planners.split(",") if args.planners else None,
        "seeds": args.seeds, "episodes": args.episodes, "sigma": args.sigma,
        "model": args.model, "head": args.head, "beta": args.beta, "tau": args.tau,
        "explore_steps": args.explore_steps, "episode_steps": args.episode_steps,
        "horizon": args.horizon, "iterations": args.iterations,
        "cold_iterations": args.cold_iterations, "candidates": args.candidates,
        "samples": args.samples,
        "alpha": args.alpha, "goal_scale": args.goal_scale, "steps": args.steps,
        "lr": args.lr, "device": args.device, "progress": not args.no_progress,
    }
    if args.batch_size is not None:
        raise ValueError("--batch-size is not used by mpc (training is full-batch)")
    if args.quick:
        cfg = MPCConfig.quick(**overrides)
    else:
        cfg = MPCConfig(**{k: v for k, v in overrides.items() if v is not None})
    cfg.validate()
    if args.resume and not args.out:
        raise ValueError("--resume needs --out (the run folder to continue)")
    with RunFolder(args.out or default_run_dir("mpc"), overwrite=args.overwrite,
                   resume=args.resume) as folder:
        if folder.resumed:
            given = asdict(cfg) if args.quick else overrides
            known = {f.name for f in fields(MPCConfig)}
            stored = {k: v for k, v in folder.read_json("config.json").items() if k in known}
            cfg = MPCConfig(**resolve_resumed_config(stored, given)).validate()
        verb = "resuming" if folder.resumed else "MPC:"
        print(f"{verb} planners {', '.join(cfg.planners)} × seeds {cfg.seeds} × "
              f"{cfg.episodes} episodes (σ = {cfg.sigma:g}) → {folder.path}")
        try:
            rows = run_experiment(cfg, folder, resume=folder.resumed)
        except KeyboardInterrupt:
            print(f"interrupted; continue with: bjepa mpc --out {folder.path} --resume",
                  file=sys.stderr)
            raise
        except NonFiniteLossError as err:
            print(f"bjepa mpc: error: {err}", file=sys.stderr)
            return 2
    print(format_table(summarise(rows)))
    bar = check_bar(rows)
    if "beats_mean_planning" in bar:
        print(f"\nsampling vs mean planning: violation-rate margin "
              f"{bar['violation_rate_margin']:.3f} (seed spread {bar['violation_rate_spread']:.3f})"
              f", cost margin {bar['cost_margin']:.3f} (spread {bar['cost_spread']:.3f})")
    if "cost_ratio_to_oracle" in bar:
        print(f"sampling cost / oracle cost = {bar['cost_ratio_to_oracle']:.3f}")
    print(f"\nwrote {folder.path}/: {' '.join(FILES)}")
    return 0
