"""``bjepa atari``: Atari frames with a noisy-TV distractor, conv encoders, RAM-state probes."""

from __future__ import annotations

import argparse

from bjepa.cli._common import add_training_args, parse_float_list, parse_int_list, parse_tau


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("atari", help="train models on Atari frames with a distractor and probe "
                       "their representations for the console-RAM state", description=__doc__)
    p.add_argument("--models", default=None,
                   help="comma-separated: vjepa,bjepa,jepa,vae,ar (default: all available)")
    p.add_argument("--game", default=None, help="ALE game (default: pong)")
    p.add_argument("--distractor", choices=["none", "tv", "ar1", "game"], default=None,
                   help="tv: i.i.d. noise patch; ar1: AR(1) noise patch; game: another game "
                   "blended in (default: tv)")
    p.add_argument("--sigmas", type=parse_float_list, default=None,
                   help="distractor strengths in pixel units, e.g. 0,0.5,1")
    p.add_argument("--seeds", type=parse_int_list, default=None, help="e.g. 0-2 or 0,3")
    p.add_argument("--size", type=int, default=None, help="frame side in pixels (default: 48)")
    p.add_argument("--context-frames", type=int, default=None, help="frames per stack k")
    p.add_argument("--latent-dim", type=int, default=None, help="latent size D_z")
    p.add_argument("--episodes", type=int, default=None, help="training episodes")
    p.add_argument("--test-episodes", type=int, default=None, help="test episodes")
    p.add_argument("--episode-steps", type=int, default=None,
                   help="agent steps per episode at most")
    p.add_argument("--other-game", default=None,
                   help="game blended in by --distractor game (default: space_invaders)")
    p.add_argument("--beta", type=float, default=None, help="VJEPA/BJEPA KL weight β")
    p.add_argument("--tau", type=parse_tau, default=None,
                   help="EMA momentum τ in [0,1] or 'cosine' (0.99→1)")
    p.add_argument("--init", choices=["cca", "random"], default=None,
                   help="start of VJEPA, BJEPA and JEPA: cca (default; first convolution and "
                   "last layer at context-target canonical directions) or random")
    p.add_argument("--actions", action="store_true", default=None,
                   help="action-conditioned VJEPA/BJEPA: the predictor reads the one-hot "
                   "actions that produce the target frames (default models: vjepa,bjepa); "
                   "see docs/atari.md#with-actions")
    p.add_argument("--past-actions", type=int, default=None,
                   help="with --actions, also feed the last N actions of the context (the "
                   "paddle answers with a lag; default 1, at most --context-frames)")
    p.add_argument("--action-latents", type=int, default=None,
                   help="with --actions, start this many latent directions at the features the "
                   "actions control (a partial CCA; default 0)")
    p.add_argument("--encoder", choices=["conv", "keypoints"], default=None,
                   dest="encoder_kind",
                   help="conv: the DQN-style CNN (default); keypoints: one convolution read out "
                   "by a spatial soft-argmax, so object positions are linear in the latent "
                   "(see docs/atari.md#with-actions)")
    p.add_argument("--keypoint-channels", type=int, default=None,
                   help="with --encoder keypoints, filters of the convolution (default 64)")
    p.add_argument("--keypoint-temperature", type=float, default=None,
                   help="with --encoder keypoints, softmax temperature in filter standard "
                   "deviations (default 0.2)")
    p.add_argument("--frame-skip", type=int, default=None,
                   help="emulator frames per agent step (default 4)")
    p.add_argument("--restarts", type=int, default=None,
                   help="train each model this many times from different initial weights and "
                   "keep the restart with the best label-free score (predictive information "
                   "for VJEPA/BJEPA/JEPA, ELBO for VAE/AR); see docs/atari.md")
    p.add_argument("--cache-dir", default=None,
                   help="where generated frames are cached (default: $BJEPA_CACHE/atari or "
                   "~/.cache/bjepa/atari)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads for the run")
    p.add_argument("--quick", action="store_true",
                   help="tiny, fast configuration for smoke tests (not a result)")
    add_training_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bjepa.experiments.atari import (
        AtariConfig,
        compare,
        format_label_table,
        format_table,
        summarise,
    )
    from bjepa.experiments.atari import run as run_experiment
    from bjepa.runs import RunFolder, default_run_dir

    if getattr(args, "resume", False):
        raise ValueError("--resume is not supported by atari yet (the frames are cached, so a "
                         "rerun only repeats training); start a new run in another --out or "
                         "pass --overwrite")
    overrides = {
        "models": args.models.split(",") if args.models else None, "game": args.game,
        "distractor": args.distractor, "sigmas": args.sigmas, "seeds": args.seeds,
        "size": args.size, "context_frames": args.context_frames, "latent_dim": args.latent_dim,
        "train_episodes": args.episodes, "test_episodes": args.test_episodes,
        "episode_steps": args.episode_steps, "other_game": args.other_game, "beta": args.beta,
        "tau": args.tau, "init": args.init, "steps": args.steps, "restarts": args.restarts,
        "actions": args.actions, "past_actions": args.past_actions,
        "action_latents": args.action_latents, "frame_skip": args.frame_skip,
        "encoder_kind": args.encoder_kind, "keypoint_channels": args.keypoint_channels,
        "keypoint_temperature": args.keypoint_temperature,
        "lr": args.lr, "batch_size": args.batch_size, "cache_dir": args.cache_dir,
        "threads": args.threads, "device": args.device,
        "progress": not args.no_progress,
    }
    if args.actions and not args.models:
        from bjepa.experiments.atari import ACTION_MODELS

        overrides["models"] = list(ACTION_MODELS)
    if args.quick:
        cfg = AtariConfig.quick(**overrides)
    else:
        cfg = AtariConfig(**{k: v for k, v in overrides.items() if v is not None})
    cfg.validate()
    folder = RunFolder(args.out or default_run_dir("atari"), overwrite=args.overwrite)
    n = len(cfg.models) * len(cfg.sigmas) * len(cfg.seeds)
    acts = f", actions a_t+{1 - cfg.past_actions}..a_t+{cfg.context_frames}" if cfg.actions \
        else ""
    enc = f", {cfg.encoder} encoder" if cfg.encoder_kind != "conv" else ""
    print(f"Atari ({cfg.game}, {cfg.distractor} distractor{acts}{enc}): {n} runs "
          f"({', '.join(cfg.models)} × σ {cfg.sigmas} × seeds {cfg.seeds}), {cfg.steps} "
          f"steps × {cfg.restarts} restart(s) each → {folder.path}")
    rows = run_experiment(cfg, folder)
    print(format_table(summarise(rows)))
    if cfg.actions:
        from bjepa.data.atari import game_spec

        print(format_label_table(rows, game_spec(cfg.game).label_names[0]))
    if {"vjepa", "vae"} <= set(cfg.models):
        c = compare(rows)
        print(f"\nσ={c['sigma']:g}: VJEPA − VAE mean linear R² = {c['margin']:+.3f}, spread over "
              f"seeds (max range) = {c['spread']:.3f} → "
              f"{'margin exceeds spread' if c['passes'] else 'not separated'}")
    print(f"\nwrote {folder.path}/: config.json metrics.jsonl checkpoints/ results.csv "
          "results.json r2_vs_sigma.png r2_by_label.png frames.png"
          + (" r2_<first label>.png (Pong: r2_player_y.png)" if cfg.actions else ""))
    return 0
