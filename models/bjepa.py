"""BJEPA: VJEPA with priors — a structural prior on the target latent (product of experts)
and, optionally, a prior over the predictor's weights (docs/method.md#bjepa-two-kinds-of-prior).

Generative story (per pair; ``w`` only with ``weight_prior``)::

    w         ~ p(w)                                     # predictor weights (global)
    z_C       = f_θ(x_C)
    z_T       ~ N(0, I)                   (scaled by β)
    factor      log p_φ,w(z_T | z_C)                     # the predictor's likelihood
    z_struct  ~ p_struct(· | η)           (scaled by γ)  # structural prior expert

Guide::

    w         ~ q_ψ(w)                                   # an autoguide (AutoNormal default)
    z_T       ~ q_θ'(z_T | x_T)           (scaled by β)
    z_struct  ~ p_φ,w(· | z_C)            (scaled by γ)  # the likelihood expert itself

so ``−ELBO = NLL + β·KL(q ‖ N(0, I)) + γ·KL(p_like ‖ p_struct) + KL(q_ψ(w) ‖ p(w))`` — the
paper's Eq. 33 training objective plus the weight posterior, all from Pyro's ELBO.

At prediction time :meth:`BJEPA.predict` fuses the predictor with any task prior (goal,
energy, mixture, ...): in closed form when both are Gaussian, else by importance sampling,
and integrates over the weight posterior with :class:`pyro.infer.Predictive`.
"""

from __future__ import annotations

from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import Predictive
from pyro.infer.autoguide import (
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
    init_to_median,
    init_to_value,
)
from pyro.nn import PyroSample, pyro_method
from torch.distributions import Distribution

from bjepa._validation import check_nonnegative, check_positive_int
from bjepa.models.base import rows
from bjepa.models.vjepa import VJEPA
from bjepa.priors import GaussianPrior, LatentPrior, fuse, make_weight_prior

__all__ = ["AUTOGUIDES", "BJEPA"]

AUTOGUIDES = {
    "normal": AutoNormal,
    "lowrank": AutoLowRankMultivariateNormal,
    "mvn": AutoMultivariateNormal,
}


