"""Does the Bayesian layer help? Train VJEPA (a point-estimated predictor) and BJEPA (a
posterior over the predictor's weights) on a short Noisy TV trajectory and compare how well
their predictives of the true next state are calibrated — in distribution, and for a signal
amplitude the training data never showed.

See docs/bayes.md (``bjepa bayes`` runs the whole grid: more data sizes, shifts, guides,
NUTS, a deep ensemble and planning).

    python examples/bayes.py --quick
    python examples/bayes.py --n-frames 500 --seeds 0-4
"""

from __future__ import annotations

import argparse

import torch

from bjepa.cli._common import parse_int_list
from bjepa.diagnostics import fit_linear_probe
from bjepa.experiments import bayes
from bjepa.inference import fit
from bjepa.inference.fit import set_seed
from bjepa.models import BJEPA, VJEPA

#: the quickest flags, used by tests/test_cli_examples.py
QUICK_ARGS = ["--quick", "--num-steps", "60"]


def main(args: argparse.Namespace) -> list[dict]:
    cfg = bayes.BayesConfig(test_frames=300 if args.quick else 1000)
    rows = []
    for seed in args.seeds or [0]:
        # 1. one training trajectory of n frames; test pairs in distribution and at 3× the
        #    largest training amplitude (same dynamics, contexts never seen)
        train, tests = bayes.make_data(cfg, args.n_frames, seed)
        for name in ("vjepa", "bjepa"):
            # 2. the same encoder and head; BJEPA adds N(0, 1) priors on the predictor's
            #    weights and fits their posterior (AutoNormal) in the same ELBO
            set_seed(seed)
            model = VJEPA(20, 4) if name == "vjepa" else BJEPA(
                20, 4, weight_prior="normal", gamma=0.0)
            fit(model, train.context, train.target, steps=args.num_steps, lr=3e-3,
                seed=seed, progress=False)
            model.eval()
            # 3. a linear probe from the target latent to the true state, fitted on training
            #    frames, carries each predictive over the next latent to the next state
            probe = fit_linear_probe(model.encode_target(train.target), train.state)
            for regime in ("in", "amplitude"):
                test = tests[regime]
                torch.manual_seed(seed)
                parts = bayes.predictive_parts(model, test.context, num_samples=50)
                state = bayes.probe_predictive([(*parts, probe)])
                s = bayes.score(state, test.state, "state")
                rows.append({"model": name, "regime": regime, "seed": seed, **s})
                print(f"seed {seed} {name:>5} {regime:>9}: 90 % coverage "
                      f"{s['state_cov90']:.3f}  NLL {s['state_nll']:7.3f}  "
                      f"predictive sd {s['state_sd']:.3f}  RMSE {s['state_rmse']:.3f}")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-frames", type=int, default=500, help="training frames")
    parser.add_argument("--seeds", type=parse_int_list, default=None)
    parser.add_argument("--num-steps", type=int, default=800, help="training steps")
    parser.add_argument("--quick", action="store_true", help="smaller test sets")
    main(parser.parse_args())
