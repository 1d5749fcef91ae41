"""Noisy TV: does the model keep the slow signal and ignore the loud distractor?

See docs/method.md#noisy-tv.

Trains VJEPA and the baselines on the linear Noisy TV world, then probes each frozen
representation with ordinary least squares for the true signal and for the distractor.

    python examples/noisy_tv.py --quick
    python examples/noisy_tv.py --sigmas 0,2,4,8 --seeds 0-4 --num-steps 6000
"""

from __future__ import annotations

import argparse

import pyro

from bjepa.cli._common import parse_float_list, parse_int_list
from bjepa.data import noisy_tv
from bjepa.experiments.noisy_tv import NoisyTVConfig, build_model, format_table, probe, summarise
from bjepa.inference import fit
from bjepa.inference.fit import set_seed

#: the quickest flags, used by tests/test_cli_examples.py
QUICK_ARGS = ["--quick", "--models", "vjepa,vae", "--sigmas", "4", "--seeds", "0",
              "--num-steps", "30"]


def main(args: argparse.Namespace) -> list[dict]:
    cfg = NoisyTVConfig.quick() if args.quick else NoisyTVConfig()
    cfg.models = args.models.split(",") if args.models else cfg.models
    cfg.sigmas = args.sigmas or cfg.sigmas
    cfg.seeds = args.seeds or cfg.seeds
    cfg.steps = args.num_steps or cfg.steps
    cfg.validate()
    rows = []
    for sigma in cfg.sigmas:
        for seed in cfg.seeds:
            # 1. data: one system, separate train/test trajectories, train-standardised
            train, test = noisy_tv.make_split(sigma, seed, train_steps=cfg.train_steps,
                                              test_steps=cfg.test_steps)
            for name in cfg.models:
                # 2. model and SVI training (one seed drives data, init and training noise)
                pyro.clear_param_store()
                set_seed(seed)
                model = build_model(name, obs_dim=train.obs.shape[1], cfg=cfg)
                fit(model, train.obs[:-1], train.obs[1:], steps=cfg.steps,
                    lr=args.learning_rate, seed=seed, device=args.device, progress=False)
                # 3. linear probes on the frozen representation
                scores = probe(model.cpu(), train, test)
                rows.append({"model": name, "sigma": sigma, "seed": seed, **scores})
                print(f"{name:>6}  σ={sigma:<4g} seed={seed}  signal R²={scores['signal_r2']:.3f}"
                      f"  distractor R²={scores['noise_r2']:.3f}")
    print()
    print(format_table(summarise(rows)))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=None, help="e.g. vjepa,vae")
    parser.add_argument("--sigmas", type=parse_float_list, default=None)
    parser.add_argument("--seeds", type=parse_int_list, default=None)
    parser.add_argument("--num-steps", type=int, default=None)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true")
    main(parser.parse_args())
