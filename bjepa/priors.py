"""Priors for BJEPA — one interface for both kinds (docs/method.md#bjepa-two-kinds-of-prior).

**Latent priors** are experts over the target latent ``z`` in the product of experts::

    p(z_T | z_C, η)  ∝  p_like(z_T | z_C) · p_prior(z_T | η)

A latent prior is a small ``nn.Module`` with one required method, ``log_prob(z, eta=None)``
(an unnormalised log-density is fine). A Gaussian prior also implements ``gaussian(eta)``,
returning ``(loc, precision)`` so fusion with a Gaussian predictor is closed-form (a Kalman
update in latent space); everything else is fused by importance sampling. Priors used in
*training* (``p_struct`` in BJEPA's ``γ · KL(p_like ‖ p_struct)``) are turned into a Pyro
distribution by :meth:`LatentPrior.distribution`.

A new prior is one subclass and one method::

    class StudentT(LatentPrior):
        def __init__(self, dim, df=3.0):
            super().__init__(dim)
            self.df = df

        def log_prob(self, z, eta=None):
            return torch.distributions.StudentT(self.df).log_prob(z).sum(-1)

**Weight priors** put a distribution on the predictor's weights: :class:`WeightPrior`
subclasses implement ``site_dist(name, param)`` (TyXe style); :func:`make_weight_prior`
accepts ``"normal"``, ``"laplace"``, ``"horseshoe"``, a :class:`WeightPrior`, or any
callable ``(name, param) -> torch.distributions.Distribution``.

**Saving.** Every prior remembers the arguments it was built with; a checkpoint stores a prior
as its *registered name*, those arguments and (in the model's state dict) its learnable state —
never pickled code. The built-in priors are registered; decorate your own class with
:func:`register_prior` so that it saves by name and loads again in any process that has
registered it (``load_model`` never imports code)::

    @register_prior("student_t")
    class StudentT(LatentPrior):
        ...
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from collections.abc import Callable
from typing import Any

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions.torch_distribution import TorchDistributionMixin
from torch import nn
from torch.distributions import Distribution, constraints

from bjepa._validation import check_positive, check_positive_int, check_tensor

__all__ = [
    "EnergyPrior",
    "fuse",
    "fuse_gaussian",
    "GaussianPrior",
    "GoalPrior",
    "HorseshoeWeightPrior",
    "LaplaceWeightPrior",
    "LatentPrior",
    "MixturePrior",
    "NormalWeightPrior",
    "StandardNormal",
    "UnnormalizedDensity",
    "WeightPrior",
    "HierarchicalWeightPrior",
    "PriorError",
    "build_prior",
    "make_weight_prior",
    "prior_spec",
    "register_prior",
    "registered_priors",
]


_NO_SHAPE = torch.Size()
logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------ saving by name
class PriorError(ValueError):
    """A prior cannot be saved, rebuilt or used as written (the message names the prior)."""


#: registered name → prior class (latent and weight priors share one name space)
_REGISTRY: dict[str, type] = {}


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_prior(name: str | type | None = None) -> Any:
    """Class decorator: save priors of this class by ``name`` and rebuild them on load.

    Use as ``@register_prior("student_t")`` or bare ``@register_prior`` (the name is then the
    class name). A checkpoint holds only the name, the constructor arguments and the learnable
    state, so the process that loads it must have registered the class too (import the module
    that defines it before :func:`bjepa.inference.load_model`). Registering another class under
    a taken name raises; re-running the same definition (a notebook cell) replaces it.
    """
    def decorate(cls: type, key: str | None = None) -> type:
        if not (isinstance(cls, type) and issubclass(cls, LatentPrior | WeightPrior)):
            raise TypeError(f"register_prior decorates LatentPrior or WeightPrior subclasses, "
                            f"got {cls!r}")
        key = key or cls.__name__
        old = _REGISTRY.get(key)
        if old is not None and old is not cls and _qualname(old) != _qualname(cls):
            raise ValueError(f"prior name {key!r} is taken by {_qualname(old)}; choose another "
                             f"name for {_qualname(cls)}")
        _REGISTRY[key] = cls
        cls._registered_name = key
        return cls

    if isinstance(name, type):
        return decorate(name)
    if name is not None and (not isinstance(name, str) or not name):
        raise TypeError(f"register_prior takes a non-empty name string, got {name!r}")
    return functools.partial(decorate, key=name)


def registered_priors() -> dict[str, type]:
    """A copy of the registry: name → class."""
    return dict(_REGISTRY)


def _own_class(obj: Any) -> type:
    """The user-visible class of a prior (``to_pyro_module_`` wraps it in a Pyro subclass)."""
    for cls in type(obj).__mro__:
        if cls.__module__ != "pyro.nn.module":
            return cls
    return type(obj)  # pragma: no cover


def _records_init_args(cls: type) -> None:
    """Wrap ``cls.__init__`` so that the outermost call stores its arguments on the instance
    (``_init_args``): what :func:`prior_spec` saves and :func:`build_prior` passes back."""
    init = cls.__dict__.get("__init__")
    if init is None or getattr(init, "_records_args", False) \
            or cls.__module__ == "pyro.nn.module":
        return
    sig = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        if "_init_args" not in self.__dict__:
            bound = sig.bind(self, *args, **kwargs)
            saved: dict[str, Any] = {}
            for pname, value in list(bound.arguments.items())[1:]:
                kind = sig.parameters[pname].kind
                if kind is inspect.Parameter.VAR_KEYWORD:
                    saved.update(value)
                elif kind is inspect.Parameter.VAR_POSITIONAL:
                    saved["*" + pname] = list(value)
                else:
                    saved[pname] = value
            object.__setattr__(self, "_init_args", saved)
        init(self, *args, **kwargs)

    wrapper._records_args = True  # type: ignore[attr-defined]
    cls.__init__ = wrapper


def _spec_value(prior_name: str, key: str, value: Any) -> Any:
    """A constructor argument as a checkpoint can hold it, or raise ``TypeError``."""
    if isinstance(value, LatentPrior | WeightPrior):
        return {"__prior__": prior_spec(value)}
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, list | tuple):
        items = [_spec_value(prior_name, f"{key}[{i}]", v) for i, v in enumerate(value)]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"__dict__": {k: _spec_value(prior_name, f"{key}[{k!r}]", v)
                             for k, v in value.items()}}
    raise TypeError(f"argument {key!r} is a {type(value).__name__}")


def _from_spec_value(value: Any) -> Any:
    if isinstance(value, dict):
        if "__prior__" in value:
            return build_prior(value["__prior__"])
        if "__tuple__" in value:
            return tuple(_from_spec_value(v) for v in value["__tuple__"])
        if "__dict__" in value:
            return {k: _from_spec_value(v) for k, v in value["__dict__"].items()}
    if isinstance(value, list):
        return [_from_spec_value(v) for v in value]
    return value


def prior_spec(prior: LatentPrior | WeightPrior) -> dict[str, Any]:
    """What a checkpoint stores for ``prior``: plain values and tensors only.

    ``{"name": registered name or None, "class": "module.Qualname", "kind": "latent" |
    "weight", "args": constructor arguments or None, "unsaved": why the arguments could not be
    stored (e.g. a Python callable) or None}``. The learnable state is not here: it is part of
    the model's state dict.
    """
    if not isinstance(prior, LatentPrior | WeightPrior):
        raise TypeError(f"prior must be a LatentPrior or WeightPrior, got {type(prior).__name__}")
    cls = _own_class(prior)
    name = cls.__dict__.get("_registered_name")
    if name is not None and _REGISTRY.get(name) is not cls:
        name = None
    args, unsaved = None, None
    raw = prior.__dict__.get("_init_args")
    if raw is None:
        unsaved = f"{cls.__name__}.__init__ did not record its arguments"
    else:
        try:
            args = {k: _spec_value(cls.__name__, k, v) for k, v in raw.items()}
        except TypeError as err:
            unsaved = (f"{err}, which a checkpoint cannot store without pickling code; pass an "
                       f"equivalent prior to load_model")
    return {"name": name, "class": _qualname(cls),
            "kind": "latent" if isinstance(prior, LatentPrior) else "weight",
            "args": args, "unsaved": unsaved}


def build_prior(spec: dict[str, Any], *, role: str = "prior") -> LatentPrior | WeightPrior:
    """Rebuild a prior from :func:`prior_spec` output, using this process's registry.

    :param role: how error messages call the prior (e.g. ``"weight_prior"``), so they can name
        the ``load_model`` argument that overrides it.
    :raises PriorError: if its class is not registered here or its arguments were not saved.
    """
    if not isinstance(spec, dict) or "class" not in spec:
        raise PriorError(f"malformed {role} record in the checkpoint: {spec!r}")
    name, qual = spec.get("name"), spec["class"]
    if name is None:
        raise PriorError(
            f"the {role} is a {qual}, which was not registered when the checkpoint was saved, "
            f"so it cannot be rebuilt by name; decorate the class with @register_prior, or "
            f"pass load_model(path, {role}={qual.rsplit('.', 1)[-1]}(...))")
    cls = _REGISTRY.get(name)
    if cls is None:
        raise PriorError(
            f"the {role} was saved as {name!r} ({qual}), which is not registered in this "
            f"process; import the module that defines it (decorated with "
            f"@register_prior({name!r})) before loading, or pass load_model(path, "
            f"{role}=...). A checkpoint never imports code.")
    if spec.get("args") is None:
        raise PriorError(
            f"the {role} {name!r} ({qual}) was saved without its constructor arguments "
            f"({spec.get('unsaved')}); pass the same prior again: load_model(path, "
            f"{role}=...)")
    kwargs = {k: _from_spec_value(v) for k, v in spec["args"].items() if not k.startswith("*")}
    star = [_from_spec_value(v) for k, v in spec["args"].items() if k.startswith("*")]
    try:
        return cls(*(star[0] if star else ()), **kwargs)
    except (TypeError, ValueError) as err:
        raise PriorError(f"cannot rebuild the {role} {name!r} from its saved arguments "
                         f"{sorted(kwargs)}: {err}") from err


class _Wrapped(dist.TorchDistribution):
    """Makes any ``torch.distributions`` object usable at a Pyro sample site."""

    arg_constraints: dict = {}

    def __init__(self, base: Distribution) -> None:
        self.base = base
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @property
    def support(self):
        return self.base.support

    @property
    def has_rsample(self) -> bool:
        return self.base.has_rsample

    def rsample(self, sample_shape=_NO_SHAPE):
        return self.base.rsample(sample_shape)

    def sample(self, sample_shape=_NO_SHAPE):
        return self.base.sample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.base.log_prob(value)

    @property
    def mean(self):
        return self.base.mean

    @property
    def variance(self):
        return self.base.variance


class UnnormalizedDensity(dist.TorchDistribution):
    """A Pyro distribution defined only by a (possibly unnormalised) log-density.

    It cannot be sampled; it serves as the *model* side of a sample site whose value comes
    from the guide (the ELBO then uses the Monte Carlo estimate ``log q − log p``).
    """

    arg_constraints: dict = {}
    support = constraints.real_vector

    def __init__(self, log_density: Callable[[torch.Tensor], torch.Tensor], dim: int,
                 batch_shape: torch.Size = _NO_SHAPE) -> None:
        self._log_density = log_density
        super().__init__(batch_shape, torch.Size([dim]), validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self._log_density(value)

    def expand(self, batch_shape, _instance=None):
        return UnnormalizedDensity(self._log_density, self.event_shape[0],
                                   torch.Size(batch_shape))


class LatentPrior(nn.Module):
    """Base class of priors over the target latent ``z`` (event shape ``(dim,)``).

    Subclasses implement :meth:`log_prob`; Gaussian ones also :meth:`gaussian`.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _records_init_args(cls)

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = check_positive_int("dim", dim)

    def log_prob(self, z: torch.Tensor, eta: torch.Tensor | None = None) -> torch.Tensor:
        """Log-density (up to a constant) of ``z`` of shape ``(..., dim)`` → ``(...)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement log_prob(z, eta)")

    def gaussian(self, eta: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(loc, precision)`` with shapes ``(..., dim)`` and ``(..., dim, dim)`` if this
        prior is Gaussian, else ``None`` (fusion then falls back to importance sampling)."""
        return None

    def distribution(self, eta: torch.Tensor | None = None) -> Distribution:
        """The prior as a distribution with event shape ``(dim,)`` (for Pyro sample sites)."""
        g = self.gaussian(eta)
        if g is not None:
            loc, prec = g
            return dist.MultivariateNormal(loc, precision_matrix=prec)
        return UnnormalizedDensity(lambda z: self.checked_log_prob(z, eta), self.dim)

    def checked_log_prob(self, z: torch.Tensor, eta: torch.Tensor | None = None
                         ) -> torch.Tensor:
        """:meth:`log_prob` with shape and finiteness checks that name the prior."""
        if z.shape[-1] != self.dim:
            raise ValueError(f"{type(self).__name__} has event shape ({self.dim},) but got "
                             f"z with last dimension {z.shape[-1]}")
        out = self.log_prob(z, eta)
        if not torch.is_tensor(out) or out.shape != z.shape[:-1]:
            raise ValueError(
                f"{type(self).__name__}.log_prob must return shape {tuple(z.shape[:-1])} "
                f"(one value per latent), got "
                f"{tuple(out.shape) if torch.is_tensor(out) else type(out).__name__}")
        if torch.isnan(out).any() or torch.isposinf(out).any():
            raise ValueError(f"{type(self).__name__}.log_prob returned NaN or +inf")
        return out


