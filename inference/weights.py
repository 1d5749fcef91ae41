"""Reference posteriors over the predictor's weights with the encoders frozen.

With ``z_C = f_θ(x_C)`` and ``z_T = μ_θ'(x_T)`` held fixed, the predictor is a Bayesian
regression (``BJEPA.weight_likelihood``). :func:`nuts_posterior` samples it with
:class:`pyro.infer.NUTS` — the gold standard for the linear-Gaussian case — and
:func:`svi_weight_posterior` fits an autoguide to the very same model, so the two can be
compared mean for mean and standard deviation for standard deviation.
"""

from __future__ import annotations

from typing import Any

import pyro
import torch
from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from pyro.infer.autoguide import init_to_median

from bjepa._validation import check_positive_int

__all__ = ["frozen_latents", "nuts_posterior", "posterior_summary", "svi_weight_posterior"]


def _check_model(model: Any) -> None:
    if getattr(model, "weight_guide", None) is None or not hasattr(model, "weight_likelihood"):
        raise ValueError("model must be a BJEPA with a weight_prior (its predictor weights are "
                         "the random variables)")


def frozen_latents(model: Any, context: torch.Tensor, target: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z_C, z_T)``: the context encoder's and the EMA target encoder's latents."""
    model.check_inputs(context, target)
    with torch.no_grad():
        return model.encode(context), model.encode_target(target)


def nuts_posterior(model: Any, context: torch.Tensor | None = None,
                   target: torch.Tensor | None = None, *, z_context: torch.Tensor | None = None,
                   z_target: torch.Tensor | None = None, num_samples: int = 1000,
                   warmup_steps: int = 500, num_chains: int = 1, seed: int = 0,
                   progress: bool = False) -> tuple[dict[str, torch.Tensor], MCMC]:
    """NUTS samples of the predictor weights given frozen encoders.

    Pass either ``context``/``target`` frames or the latents ``z_context``/``z_target``
    directly. Returns ``(samples by site name, the MCMC object)`` — use
    ``mcmc.diagnostics()`` or ``az.from_pyro(mcmc)`` for R-hat and ESS.
    """
    _check_model(model)
    zc, zt = _latents(model, context, target, z_context, z_target)
    check_positive_int("num_samples", num_samples)
    check_positive_int("warmup_steps", warmup_steps)
    pyro.set_rng_seed(seed)
    kernel = NUTS(model.weight_likelihood, init_strategy=init_to_median, jit_compile=False)
    mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup_steps,
                num_chains=num_chains, disable_progbar=not progress)
    mcmc.run(zc, zt)
    return mcmc.get_samples(), mcmc


def svi_weight_posterior(model: Any, context: torch.Tensor | None = None,
                         target: torch.Tensor | None = None, *,
                         z_context: torch.Tensor | None = None,
                         z_target: torch.Tensor | None = None, guide: str = "mvn",
                         steps: int = 3000, lr: float = 0.02, num_particles: int = 4,
                         num_samples: int = 4000, seed: int = 0) -> dict[str, torch.Tensor]:
    """Fit an autoguide (``"normal"``, ``"lowrank"`` or ``"mvn"``) to the same frozen-encoder
    model NUTS samples, and return ``num_samples`` draws per weight site."""
    from bjepa.models.bjepa import AUTOGUIDES

    _check_model(model)
    zc, zt = _latents(model, context, target, z_context, z_target)
    if guide not in AUTOGUIDES:
        raise ValueError(f"unknown guide {guide!r}; choose one of {list(AUTOGUIDES)}")
    pyro.set_rng_seed(seed)
    auto = AUTOGUIDES[guide](model.weight_likelihood, init_loc_fn=init_to_median,
                             init_scale=0.01)
    steps = check_positive_int("steps", steps)
    optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": 0.01 ** (1.0 / steps)})
    elbo = Trace_ELBO(num_particles=num_particles)  # nn.Linear cannot batch weight draws
    svi = SVI(model.weight_likelihood, auto, optim, elbo)
    for _ in range(steps):
        svi.step(zc, zt)
    predictive = pyro.infer.Predictive(model.weight_likelihood, guide=auto,
                                       num_samples=num_samples,
                                       return_sites=model.weight_site_names)
    with torch.no_grad():
        return predictive(zc, None)


def posterior_summary(samples: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Per-site posterior mean and standard deviation (over the leading sample axis)."""
    return {k: {"mean": v.mean(0), "sd": v.std(0)} for k, v in samples.items()}


def _latents(model, context, target, z_context, z_target):
    if z_context is not None and z_target is not None:
        return z_context.detach(), z_target.detach()
    if context is None or target is None:
        raise ValueError("pass context and target frames, or z_context and z_target latents")
    return frozen_latents(model, context, target)
