"""``bjepa digits``: next-class probes on digit sequences with an image distractor, and BJEPA's
zero-shot goal prior (goals from images the probe never saw)."""

from __future__ import annotations

import argparse

from bjepa.cli._common import parse_float_list, parse_int_list


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("digits", help="digit sequences: next-class probes and a goal prior",
                       description=__doc__)
    p.add_argument("--models", default=None,
                   help="comma-separated: jepa,vjepa,bjepa,vae,ar,rssm (default: all)")
    p.add_argument("--sigmas", type=parse_float_list, default=None,
                   help="distractor weights (default 0,1,2,3,4)")
    p.add_argument("--seeds", type=parse_int_list, default=None, help="e.g. 0-2 (default)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps per model")
    p.add_argument("--rssm-steps", type=int, default=None, help="optimiser steps of the RSSM")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate")
    p.add_argument("--batch-size", type=int, default=None, help="rows per mini-batch")
    p.add_argument("--encoder", default=None, metavar="SPEC",
                   help="network family of the frame models, all but the RSSM (default mlp: two "
                        "GELU hidden layers); an MLP's options may follow, e.g. "
                        "mlp:depth=1,activation=tanh")
    p.add_argument("--hidden-dim", type=int, default=None,
                   help="width of every MLP network (default 256; --quick 64)")
    p.add_argument("--depth", type=int, default=None,
                   help="hidden layers of every MLP network (default 2)")
    p.add_argument("--activation", default=None,
                   help="activation of the MLP networks: gelu (default), tanh, relu, silu or elu")
    p.add_argument("--init", default=None, choices=["cca", "random"],
                   help="start of the JEPA/VJEPA/BJEPA encoders: random (default here: the "
                        "data-dependent cca start, VJEPA's and BJEPA's own elsewhere, picks "
                        "spurious directions on the 64 pixels; docs/digits.md) or cca")
    p.add_argument("--size", type=int, default=None,
                   help="image side in pixels (default 8; larger sizes upsample the 8×8 digits)")
    p.add_argument("--source", default=None,
                   help="'sklearn' (default: scikit-learn's digits) or a folder holding the "
                        "original MNIST idx files")
    p.add_argument("--goal-sigmas", type=parse_float_list, default=None,
                   help="σ values at which BJEPA's goal prior is evaluated (default 0)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda")
    p.add_argument("--quick", action="store_true",
                   help="σ ∈ {0, 1}, one seed, 150 steps (about two minutes)")
    p.add_argument("--out", default=None, help="run folder (default: runs/digits-<time>)")
    p.add_argument("--overwrite", action="store_true", help="replace a run in --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bjepa.cli.noisy_tv import encoder_spec
    from bjepa.experiments.digits import (
        DigitsConfig,
        format_goal_table,
        format_table,
        summarise,
        summarise_goal,
    )
    from bjepa.experiments.digits import run as run_experiment
    from bjepa.runs import RunFolder, default_run_dir

    # the digits models are MLPs by default, so --depth/--activation alone shape that MLP
    shaped = args.depth is not None or args.activation is not None
    encoder = encoder_spec(args.encoder or ("mlp" if shaped else None), args.depth,
                           args.activation)
    overrides = {"encoder": encoder, "hidden_dim": args.hidden_dim, "init": args.init,
                 "models": args.models.split(",") if args.models else None,
                 "sigmas": args.sigmas, "seeds": args.seeds, "steps": args.steps,
                 "rssm_steps": args.rssm_steps, "lr": args.lr, "batch_size": args.batch_size,
                 "size": args.size, "source": args.source, "goal_sigmas": args.goal_sigmas,
                 "device": args.device}
    given = {k: v for k, v in overrides.items() if v is not None}
    cfg = (DigitsConfig.quick(**given) if args.quick else DigitsConfig(**given)).validate()
    with RunFolder(args.out or default_run_dir("digits"), overwrite=args.overwrite) as folder:
        print(f"digits: {', '.join(cfg.models)} × σ {cfg.sigmas} × seeds {cfg.seeds}, encoder "
              f"{cfg.encoder} of width {cfg.hidden_dim}, init {cfg.init or 'model default'} → "
              f"{folder.path}")
        out = run_experiment(cfg, folder)
    print(format_table(summarise(out["results"])))
    if out["goal"]:
        print("\nBJEPA goal prior (next-class accuracy of the no-goal probe):")
        print(format_goal_table(summarise_goal(out["goal"])))
    print(f"\nwrote {folder.path}/: config.json results.csv results.json summary.json "
          "accuracy_vs_sigma.png frames.png checkpoints/"
          + (" goal_prior.csv goal_prior.png" if out["goal"] else ""))
    return 0