class GaussianPrior(LatentPrior):
    """``N(loc, diag scale²)``; ``learnable=True`` makes ``loc`` and ``scale`` parameters
    (the structural prior ``p_struct`` of BJEPA's training objective)."""

    def __init__(self, dim: int, loc: float | torch.Tensor = 0.0,
                 scale: float | torch.Tensor = 1.0, *, learnable: bool = False) -> None:
        super().__init__(dim)
        loc_t = torch.as_tensor(loc, dtype=torch.float32).expand(dim).clone()
        scale_t = torch.as_tensor(scale, dtype=torch.float32).expand(dim).clone()
        if not torch.isfinite(loc_t).all():
            raise ValueError("loc must be finite")
        if not (torch.isfinite(scale_t).all() and (scale_t > 0).all()):
            raise ValueError(f"scale must be finite and > 0, got {scale_t.tolist()}")
        self.learnable = learnable
        if learnable:
            self.loc = nn.Parameter(loc_t)
            self.raw_scale = nn.Parameter(torch.log(torch.expm1(scale_t)))
        else:
            self.register_buffer("loc", loc_t)
            self.register_buffer("raw_scale", torch.log(torch.expm1(scale_t)))

    @property
    def scale(self) -> torch.Tensor:
        return F.softplus(self.raw_scale) + 1e-6

    def log_prob(self, z: torch.Tensor, eta: torch.Tensor | None = None) -> torch.Tensor:
        return torch.distributions.Normal(self.loc, self.scale).log_prob(z).sum(-1)

    def gaussian(self, eta: torch.Tensor | None = None):
        return self.loc, torch.diag_embed(self.scale.pow(-2))

    def distribution(self, eta: torch.Tensor | None = None) -> Distribution:
        return dist.Normal(self.loc, self.scale).to_event(1)


