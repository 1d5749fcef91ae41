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
from pyro.nn import PyroModule, PyroSample, pyro_method
from torch.distributions import Distribution

from bjepa._validation import check_nonnegative, check_positive_int
from bjepa.models.base import rows
from bjepa.models.vjepa import VJEPA
from bjepa.priors import (
    GaussianPrior,
    LatentPrior,
    WeightPrior,
    fuse,
    make_weight_prior,
    prior_spec,
)

__all__ = ["AUTOGUIDES", "BJEPA"]

AUTOGUIDES = {
    "normal": AutoNormal,
    "lowrank": AutoLowRankMultivariateNormal,
    "mvn": AutoMultivariateNormal,
}


class BJEPA(VJEPA):
    """Bayesian JEPA.

    :param prior: the structural prior ``p_struct`` (a :class:`~bjepa.priors.LatentPrior`);
        default: a learnable diagonal Gaussian. A prior conditioned on data reads a per-row
        ``eta`` (``model.model(context, target, eta=eta)``; with the trainer,
        ``fit(..., model_kwargs={"eta": eta})``).
    :param gamma: weight γ >= 0 of ``KL(p_like ‖ p_struct)`` (paper default 0.1).
    :param weight_prior: ``None`` (point-estimated predictor), ``"normal"``, ``"laplace"``,
        ``"horseshoe"``, ``"hierarchical"``, a :class:`~bjepa.priors.WeightPrior` or a callable
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
        # checkpoints rebuild the priors from prior_specs() (name, arguments, state); hparams
        # hold their registered names only, so that settings compare as plain values
        self.hparams.update(
            prior=None if default_prior else _spec_name(prior),
            gamma=gamma, weight_prior=weight_prior if isinstance(weight_prior, str | None)
            else _spec_name(self.weight_prior), weight_guide=weight_guide
            if isinstance(weight_guide, str) else "custom", guide_init_scale=guide_init_scale)
        self._weight_sites: list[tuple[torch.nn.Module, str, str]] = []
        self.weight_guide = None
        self.jit_safe = self.weight_prior is None  # autoguides are trained eagerly
        if self.weight_prior is not None:
            self._make_weights_random()
            self._build_weight_guide()

    def prior_specs(self) -> dict[str, Any]:
        """How a checkpoint stores this model's priors (see :func:`bjepa.priors.prior_spec`):
        registered name, constructor arguments; their learnable state is in the state dict."""
        return {"prior": prior_spec(self.struct_prior),
                "weight_prior": None if self.weight_prior is None
                else prior_spec(self.weight_prior)}

    # -- weight posterior -------------------------------------------------------------------
    def _make_weights_random(self) -> None:
        selected = []
        for mod_name, module in list(self.predictor.named_modules()):
            for p_name, param in list(module.named_parameters(recurse=False)):
                full = f"{mod_name}.{p_name}" if mod_name else p_name
                if self.weight_prior.selects(full):
                    selected.append((module, p_name, full, param.detach().clone()))
        if not selected:
            raise ValueError("weight_prior selected no predictor parameters")
        # hyper-parameters of the weight prior (a learned or sampled scale) live here
        self.weight_hyper = PyroModule()
        self.weight_prior.attach(self.weight_hyper, [full for *_, full, _ in selected])
        self._weight_templates: dict[str, torch.Tensor] = {}
        for module, p_name, full, param in selected:
            self._weight_templates[full] = param
            self.weight_prior.site_distribution(full, param)  # refuse a bad prior now
            delattr(module, p_name)
            setattr(module, p_name, PyroSample(_SitePrior(self, full)))
            self._weight_sites.append((module, p_name, full))

    def _weight_site_prior(self, full: str) -> Distribution:
        template = self._weight_templates[full]
        dev = next(self.context_encoder.parameters()).device
        if template.device != dev:
            template = self._weight_templates[full] = template.to(dev)
        return self.weight_prior.site_distribution(full, template)

    @property
    def weight_site_names(self) -> list[str]:
        """Pyro site names of the random predictor weights."""
        return [f"{m._pyro_name}.{p}" for m, p, _ in self._weight_sites]

    def _guided_site(self, msg: dict[str, Any]) -> bool:
        """Sites of the weight guide: the random weights and the weight prior's sampled
        hyper-parameters."""
        name = msg["name"]
        return name in self.weight_site_names or (
            msg["type"] == "sample" and name.startswith(self.weight_hyper._pyro_name + "."))

    def _build_weight_guide(self, init_values: dict[str, torch.Tensor] | None = None) -> None:
        """(Re)create the autoguide over the weight sites and set it up eagerly, so its
        parameters exist before the first step (checkpoints load before training)."""
        spec = self._guide_spec
        init = init_to_value(values=init_values, fallback=init_to_median) if init_values \
            else init_to_median
        # the guide's prototype runs only the weight draws (and the weight prior's sampled
        # hyper-parameters): the rest of the model may hold sites that cannot be sampled,
        # e.g. a structural prior known only by its unnormalised density
        blocked = poutine.block(self._weights_only, expose_fn=self._guided_site)
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
    def check_eta(self, eta: torch.Tensor | None, context: torch.Tensor) -> None:
        """``eta`` must be ``(N, k)``: one row per context row."""
        if eta is None:
            return
        if not torch.is_tensor(eta):
            raise TypeError(f"eta must be a tensor with one row per context row, got "
                            f"{type(eta).__name__}")
        if eta.dim() != 2 or eta.shape[0] != context.shape[-2]:
            raise ValueError(f"eta must be a 2-D tensor with one row per context row "
                             f"({context.shape[-2]}, k), got shape {tuple(eta.shape)}")

    @pyro_method
    def model(self, context: torch.Tensor, target: torch.Tensor,
              batch_size: int | None = None, eta: torch.Tensor | None = None) -> None:
        """``eta``: optional ``(N, ...)`` per-row input of the structural prior
        ``p_struct(z_T | eta)`` (a goal, a covariate); subsampled with the data plate."""
        self.check_eta(eta, context)
        self._draw_weights()
        with pyro.plate("data", context.shape[-2], subsample_size=batch_size,
                        device=context.device) as idx:
            pred = self.predictive_dist(rows(context, idx))
            with poutine.scale(scale=self.beta):
                z_t = pyro.sample("z_target", self.prior_dist(pred.mean))
            pyro.factor("dynamics", pred.log_prob(z_t))
            if self.gamma > 0:
                eta_rows = None if eta is None else rows(eta.to(context.device), idx)
                with poutine.scale(scale=self.gamma):
                    pyro.sample("z_struct", self.struct_prior.distribution(eta_rows).expand(
                        pred.batch_shape))

    @pyro_method
    def guide(self, context: torch.Tensor, target: torch.Tensor,
              batch_size: int | None = None, eta: torch.Tensor | None = None) -> None:
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



def _spec_name(prior: LatentPrior | WeightPrior) -> str:
    """The registered name of a prior, or ``"custom:<class>"`` for an unregistered class."""
    spec = prior_spec(prior)
    return spec["name"] or f"custom:{spec['class']}"


class _SitePrior:
    """The prior of one random weight, rebuilt at each access so that it can read the weight
    prior's hyper-parameters (``PyroSample`` calls it with the owning module)."""

    def __init__(self, model: BJEPA, name: str) -> None:
        self.model, self.name = model, name

    def __call__(self, module: torch.nn.Module) -> Distribution:
        return self.model._weight_site_prior(self.name)
