"""``bjepa moving-digits``: a digit bouncing on a canvas with pixel noise; conv (or ViT) encoders
on a two-frame context; probes of class, position and velocity."""

from __future__ import annotations

import argparse

from bjepa.cli._common import add_training_args, parse_float_list, parse_int_list, parse_tau


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("moving-digits", help="moving digits with pixel noise: class, position "
                       "and velocity probes of conv/ViT world models", description=__doc__)
    p.add_argument("--models", default=None,
                   help="comma-separated: vjepa,bjepa,jepa,vae,rssm (default: all five; vae is "
                        "a β-VAE, rssm the CNN-RSSM)")
    p.add_argument("--sigmas", type=parse_float_list, default=None,
                   help="pixel noise levels (default 0,0.5,1)")
    p.add_argument("--seeds", type=parse_int_list, default=None, help="e.g. 0-2 (default)")
    p.add_argument("--canvas", type=int, default=None, help="canvas side in pixels (default 32)")
    p.add_argument("--digit-size", type=int, default=None,
                   help="digit side in pixels (default 16; the 8×8 digits are upsampled)")
    p.add_argument("--train-episodes", type=int, default=None,
                   help="training episodes (default 1000)")
    p.add_argument("--test-episodes", type=int, default=None, help="test episodes (default 100)")
    p.add_argument("--context-frames", type=int, default=None,
                   help="frames stacked as the context (default 2: velocity is observable)")
    p.add_argument("--encoder", choices=["conv", "vit"], default=None,
                   help="image encoder (default conv)")
    p.add_argument("--vit-patch", type=int, default=None, help="ViT patch side (default 4)")
    p.add_argument("--vit-width", type=int, default=None, help="ViT token width (default 32)")
    p.add_argument("--latent-dim", type=int, default=None, help="latent size (default 32)")
    p.add_argument("--beta", type=float, default=None, help="VJEPA/BJEPA KL weight β")
    p.add_argument("--tau", type=parse_tau, default=None, help="EMA momentum τ or 'cosine'")
    p.add_argument("--init", choices=["cca", "random"], default=None,
                   help="encoder start of VJEPA, BJEPA and JEPA (default cca)")
    p.add_argument("--vae-beta", type=float, default=None, help="the β-VAE's β (default 4)")
    p.add_argument("--rssm-steps", type=int, default=None, help="optimiser steps of the RSSM")
    p.add_argument("--source", default=None,
                   help="'sklearn' (default) or a folder holding the original MNIST idx files")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads for the run")
    p.add_argument("--quick", action="store_true",
                   help="σ ∈ {0, 1}, one seed, tiny data and budget (a smoke run, seconds)")
    add_training_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bjepa.experiments.moving_digits import (
        MovingDigitsConfig,
        format_table,
        summarise,
    )
    from bjepa.experiments.moving_digits import run as run_experiment
    from bjepa.runs import RunFolder, default_run_dir

    if getattr(args, "resume", False):
        raise ValueError("--resume is not supported by moving-digits (runs are short); start a "
                         "new run in another --out or pass --overwrite")
    overrides = {
        "models": args.models.split(",") if args.models else None, "sigmas": args.sigmas,
        "seeds": args.seeds, "canvas": args.canvas, "digit_size": args.digit_size,
        "train_episodes": args.train_episodes, "test_episodes": args.test_episodes,
        "context_frames": args.context_frames, "encoder": args.encoder,
        "vit_patch": args.vit_patch, "vit_width": args.vit_width,
        "latent_dim": args.latent_dim, "beta": args.beta, "tau": args.tau, "init": args.init,
        "vae_beta": args.vae_beta, "steps": args.steps, "rssm_steps": args.rssm_steps,
        "lr": args.lr, "batch_size": args.batch_size, "source": args.source,
        "threads": args.threads, "device": args.device, "progress": not args.no_progress,
    }
    given = {k: v for k, v in overrides.items() if v is not None}
    cfg = (MovingDigitsConfig.quick(**given) if args.quick
           else MovingDigitsConfig(**given)).validate()
    with RunFolder(args.out or default_run_dir("moving-digits"),
                   overwrite=args.overwrite) as folder:
        n = len(cfg.models) * len(cfg.sigmas) * len(cfg.seeds)
        print(f"moving digits: {n} runs ({', '.join(cfg.models)} × σ {cfg.sigmas} × seeds "
              f"{cfg.seeds}), {cfg.encoder} encoder, {cfg.context_frames}-frame context, "
              f"{cfg.canvas}×{cfg.canvas} canvas → {folder.path}")
        rows = run_experiment(cfg, folder)
    print(format_table(summarise(rows)))
    print(f"\nwrote {folder.path}/: config.json metrics.jsonl results.csv results.json "
          "summary.json probes_vs_sigma.png frames.png checkpoints/")
    return 0
