"""Writing your own prior for BJEPA, using it in training and in fused prediction.

1. A Student-t structural prior ``p_struct`` (heavy tails: tolerant of rare large moves)
   written in a few lines against :class:`bjepa.priors.LatentPrior` and used in training.
2. A "stay inside a box" energy prior fused with the trained predictor at inference time
   (no closed form: importance sampling, with the effective sample size reported).
3. A goal prior (Gaussian: closed-form Kalman fusion), swept over its strength, drawn as a
   figure: the prediction moves towards the goal by exactly the precision-weighted amount.

    python examples/custom_prior.py --quick
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bjepa.data import noisy_tv
from bjepa.experiments.noisy_tv import probe
from bjepa.inference import fit, load_model, save_checkpoint
from bjepa.models import BJEPA
from bjepa.priors import GoalPrior, LatentPrior, register_prior

#: the quickest flags, used by tests/test_cli_examples.py
QUICK_ARGS = ["--quick", "--num-steps", "40"]


@register_prior("example_student_t")  # checkpoints save it by this name, without pickle
class StudentT(LatentPrior):
    """Independent Student-t over each latent dimension."""

    def __init__(self, dim: int, df: float = 3.0, scale: float = 1.0) -> None:
        super().__init__(dim)
        self.df, self.scale = df, scale

    def log_prob(self, z: torch.Tensor, eta: torch.Tensor | None = None) -> torch.Tensor:
        return torch.distributions.StudentT(self.df, 0.0, self.scale).log_prob(z).sum(-1)


class Box(LatentPrior):
    """``p(z) ∝ exp(−k · Σ relu(|z| − h)²)``: stay inside the box ``[−h, h]^D``."""

    def __init__(self, dim: int, half_width: float, stiffness: float) -> None:
        super().__init__(dim)
        self.half_width, self.stiffness = half_width, stiffness

    def log_prob(self, z: torch.Tensor, eta: torch.Tensor | None = None) -> torch.Tensor:
        return -self.stiffness * torch.relu(z.abs() - self.half_width).pow(2).sum(-1)


def main(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    train, test = noisy_tv.make_split(args.sigma, args.seed,
                                      train_steps=1500 if args.quick else 6000,
                                      test_steps=500 if args.quick else 2000)
    # 1. training with a custom structural prior: gamma * KL(p_like || StudentT) in the ELBO
    model = BJEPA(train.obs.shape[1], 4, prior=StudentT(4))
    fit(model, train.obs[:-1], train.obs[1:], steps=args.num_steps, lr=args.learning_rate,
        seed=args.seed, progress=not args.quick)
    scores = probe(model, train, test)
    print(f"BJEPA with a Student-t p_struct: signal R²={scores['signal_r2']:.3f}, "
          f"distractor R²={scores['noise_r2']:.3f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / "student_t.pt", model)   # the prior by name + df, scale
    again = load_model(out / "student_t.pt")       # any process that registered StudentT
    print(f"reloaded: prior {type(again.struct_prior).__mro__[1].__name__}"
          f"(df={again.struct_prior.df}), same prediction: "
          f"{torch.equal(again.predict(test.obs[:5]).mean, model.predict(test.obs[:5]).mean)}")

    # 2. fusion with an energy prior (importance sampling)
    context = test.obs[:200]
    like = model.predict(context)
    h = float(like.mean.abs().median())
    # a soft wall: one predictive sd outside the box costs 0.05 nats per dimension
    box = Box(4, half_width=h, stiffness=0.05 / float(like.variance.mean()))
    fused = model.predict(context, prior=box, fusion_samples=4000)
    out_before = float(torch.relu(like.mean.abs() - h).mean())
    out_after = float(torch.relu(fused.mean.abs() - h).mean())
    print(f"box prior: mean distance outside the box {out_before:.4f} -> {out_after:.4f} "
          f"(median ESS {float(fused.ess.median()):.0f} of 4000)")

    # 3. goal prior: closed-form fusion, swept over sigma_goal
    goal = model.encode_target(test.obs[-1:])[0]
    row = like.mean[0]
    strengths = torch.logspace(-2, 1, 25)
    shift = []  # per latent dimension: fraction of the way from the prediction to the goal
    for s in strengths:
        f = model.predict(context[:1], prior=GoalPrior(goal, float(s)))
        shift.append(((f.mean[0] - row) / (goal - row)).tolist())
    expected = [(like.variance[0] / (like.variance[0] + s**2)).tolist() for s in strengths]
    _plot(strengths, shift, expected, out / "goal_prior_shift.png")
    print(f"wrote {out / 'goal_prior_shift.png'}")
    return {"scores": scores, "box": (out_before, out_after), "shift": shift}


def _plot(strengths, shift, expected, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2), constrained_layout=True)
    shift, expected = list(zip(*shift, strict=True)), list(zip(*expected, strict=True))
    for d, (meas, theory) in enumerate(zip(shift, expected, strict=True)):
        ax.semilogx(strengths, meas, "o", color=f"C{d}", ms=4,
                    label=f"dim {d}: (μ_fused − μ_like) / (goal − μ_like)")
        ax.semilogx(strengths, theory, "-", color=f"C{d}", lw=1,
                    label="σ²_like / (σ²_like + σ²_goal)" if d == 0 else None)
    ax.set(title="A goal prior pulls the prediction by the precision ratio",
           xlabel="goal prior scale σ_goal (latent units)",
           ylabel="fraction of the way to the goal")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sigma", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-steps", type=int, default=2000)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--out", default="runs/custom-prior")
    parser.add_argument("--quick", action="store_true")
    main(parser.parse_args())