class BJEPA(VJEPA):
    """Bayesian JEPA.

    :param prior: the structural prior ``p_struct`` (a :class:`~bjepa.priors.LatentPrior`);
        default: a learnable diagonal Gaussian.
    :param gamma: weight γ >= 0 of ``KL(p_like ‖ p_struct)`` (paper default 0.1).
    :param weight_prior: ``None`` (point-estimated predictor), ``"normal"``, ``"laplace"``,
        ``"horseshoe"``, a :class:`~bjepa.priors.WeightPrior` or a callable
        ``(name, param) -> Distribution``.
    :param weight_guide: ``"normal"`` (AutoNormal), ``"lowrank"``, ``"mvn"``, or a builder
        ``model -> AutoGuide`` (e.g. ``functools.partial(AutoNormal, init_scale=1e-2)``).
    :param guide_init_scale: initial posterior scale of the weight guide.
    Other arguments are those of :class:`~bjepa.models.VJEPA`.
    """

    def __init__(self, obs_dim: int, latent_dim: int = 4, *, prior: LatentPrior | None = None,
                 gamma: float = 0.1, weight_prior: Any = None, weight_guide: Any = "normal",
                 guide_init_scale: float = 0.01, **kwargs: Any) -> None:
        super().__init__(obs_dim, latent_dim, **kwargs)
        check_positive_int("latent_dim", latent_dim)
        self.gamma = check_nonnegative("gamma", gamma)
        if prior is None:
            prior = GaussianPrior(latent_dim, learnable=True)
        if not isinstance(prior, LatentPrior):
            raise TypeError(f"prior must be a bjepa.priors.LatentPrior, got "
                            f"{type(prior).__name__}")
        if prior.dim != latent_dim:
            raise ValueError(f"prior has dim {prior.dim} but latent_dim is {latent_dim}")
        default_prior = type(prior) is GaussianPrior and prior.learnable  # before to_pyro
        self.struct_prior = prior
        pyro.nn.module.to_pyro_module_(self.struct_prior)
        self.weight_prior = make_weight_prior(weight_prior)
        self._guide_spec = weight_guide
        self.guide_init_scale = guide_init_scale
        self.hparams.update(
            prior=None if default_prior else "custom",
            gamma=gamma, weight_prior=weight_prior if isinstance(weight_prior, str | None)
            else "custom", weight_guide=weight_guide if isinstance(weight_guide, str)
            else "custom", guide_init_scale=guide_init_scale)
        self._weight_sites: list[tuple[torch.nn.Module, str, str]] = []
        self.weight_guide = None
        self.jit_safe = self.weight_prior is None  # autoguides are trained eagerly
        if self.weight_prior is not None:
            self._make_weights_random()
            self._build_weight_guide()

    # -- weight posterior -------------------------------------------------------------------
    def _make_weights_random(self) -> None:
        for mod_name, module in list(self.predictor.named_modules()):
            for p_name, param in list(module.named_parameters(recurse=False)):
                full = f"{mod_name}.{p_name}" if mod_name else p_name
                if not self.weight_prior.selects(full):
                    continue
                prior = self.weight_prior.site_dist(full, param.detach())
                delattr(module, p_name)
                setattr(module, p_name, PyroSample(prior))
                self._weight_sites.append((module, p_name, full))
        if not self._weight_sites:
            raise ValueError("weight_prior selected no predictor parameters")

    @property
    def weight_site_names(self) -> list[str]:
        """Pyro site names of the random predictor weights."""
        return [f"{m._pyro_name}.{p}" for m, p, _ in self._weight_sites]

    def _build_weight_guide(self, init_values: dict[str, torch.Tensor] | None = None) -> None:
        """(Re)create the autoguide over the weight sites and set it up eagerly, so its
        parameters exist before the first step (checkpoints load before training)."""
        spec = self._guide_spec
        init = init_to_value(values=init_values, fallback=init_to_median) if init_values \
            else init_to_median
        blocked = poutine.block(self.model, expose=self.weight_site_names)
        if isinstance(spec, str):
            if spec not in AUTOGUIDES:
                raise ValueError(f"unknown weight_guide {spec!r}; choose one of "
                                 f"{', '.join(map(repr, AUTOGUIDES))} or pass a builder")
            kw = {"init_loc_fn": init, "init_scale": self.guide_init_scale}
            guide = AUTOGUIDES[spec](blocked, **kw)
        elif callable(spec):
            guide = spec(blocked)
        else:
            raise TypeError("weight_guide must be a name or a callable model -> AutoGuide")
        self.weight_guide = guide
        dev = next(p for p in self.parameters()).device
        dummy = torch.zeros(2, self.obs_dim, device=dev)
        with torch.no_grad(), poutine.block():
            guide(dummy, dummy)

    def _draw_weights(self) -> None:
        """Touch every random weight once (outside any data plate) so it is sampled/cached."""
        for module, p_name, _ in self._weight_sites:
            getattr(module, p_name)

    def _init_head(self, z_context: torch.Tensor, z_target: torch.Tensor) -> None:
        if self.weight_guide is None:
            return super()._init_head(z_context, z_target)
        head = self.predictor
        values = head.init_values(z_context, z_target) if hasattr(head, "init_values") else None
        if values:  # start the weight posterior at the closed-form head
            prefix = head._pyro_name
            self._build_weight_guide({f"{prefix}.{k}": v for k, v in values.items()})

    # -- Pyro program -----------------------------------------------------------------------
    @pyro_method
    def model(self, context: torch.Tensor, target: torch.Tensor,
              batch_size: int | None = None) -> None:
        self._draw_weights()
        with pyro.plate("data", context.shape[-2], subsample_size=batch_size,
                        device=context.device) as idx:
            pred = self.predictive_dist(rows(context, idx))
            with poutine.scale(scale=self.beta):
                z_t = pyro.sample("z_target", self.prior_dist(pred.mean))
            pyro.factor("dynamics", pred.log_prob(z_t))
            if self.gamma > 0:
                with poutine.scale(scale=self.gamma):
                    pyro.sample("z_struct", self.struct_prior.distribution().expand(
                        pred.batch_shape))

    @pyro_method
    def guide(self, context: torch.Tensor, target: torch.Tensor,
              batch_size: int | None = None) -> None:
        weights = {} if self.weight_guide is None else self.weight_guide(context, target,
                                                                         batch_size)
        with pyro.plate("data", context.shape[-2], subsample_size=batch_size,
                        device=context.device) as idx:
            with poutine.scale(scale=self.beta):
                pyro.sample("z_target", self.target_dist(rows(target, idx)))
            if self.gamma > 0:
                with poutine.block(), poutine.condition(data=weights):
                    self._draw_weights()
                    like = self.predictive_dist(rows(context, idx))
                with poutine.scale(scale=self.gamma):
                    pyro.sample("z_struct", like)

    # -- prediction -------------------------------------------------------------------------
    def weight_samples(self, num_samples: int = 100) -> dict[str, torch.Tensor]:
        """Draws from the weight posterior via :class:`pyro.infer.Predictive`."""
        if self.weight_guide is None:
            raise ValueError("this BJEPA has no weight prior (weight_prior=None)")
        check_positive_int("num_samples", num_samples)
        dev = next(self.parameters()).device
        dummy = torch.zeros(2, self.obs_dim, device=dev)
        predictive = Predictive(self._weights_only, guide=self.weight_guide,
                                num_samples=num_samples, return_sites=self.weight_site_names)
        with torch.no_grad():
            return predictive(dummy, dummy)

    @pyro_method
    def weight_likelihood(self, z_context: torch.Tensor, z_target: torch.Tensor) -> None:
        """The predictor as a Bayesian regression with encoders frozen: ``w ~ p(w)``,
        ``z_target ~ p_w(· | z_context)``. Used for the NUTS reference posterior."""
        self._draw_weights()
        with pyro.plate("frozen_data", z_context.shape[0]):
            pyro.sample("z_observed", self.predictor(z_context), obs=z_target)

    @pyro_method
    def _weights_only(self, context: torch.Tensor, target: torch.Tensor,
                      batch_size: int | None = None) -> None:
        self._draw_weights()

    def predict(self, context: torch.Tensor, prior: LatentPrior | None = None,
                eta: torch.Tensor | None = None, *, num_samples: int = 100,
                fusion_samples: int = 2000) -> Distribution:
        """The (fused) predictive distribution over the next latent.

        :param prior: a task prior to fuse with the predictor (product of experts).
        :param eta: task variable passed to ``prior`` (e.g. a goal latent).
        :param num_samples: weight-posterior draws to integrate over (weight priors only).
        :param fusion_samples: proposal draws when fusion needs importance sampling.
        """
        context = self.as_input("context", context)
        with torch.no_grad():
            if self.weight_guide is None:
                like = self.predictive_dist(context)
            else:
                like = self._posterior_predictive(context, num_samples)
            return like if prior is None else fuse(like, prior, eta, num_samples=fusion_samples)

    def _posterior_predictive(self, context: torch.Tensor, num_samples: int) -> Distribution:
        draws = self.weight_samples(num_samples)
        per_draw = []
        for s in range(num_samples):
            with poutine.block(), poutine.condition(data={k: v[s] for k, v in draws.items()}):
                per_draw.append(self._conditioned_predictive(context))
        return _mixture_over_draws(per_draw)

    @pyro_method
    def _conditioned_predictive(self, context: torch.Tensor) -> Distribution:
        self._draw_weights()
        return self.predictive_dist(context)


def _mixture_over_draws(draws: list[Distribution]) -> Distribution:
    """Equal-weight mixture over weight draws, batch ``(N,)``, event ``(D,)``."""
    first = draws[0]
    n = first.batch_shape[0]
    mix = dist.Categorical(logits=first.mean.new_zeros(n, len(draws)))
    base = first.base_dist if isinstance(first, torch.distributions.Independent) else None
    if isinstance(base, torch.distributions.Normal):
        loc = torch.stack([d.base_dist.loc for d in draws], dim=1)
        scale = torch.stack([d.base_dist.scale for d in draws], dim=1)
        return dist.MixtureSameFamily(mix, dist.Normal(loc, scale).to_event(1))
    if isinstance(first, torch.distributions.MultivariateNormal):
        loc = torch.stack([d.loc for d in draws], dim=1)
        tril = torch.stack([d.scale_tril for d in draws], dim=1)
        return dist.MixtureSameFamily(mix, dist.MultivariateNormal(loc, scale_tril=tril))
    samples = torch.stack([d.sample() for d in draws], dim=1)
    return dist.Empirical(samples, torch.zeros(samples.shape[:2], device=samples.device))

