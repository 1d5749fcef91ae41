"""Atari with a "noisy TV": do predictive world models keep the game state and
ignore a loud, unpredictable distractor on real pixels?

See docs/method.md#natural-video-atari.

Records Pong with a sticky random policy (cached), overlays a distractor of strength σ, trains
VJEPA and the baselines with convolutional encoders on frame stacks, and probes each frozen
representation with a linear and an MLP probe for the console-RAM state (paddles, ball) on
held-out episodes.

With ``--actions`` VJEPA and BJEPA are action-conditioned: their predictor also reads the
one-hot actions the policy took between the context and the target (docs/atari.md#with-actions).
With ``--encoder keypoints`` the encoders are one convolution read out by a spatial soft-argmax
(bjepa.models.keypoints), which puts object positions — the player's paddle included — linearly
into the latent.

    python examples/atari.py --quick
    python examples/atari.py --sigmas 0,0.5,1 --seeds 0-2 --num-steps 600
    python examples/atari.py --quick --actions --models vjepa
    python examples/atari.py --actions --models vjepa --sigmas 0.1 --encoder keypoints
"""

from __future__ import annotations

import argparse

import pyro

from bjepa.cli._common import parse_float_list, parse_int_list
from bjepa.experiments.atari import (
    AtariConfig,
    build_model,
    compare,
    format_table,
    load_raw,
    make_splits,
    model_context,
    probe,
    summarise,
)
from bjepa.inference import fit
from bjepa.inference.fit import set_seed

#: the quickest flags, used by tests/test_cli_examples.py
QUICK_ARGS = ["--quick", "--models", "vjepa,vae", "--sigmas", "1", "--seeds", "0",
              "--num-steps", "10"]


def main(args: argparse.Namespace) -> list[dict]:
    overrides = dict(models=args.models.split(",") if args.models else None,
                     sigmas=args.sigmas, seeds=args.seeds, steps=args.num_steps,
                     lr=args.learning_rate, distractor=args.distractor, device=args.device,
                     cache_dir=args.cache_dir, actions=args.actions or None,
                     encoder_kind=args.encoder, progress=False)
    if args.actions and not args.models:
        overrides["models"] = ["vjepa", "bjepa"]  # the models with an action-conditioned variant
    cfg = AtariConfig.quick(**overrides) if args.quick else \
        AtariConfig(**{k: v for k, v in overrides.items() if v is not None})
    cfg.validate()
    rows = []
    for seed in cfg.seeds:
        # 1. data: episodes recorded once and cached; train/test split by episode
        raw = load_raw(cfg, seed)
        for sigma in cfg.sigmas:
            # 2. distractor of strength σ, standardised with training statistics, frame stacks
            train, test = make_splits(cfg, sigma, seed, raw)
            for name in cfg.models:
                # 3. model and mini-batch SVI (one seed drives data, init and training noise)
                pyro.clear_param_store()
                set_seed(seed)
                # with actions the predictor also reads the one-hot actions a_t .. a_t+k, packed
                # after the frames (the encoders see the frames only)
                action_dim = train.action_inputs().shape[1] if cfg.actions else None
                model = build_model(name, train.context.shape[1], cfg, action_dim)
                fit(model, model_context(model, train), train.target, steps=cfg.steps, lr=cfg.lr,
                    batch_size=cfg.batch_size, seed=seed, device=cfg.device, progress=False)
                # 4. linear and MLP probes of the frozen representation for the RAM labels
                scores = probe(model, train, test, cfg, seed=seed)
                rows.append({"model": name, "sigma": sigma, "seed": seed, **scores})
                print(f"{name:>6}  σ={sigma:<4g} seed={seed}  linear R²={scores['linear_r2']:.3f}"
                      f"  MLP R²={scores['mlp_r2']:.3f}  player's paddle (linear) "
                      f"{scores['linear_player_y']:.3f}")
    print()
    print(format_table(summarise(rows)))
    if {"vjepa", "vae"} <= set(cfg.models):
        c = compare(rows)
        print(f"σ={c['sigma']:g}: VJEPA − VAE linear R² {c['margin']:+.3f} "
              f"(spread over seeds {c['spread']:.3f})")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=None, help="e.g. vjepa,jepa,vae,ar")
    parser.add_argument("--sigmas", type=parse_float_list, default=None)
    parser.add_argument("--seeds", type=parse_int_list, default=None)
    parser.add_argument("--distractor", choices=["none", "tv", "ar1", "game"], default=None)
    parser.add_argument("--num-steps", type=int, default=None)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--actions", action="store_true",
                        help="action-conditioned VJEPA/BJEPA (default models: vjepa,bjepa)")
    parser.add_argument("--encoder", choices=["conv", "keypoints"], default=None,
                        help="conv (default): the DQN-style CNN; keypoints: spatial soft-argmax")
    parser.add_argument("--quick", action="store_true")
    main(parser.parse_args())
