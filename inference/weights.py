"""Reference posteriors over the predictor's weights with the encoders frozen.

With ``z_C = f_θ(x_C)`` and ``z_T = μ_θ'(x_T)`` held fixed, the predictor is a Bayesian
regression (``BJEPA.weight_likelihood``). :func:`nuts_posterior` samples it with
:class:`pyro.infer.NUTS` — the gold standard for the linear-Gaussian case — and
:func:`svi_weight_posterior` fits an autoguide to the very same model, so the two can be
compared mean for mean and standard deviation for standard deviation.
:func:`weight_posterior_chains` refits the model's own weight guide from dispersed starting
points with independent seeds, over the same frozen latents: the copies share one observed
space, so ``to_inference_data(chains, ...)`` makes them chains whose R-hat and ESS say whether
independent SVI runs agree.
"""

from __future__ import annotations

import copy
from typing import Any

import pyro
import torch
from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from pyro.infer.autoguide import init_to_median, init_to_sample, init_to_value

from bjepa._validation import check_positive_int

__all__ = ["frozen_latents", "nuts_posterior", "posterior_summary", "svi_weight_posterior",
           "weight_posterior_chains"]


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


def weight_posterior_chains(model: Any, context: torch.Tensor, target: torch.Tensor, *,
                            num_chains: int = 4, steps: int = 1000, lr: float = 0.02,
                            num_particles: int = 1, init_spread: float = 0.1,
                            seed: int = 0) -> list[Any]:
    """Copies of a BJEPA whose weight guides were refit, each from its own random start and
    seed, to the weight posterior given the frozen encoders (``BJEPA.weight_likelihood``).

    The encoders, and so the observed target latents, are those of ``model`` in every copy:
    pass the list to :func:`bjepa.diagnostics.to_inference_data` to get one chain per copy.
    Each chain starts at the closed-form least-squares head (linear heads) plus Gaussian
    noise of relative size ``init_spread`` (else at a draw from the weight prior), so chains
    that end apart show in R-hat.

    :param num_chains: copies (>= 2).
    :param steps: SVI steps per copy.
    """
    from bjepa.inference.fit import FusedSVI

    _check_model(model)
    if isinstance(num_chains, bool) or not isinstance(num_chains, int) or num_chains < 2:
        raise ValueError(f"num_chains must be an int >= 2, got {num_chains!r}")
    steps = check_positive_int("steps", steps)
    zc, zt = frozen_latents(model, context, target)
    head = model.predictor
    start = head.init_values(zc, zt) if hasattr(head, "init_values") else None
    chains = []
    for c in range(num_chains):
        m = copy.deepcopy(model)
        pyro.set_rng_seed(seed + c)
        init = init_to_sample
        if start:
            prefix = m.predictor._pyro_name
            values = {f"{prefix}.{k}": v + init_spread * (v.abs().mean() + 0.1)
                      * torch.randn_like(v) for k, v in start.items()}
            init = init_to_value(values=values, fallback=init_to_sample)
        spec, scale = m._guide_spec, m.guide_init_scale
        if isinstance(spec, str):
            from bjepa.models.bjepa import AUTOGUIDES

            m._guide_spec = lambda blocked, cls=AUTOGUIDES[spec], scale=scale, init=init: cls(
                blocked, init_loc_fn=init, init_scale=scale)
        try:
            m._build_weight_guide()
        finally:
            m._guide_spec = spec
        guide = m.weight_guide

        def guide_fn(*_: Any, guide: Any = guide) -> Any:
            return guide()

        svi = FusedSVI(m.weight_likelihood, guide_fn, list(guide.parameters()),
                       Trace_ELBO(num_particles=num_particles), lr=lr)
        for _ in range(steps):
            svi.step(zc, zt)
        chains.append(m)
    return chains
