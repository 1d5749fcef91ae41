"""``bjepa bayes``: does the Bayesian layer help? VJEPA (point-estimated predictor) against
BJEPA with a weight posterior (AutoNormal, low-rank, full MVN; NUTS as the reference) and a
deep ensemble of VJEPAs, on small training sets and shifted test contexts of the Noisy TV
world, and risk-aware latent MPC trained on little data.

See docs/bayes.md."""

from __future__ import annotations

import argparse
import time

from bjepa.cli._common import device_arg, parse_int_list

__all__ = ["FILES", "register", "run"]

#: listed here so that building the parser does not import torch
MODEL_NAMES = ["vjepa", "ensemble", "bjepa-normal", "bjepa-lowrank", "bjepa-mvn",
               "bjepa-nuts"]
REGIME_NAMES = ["in", "amplitude", "rotation", "distractor"]
PLANNER_NAMES = ["oracle", "vjepa", "bjepa-median", "bjepa-posterior"]
FILES = ["config.json", "results.csv", "results.json", "planning.csv", "planning.json",
         "summary.json", "table.md", "calibration_vs_n.png", "sd_in_vs_out.png",
         "planning.png"]


def _names(choices: list[str], what: str):
    def parse(text: str) -> list[str]:
        names = [s.strip() for s in text.split(",") if s.strip()]
        bad = [s for s in names if s not in choices]
        if not names or bad:
            raise argparse.ArgumentTypeError(f"{what} must be a comma list of "
                                             f"{','.join(choices)}, got {text!r}")
        return names
    return parse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``bayes`` subcommand to the ``bjepa`` parser."""
    p = sub.add_parser("bayes", help="VJEPA vs BJEPA weight posteriors vs a deep ensemble: "
                       "small data, shift, planning", description=__doc__)
    p.add_argument("--parts", type=_names(["calibration", "planning"], "--parts"),
                   default=None, help="calibration, planning or both (default)")
    p.add_argument("--models", type=_names(MODEL_NAMES, "--models"), default=None,
                   help=f"comma list of {','.join(MODEL_NAMES)} (default: all)")
    p.add_argument("--n-frames", type=parse_int_list, default=None,
                   help="training trajectory lengths (default 50,100,200,500,1000,6000)")
    p.add_argument("--regimes", type=_names(REGIME_NAMES, "--regimes"), default=None,
                   help=f"test regimes from {','.join(REGIME_NAMES)} (default: all)")
    p.add_argument("--seeds", type=parse_int_list, default=None, help="e.g. 0-4 (default)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps per model")
    p.add_argument("--ensemble-size", type=int, default=None, help="VJEPAs in the ensemble")
    p.add_argument("--plan-frames", type=parse_int_list, default=None,
                   help="exploration lengths of the planning runs (default 50,200,4000)")
    p.add_argument("--plan-planners", type=_names(PLANNER_NAMES, "--plan-planners"),
                   default=None, help=f"comma list of {','.join(PLANNER_NAMES)}")
    p.add_argument("--plan-episodes", type=int, default=None, help="episodes per planner")
    p.add_argument("--plan-horizon", type=int, default=None, help="planning horizon")
    p.add_argument("--plan-candidates", type=int, default=None, help="CEM candidates")
    p.add_argument("--plan-samples", type=int, default=None,
                   help="sampled rollouts per candidate")
    p.add_argument("--plan-draws", type=int, default=None,
                   help="weight draws per planning call (bjepa-posterior)")
    p.add_argument("--quick", action="store_true",
                   help="two data sizes, one seed, short training: a look in about a minute")
    p.add_argument("--device", default="cpu", type=device_arg,
                   help="torch device: cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads for the run")
    p.add_argument("--out", default=None, help="run folder (default: runs/bayes-<time>)")
    p.add_argument("--overwrite", action="store_true", help="start again in an existing --out")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the experiment described by parsed ``args``; returns the exit status."""
    from bjepa.experiments.bayes import (
        BayesConfig,
        compare,
        format_table,
        summarise,
        summarise_planning,
    )
    from bjepa.experiments.bayes import run as run_experiment
    from bjepa.runs import RunFolder, default_run_dir

    overrides = {"parts": args.parts, "models": args.models, "n_frames": args.n_frames,
                 "regimes": args.regimes, "seeds": args.seeds, "steps": args.steps,
                 "ensemble_size": args.ensemble_size, "plan_frames": args.plan_frames,
                 "plan_planners": args.plan_planners, "plan_episodes": args.plan_episodes,
                 "plan_horizon": args.plan_horizon, "plan_candidates": args.plan_candidates,
                 "plan_samples": args.plan_samples, "plan_draws": args.plan_draws,
                 "device": args.device, "threads": args.threads,
                 "progress": not args.no_progress}
    if args.quick:
        cfg = BayesConfig.quick(**overrides)
    else:
        cfg = BayesConfig(**{k: v for k, v in overrides.items() if v is not None})
    cfg.validate()
    start = time.perf_counter()
    with RunFolder(args.out or default_run_dir("bayes"), overwrite=args.overwrite) as folder:
        print(f"bayes: {', '.join(cfg.parts)}; models {','.join(cfg.models)} × frames "
              f"{cfg.n_frames} × regimes {','.join(cfg.regimes)} × seeds {cfg.seeds} → "
              f"{folder.path}")
        out = run_experiment(cfg, folder)
    rows, plan_rows = out["calibration"], out["planning"]
    if rows:
        print(format_table(summarise(rows)))
        wins = [c for c in compare(rows) if c["better"] and c["model"] != "ensemble"]
        if wins:
            print("\nbetter calibrated than VJEPA beyond the seed spread:")
            for c in wins:
                print(f"  {c['model']} at {c['n_frames']} frames, {c['regime']}: "
                      f"{c['metric']} {c['model_mean']:.3f} vs {c['against_mean']:.3f} "
                      f"(margin {c['margin']:.3f} > spread {c['spread']:.3f})")
        elif len(cfg.seeds) < 2:
            print("\none seed: no seed spread to judge differences against (use --seeds 0-4)")
        else:
            print("\nno BJEPA variant is better calibrated than VJEPA beyond the seed spread")
    for s in summarise_planning(plan_rows):
        print(f"planning {s['planner']:<16} {s['plan_frames']:>5} frames: cost "
              f"{s['cost_mean']:.3f} ± {s['cost_sd']:.3f}, / oracle "
              f"{s['cost_vs_oracle_mean']:.3f} ± {s['cost_vs_oracle_sd']:.3f}")
    written = [f for f in FILES if folder.file(f).exists()]
    print(f"\nwrote {folder.path}/: {' '.join(written)} "
          f"({time.perf_counter() - start:.0f} s)")
    return 0
