"""Diagnostics (docs/method.md#diagnostics): can a trained world model's uncertainty be trusted?

Trains VJEPA on the linear Noisy TV world at one or more KL weights β, then diagnoses each on
held-out data: calibration of the predictive distribution for the next latent (coverage, PIT,
CRPS, NLL), the same pushed through a linear probe to the true next state, posterior collapse
(per-dimension KL, active units, variance floor, effective rank), PSIS-LOO on an ArviZ
InferenceData — and, with --out, the files `bjepa diagnose` writes.

    python examples/diagnostics.py --num-steps 60 --num-samples 20
    python examples/diagnostics.py --betas 0.01,10 --num-steps 3000 --out runs/diagnostics-demo
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyro
import torch

from bjepa.cli._common import parse_float_list
from bjepa.data import noisy_tv
from bjepa.diagnostics import diagnose_model, write_diagnosis
from bjepa.inference import fit
from bjepa.inference.fit import set_seed
from bjepa.models import VJEPA

#: the quickest flags, used by tests/test_cli_examples.py
QUICK_ARGS = ["--num-steps", "40", "--train-steps", "600", "--test-steps", "300",
              "--num-samples", "20", "--betas", "0.01"]


def main(args: argparse.Namespace) -> dict:
    # 1. data: one Noisy TV system, separate train/test trajectories
    train, test = noisy_tv.make_split(args.sigma, args.seed, train_steps=args.train_steps,
                                      test_steps=args.test_steps)
    results = {}
    for beta in args.betas:
        # 2. train VJEPA with SVI (the ELBO is NLL + β·KL)
        pyro.clear_param_store()
        set_seed(args.seed)
        model = VJEPA(train.obs.shape[1], args.latent_dim, beta=beta)
        fit(model, train.obs[:-1], train.obs[1:], steps=args.num_steps, lr=args.learning_rate,
            seed=args.seed, device=args.device, progress=False)
        model = model.cpu()
        # 3. diagnose on held-out pairs; the probe maps latents to the true state
        with torch.no_grad():
            probe_latents = model.encode_target(train.obs[1:])
        name = f"vjepa-beta{beta:g}"
        diag = diagnose_model(model, test.obs[:-1], test.obs[1:], name=name,
                              num_samples=args.num_samples, seed=args.seed,
                              true_state=test.signal[1:],
                              probe_train=(probe_latents, train.signal[1:]))
        print(f"== {name}: {diag.verdict}")
        print(f"   calibration: {diag.calibration.summary()}")
        if diag.state_calibration is not None:
            print(f"   true state via probe: {diag.state_calibration.summary()}")
        print(f"   collapse: {diag.collapse.summary()}")
        loo = diag.loo
        if loo["applicable"]:
            print(f"   PSIS-LOO: elpd_loo {loo['elpd_loo']:.1f}, p_loo {loo['p_loo']:.1f}, "
                  f"k̂ > {loo['good_k']:.2f} for "
                  f"{loo['khat_counts']['bad'] + loo['khat_counts']['very_bad']} of "
                  f"{loo['n_data_points']} observations")
        else:  # no global latents: leave-one-out is exact, elpd = log predictive density
            print(f"   log predictive density {loo['elpd_loo']:.1f} over "
                  f"{loo['n_data_points']} observations (no global latents: LOO is exact)")
        print(f"   InferenceData groups: {diag.idata.groups()}")
        for reason in diag.reasons:
            print(f"   - {reason}")
        # 4. the same files as `bjepa diagnose` (JSON, NetCDF, figures, report.md)
        if args.out:
            files = write_diagnosis(diag, Path(args.out) / name)
            print(f"   wrote {files['report'].parent}/")
        results[beta] = diag
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--betas", type=parse_float_list, default=[0.01, 10.0],
                        help="KL weights β to compare, e.g. 0.01,10")
    parser.add_argument("--sigma", type=float, default=4.0, help="distractor strength σ")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latent-dim", type=int, default=4)
    parser.add_argument("--train-steps", type=int, default=3000, help="training frames")
    parser.add_argument("--test-steps", type=int, default=1000, help="held-out frames")
    parser.add_argument("--num-steps", type=int, default=1500, help="optimiser steps")
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--num-samples", type=int, default=100, help="posterior draws")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="write diagnostics files here")
    main(parser.parse_args())