class StandardNormal(GaussianPrior):
    """``N(0, I)``."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim, 0.0, 1.0)


class GoalPrior(LatentPrior):
    """``N(f_θ'(x_goal), σ²_goal I)``: a task prior pulling predictions towards a goal.

    :param goal_latent: the goal's latent, e.g. ``model.encode_target(x_goal)``; shape
        ``(dim,)`` or ``(N, dim)`` (one goal per row). ``eta`` passed at call time overrides it.
    :param scale: σ_goal > 0 (small = a strong pull).
    """

    def __init__(self, goal_latent: torch.Tensor, scale: float = 1.0) -> None:
        check_tensor("goal_latent", goal_latent)
        if goal_latent.dim() not in (1, 2):
            raise ValueError(f"goal_latent must be (dim,) or (N, dim), got "
                             f"{tuple(goal_latent.shape)}")
        super().__init__(goal_latent.shape[-1])
        self.scale = check_positive("scale", scale)
        self.register_buffer("goal", goal_latent.detach().clone())

    def _loc(self, eta: torch.Tensor | None) -> torch.Tensor:
        return self.goal if eta is None else eta

    def log_prob(self, z: torch.Tensor, eta: torch.Tensor | None = None) -> torch.Tensor:
        return torch.distributions.Normal(self._loc(eta), self.scale).log_prob(z).sum(-1)

    def gaussian(self, eta: torch.Tensor | None = None):
        loc = self._loc(eta)
        prec = torch.eye(self.dim, dtype=loc.dtype, device=loc.device) / self.scale**2
        return loc, prec.expand(loc.shape[:-1] + (self.dim, self.dim))


class EnergyPrior(LatentPrior):
    """``p(z) ∝ exp(−E(z))`` for any callable energy ``E: (..., dim) → (...)``."""

    def __init__(self, dim: int, energy: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__(dim)
        if not callable(energy):
            raise TypeError("energy must be a callable E(z) -> tensor of energies")
        self.energy = energy

    def log_prob(self, z: torch.Tensor, eta: torch.Tensor | None = None) -> torch.Tensor:
        return -self.energy(z)


class MixturePrior(LatentPrior):
    """A mixture of diagonal Gaussians, ``Σ_k w_k N(loc_k, diag scale_k²)``."""

    def __init__(self, locs: torch.Tensor, scales: torch.Tensor | float = 1.0,
                 weights: torch.Tensor | None = None) -> None:
        check_tensor("locs", locs, ndim=2)
        super().__init__(locs.shape[1])
        k = locs.shape[0]
        scales_t = torch.as_tensor(scales, dtype=locs.dtype).expand(k, self.dim).clone()
        if not (torch.isfinite(scales_t).all() and (scales_t > 0).all()):
            raise ValueError("scales must be finite and > 0")
        w = torch.ones(k) if weights is None else torch.as_tensor(weights, dtype=locs.dtype)
        if w.shape != (k,) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be {k} non-negative numbers with a positive sum")
        self.register_buffer("locs", locs.detach().clone())
        self.register_buffer("scales", scales_t)
        self.register_buffer("logits", torch.log(w / w.sum()))

    def mixture(self) -> Distribution:
        comp = torch.distributions.Independent(
            torch.distributions.Normal(self.locs, self.scales), 1)
        return torch.distributions.MixtureSameFamily(
            torch.distributions.Categorical(logits=self.logits), comp)

    def log_prob(self, z: torch.Tensor, eta: torch.Tensor | None = None) -> torch.Tensor:
        return self.mixture().log_prob(z)

    def distribution(self, eta: torch.Tensor | None = None) -> Distribution:
        comp = dist.Normal(self.locs, self.scales).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), comp)


# --------------------------------------------------------------------------- weight priors
class WeightPrior:
    """Chooses which predictor parameters become random and their prior (TyXe style).

    Subclasses implement :meth:`site_dist`. ``include`` filters parameters by name
    substring (default: every weight and bias of the predictor).

    ``site_dist(name, param)`` may return any ``torch.distributions`` or Pyro distribution
    whose shape fits the parameter: an elementwise one (``Laplace(0., 1.)``, or a batch that
    broadcasts to the parameter's shape) is expanded to it, the dimensions are declared as
    one event (``to_event``) and a plain torch distribution is wrapped for Pyro
    (:meth:`site_distribution`); a shape that cannot fit is refused with an error naming the
    prior and the parameter. A prior with hyper-parameters (a learned or sampled scale) puts
    them on the module handed to :meth:`attach`.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _records_init_args(cls)

    def __init__(self, include: tuple[str, ...] = ("weight", "bias")) -> None:
        if isinstance(include, str) or not all(isinstance(k, str) for k in include):
            raise TypeError(f"include must be a tuple of name substrings, got {include!r}")
        self.include = tuple(include)

    def selects(self, name: str) -> bool:
        return any(key in name.rsplit(".", 1)[-1] for key in self.include)

    def site_dist(self, name: str, param: torch.Tensor) -> Distribution:
        raise NotImplementedError(f"{type(self).__name__} must implement site_dist(name, param)")

    def attach(self, holder: nn.Module, names: list[str]) -> None:
        """Called once by the model before the weights become random, with a ``PyroModule``
        that belongs to the model and the names of the selected parameters: put learned
        (``PyroParam``) or sampled (``PyroSample``) hyper-parameters on it and read them in
        :meth:`site_dist`. Default: nothing."""

    def site_distribution(self, name: str, param: torch.Tensor) -> Distribution:
        """:meth:`site_dist`, normalised to a Pyro distribution whose event shape is the
        parameter's shape (see the class docstring); raises :class:`PriorError` otherwise."""
        return _normalise_site(type(self).__name__, name, param, self.site_dist(name, param))


def _normalise_site(who: str, name: str, param: torch.Tensor, d: Any) -> Distribution:
    if not isinstance(d, Distribution):
        raise PriorError(f"{who}.site_dist must return a torch.distributions.Distribution for "
                         f"{name!r}, got {type(d).__name__}")
    shape, ev = tuple(param.shape), tuple(d.event_shape)
    if len(ev) > len(shape) or shape[len(shape) - len(ev):] != ev:
        raise PriorError(f"{who}.site_dist({name!r}) returned event shape {ev}, which is not a "
                         f"trailing part of the parameter's shape {shape}; return an elementwise "
                         "distribution or one of the parameter's full shape")
    batch = torch.Size(shape[:len(shape) - len(ev)])
    if d.batch_shape != batch:
        try:
            fits = torch.broadcast_shapes(d.batch_shape, batch) == batch
        except RuntimeError:
            fits = False
        if not fits:
            raise PriorError(f"{who}.site_dist({name!r}) returned batch shape "
                             f"{tuple(d.batch_shape)}, which does not broadcast to the "
                             f"parameter's shape {shape}")
        d = d.expand(batch)
    if isinstance(d, TorchDistributionMixin):
        return d.to_event(len(batch)) if batch else d
    if batch:
        d = torch.distributions.Independent(d, len(batch))
    return _Wrapped(d)


class NormalWeightPrior(WeightPrior):
    """``w ~ N(0, s²)`` elementwise (default ``s = 1``)."""

    def __init__(self, scale: float = 1.0, **kw) -> None:
        super().__init__(**kw)
        self.scale = check_positive("scale", scale)

    def site_dist(self, name: str, param: torch.Tensor) -> Distribution:
        return dist.Normal(torch.zeros_like(param), self.scale).to_event(param.dim())


class LaplaceWeightPrior(WeightPrior):
    """``w ~ Laplace(0, b)`` elementwise: sparsity-promoting."""

    def __init__(self, scale: float = 1.0, **kw) -> None:
        super().__init__(**kw)
        self.scale = check_positive("scale", scale)

    def site_dist(self, name: str, param: torch.Tensor) -> Distribution:
        return dist.Laplace(torch.zeros_like(param), self.scale).to_event(param.dim())


class HorseshoeWeightPrior(WeightPrior):
    """A horseshoe-like prior: the marginal of ``w | λ ~ N(0, (τ λ)²)``, ``λ ~ C⁺(0, 1)``.

    The exact marginal has no closed form; we use the tight analytic approximation
    ``log p(w) ≈ log log(1 + 2 τ² / w²) + const`` (Carvalho, Polson & Scott 2010, Thm. 1),
    which keeps the horseshoe's infinite spike at 0 and Cauchy-like tails while staying a
    single site per tensor (so it works with every autoguide).
    """

    def __init__(self, scale: float = 1.0, **kw) -> None:
        super().__init__(**kw)
        self.scale = check_positive("scale", scale)

    def site_dist(self, name: str, param: torch.Tensor) -> Distribution:
        tau2 = self.scale**2

        def log_density(w: torch.Tensor) -> torch.Tensor:
            lp = torch.log(torch.log1p(2 * tau2 / w.pow(2).clamp_min(1e-12)))
            lp = lp - math.log(self.scale) - 0.5 * math.log(2 * math.pi**3)
            return lp.flatten(-param.dim()).sum(-1)

        return _TensorDensity(log_density, param.shape)


class _TensorDensity(dist.TorchDistribution):
    """Unnormalised density over a whole parameter tensor (event shape = its shape)."""

    arg_constraints: dict = {}
    support = constraints.real

    def __init__(self, log_density, shape: torch.Size) -> None:
        self._log_density = log_density
        super().__init__(torch.Size(), torch.Size(shape), validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self._log_density(value)

    def sample(self, sample_shape=_NO_SHAPE):
        # used only to initialise autoguides near zero (the mode region of the horseshoe)
        return 0.1 * torch.randn(torch.Size(sample_shape) + self.event_shape)


class _CallablePrior(WeightPrior):
    def __init__(self, fn: Callable[[str, torch.Tensor], Distribution]) -> None:
        super().__init__()
        self.fn = fn

    def site_dist(self, name: str, param: torch.Tensor) -> Distribution:
        return self.fn(name, param)

    def site_distribution(self, name: str, param: torch.Tensor) -> Distribution:
        who = f"the weight_prior callable {getattr(self.fn, '__name__', type(self.fn).__name__)}"
        return _normalise_site(who, name, param, self.site_dist(name, param))


class HierarchicalWeightPrior(WeightPrior):
    """``w ~ N(0, s²)`` elementwise, with the scale ``s`` itself uncertain or learned.

    - ``hyperprior="half_cauchy"``: ``s ~ HalfCauchy(scale)``, a global latent of the model;
      the weight guide learns its posterior jointly with the weights' (Gelman 2006; the
      half-Cauchy is weakly informative and lets the data shrink ``s`` towards 0).
    - ``hyperprior="learned"``: ``s`` is a positive parameter fitted by the ELBO together with
      the network (type-II maximum likelihood, "empirical Bayes"), starting at ``scale``.

    :param scale: the half-Cauchy's scale, or the learned scale's starting value (> 0).
    :param per_tensor: one ``s`` per selected parameter tensor (automatic relevance
        determination) instead of one shared by all of them.
    """

    def __init__(self, scale: float = 1.0, *, hyperprior: str = "half_cauchy",
                 per_tensor: bool = False, **kw: Any) -> None:
        super().__init__(**kw)
        self.scale = check_positive("scale", scale)
        if hyperprior not in ("half_cauchy", "learned"):
            raise ValueError(f"hyperprior must be 'half_cauchy' or 'learned', got "
                             f"{hyperprior!r}")
        self.hyperprior = hyperprior
        self.per_tensor = bool(per_tensor)
        self._holder: nn.Module | None = None

    @staticmethod
    def _attr(name: str) -> str:
        return "scale_" + name.replace(".", "_")

    def attach(self, holder: nn.Module, names: list[str]) -> None:
        from pyro.nn import PyroParam, PyroSample

        self._holder = holder
        for attr in ([self._attr(n) for n in names] if self.per_tensor else ["scale"]):
            if self.hyperprior == "learned":
                setattr(holder, attr, PyroParam(torch.tensor(self.scale),
                                                constraint=constraints.positive))
            else:
                setattr(holder, attr, PyroSample(dist.HalfCauchy(torch.tensor(self.scale))))

    def site_dist(self, name: str, param: torch.Tensor) -> Distribution:
        if self._holder is None:
            raise PriorError("HierarchicalWeightPrior is used before attach(): build the model "
                             "with BJEPA(..., weight_prior=HierarchicalWeightPrior(...))")
        s = getattr(self._holder, self._attr(name) if self.per_tensor else "scale")
        return dist.Normal(torch.zeros_like(param), s.to(param))


for _cls, _name in [(StandardNormal, "standard_normal"), (GaussianPrior, "gaussian"),
                    (GoalPrior, "goal"), (EnergyPrior, "energy"), (MixturePrior, "mixture"),
                    (NormalWeightPrior, "normal"), (LaplaceWeightPrior, "laplace"),
                    (HorseshoeWeightPrior, "horseshoe"), (HierarchicalWeightPrior, "hierarchical"),
                    (_CallablePrior, "callable")]:
    register_prior(_name)(_cls)
_records_init_args(LatentPrior)
_records_init_args(WeightPrior)


WEIGHT_PRIORS: dict[str, type[WeightPrior]] = {
    "normal": NormalWeightPrior, "laplace": LaplaceWeightPrior,
    "horseshoe": HorseshoeWeightPrior, "hierarchical": HierarchicalWeightPrior,
}


def make_weight_prior(spec: str | WeightPrior | Callable | None) -> WeightPrior | None:
    """``None`` | ``"normal"`` | ``"laplace"`` | ``"horseshoe"`` | ``"hierarchical"`` | a
    :class:`WeightPrior` | a callable ``(name, param) -> Distribution``."""
    if spec is None or isinstance(spec, WeightPrior):
        return spec
    if isinstance(spec, str):
        if spec not in WEIGHT_PRIORS:
            raise ValueError(f"unknown weight_prior {spec!r}; choose one of "
                             f"{', '.join(map(repr, WEIGHT_PRIORS))}, a WeightPrior or a "
                             "callable (name, param) -> Distribution")
        return WEIGHT_PRIORS[spec]()
    if callable(spec):
        return _CallablePrior(spec)
    raise TypeError(f"weight_prior must be a name, a WeightPrior or a callable, got "
                    f"{type(spec).__name__}")


# --------------------------------------------------------------------------------- fusion
def _gaussian_parts(d: Distribution) -> tuple[torch.Tensor, torch.Tensor, bool] | None:
    """``(loc, precision, diagonal?)`` of a Gaussian predictive, else ``None``."""
    if isinstance(d, torch.distributions.Independent) and isinstance(
            d.base_dist, torch.distributions.Normal) and d.reinterpreted_batch_ndims == 1:
        return d.base_dist.loc, torch.diag_embed(d.base_dist.scale.pow(-2)), True
    if isinstance(d, torch.distributions.MultivariateNormal):
        return d.loc, d.precision_matrix, False
    return None


def fuse_gaussian(loc_a: torch.Tensor, prec_a: torch.Tensor, loc_b: torch.Tensor,
                  prec_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Product of two Gaussians: ``Λ = Λ_a + Λ_b``, ``μ = Λ⁻¹ (Λ_a μ_a + Λ_b μ_b)``.

    Returns ``(loc, covariance)`` — the Kalman update in latent space.
    """
    prec = prec_a + prec_b
    cov = torch.linalg.inv(prec)
    cov = 0.5 * (cov + cov.transpose(-1, -2))
    rhs = (prec_a @ loc_a.unsqueeze(-1) + prec_b @ loc_b.unsqueeze(-1)).squeeze(-1)
    return (cov @ rhs.unsqueeze(-1)).squeeze(-1), cov


def fuse(likelihood: Distribution, prior: LatentPrior, eta: torch.Tensor | None = None, *,
         num_samples: int = 2000) -> Distribution:
    """The product of experts ``p_like(z) · p_prior(z | η)``, normalised.

    Closed form when both experts are Gaussian (a diagonal result stays an ``Independent
    Normal``, otherwise a ``MultivariateNormal``). Otherwise: draw ``num_samples`` proposals
    from ``likelihood``, weight them by the prior (self-normalised importance sampling) and
    return a :class:`pyro.distributions.Empirical` with batch ``(N,)``; its attribute ``ess``
    holds the effective sample size per row.
    """
    if not isinstance(prior, LatentPrior):
        raise TypeError(f"prior must be a LatentPrior, got {type(prior).__name__}")
    if likelihood.event_shape != (prior.dim,):
        raise ValueError(f"prior has event shape ({prior.dim},) but the prediction has "
                         f"{tuple(likelihood.event_shape)}")
    parts = _gaussian_parts(likelihood)
    g = prior.gaussian(eta)
    if parts is not None and g is not None:
        loc_l, prec_l, diag_l = parts
        loc_p, prec_p = g
        loc_p, prec_p = loc_p.to(loc_l), prec_p.to(loc_l)
        if not (torch.isfinite(prec_p).all() and torch.isfinite(loc_p).all()):
            raise ValueError(f"{type(prior).__name__}.gaussian returned non-finite values")
        loc, cov = fuse_gaussian(loc_l, prec_l, loc_p.expand_as(loc_l),
                                 prec_p.expand_as(prec_l))
        off = cov - torch.diag_embed(torch.diagonal(cov, dim1=-2, dim2=-1))
        if diag_l and bool((off.abs() <= 1e-12 * cov.abs().amax()).all()):
            return dist.Normal(loc, torch.diagonal(cov, dim1=-2, dim2=-1).sqrt()).to_event(1)
        return dist.MultivariateNormal(loc, covariance_matrix=cov)
    check_positive_int("num_samples", num_samples)
    z = likelihood.sample((num_samples,))  # (S, N, D)
    logw = prior.checked_log_prob(z, eta)
    logw = logw - logw.logsumexp(0, keepdim=True)
    ess = 1.0 / logw.exp().pow(2).sum(0)
    if bool((ess < 0.05 * num_samples).any()):
        logger.warning("importance-sampled fusion: effective sample size down to %.1f of %d; "
                       "the prior is far from the prediction, raise num_samples",
                       float(ess.min()), num_samples)
    out = dist.Empirical(z.movedim(0, -2), logw.movedim(0, -1))
    out.ess = ess
    return out
