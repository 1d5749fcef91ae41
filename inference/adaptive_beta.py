"""Adaptive β: callbacks that set the KL weight of VJEPA/BJEPA during training.

VJEPA's loss is ``E_q[−log p_φ(z_T | z_C)] + β · KL(q_θ'(z_T | x_T) ‖ N(0, I))``. The β sweep
(docs/beta_sweep.md) shows what β does on Noisy TV; these callbacks choose it while training,
so that a user does not have to run the sweep first:

- :class:`TargetRate` — keep the **rate** (KL per latent dimension, in nats) at a target:
  β grows while the posterior carries more than the target and shrinks while it carries less.
- :class:`CalibratedBeta` — a GECO-style constrained objective: make the posterior as
  compressed as possible (as large a β as possible) **subject to the predictive staying
  calibrated**: the share of target draws ``z_T ~ q(z_T | x_T)`` inside the predictive's central
  90 % intervals must not fall below 90 %. β is the inverse of a Lagrange multiplier learned by
  multiplicative dual ascent on that constraint.

Both are :class:`~bjepa.inference.callbacks.Callback` objects::

    from bjepa.inference import CalibratedBeta, TargetRate, fit

    m = VJEPA(obs_dim=20, latent_dim=4, beta=1.0)          # any start
    hist = fit(m, x_c, x_t, steps=1000, lr=3e-3, batch_size=256,
               callbacks=[CalibratedBeta()])
    m.beta                                # the β it settled on
    [r["beta"] for r in hist.records]     # β over training

They change ``model.beta`` (which the models read every step through
``poutine.scale(scale=self.beta)``), so :func:`~bjepa.inference.fit` keeps the ELBO eager
(``needs_eager_elbo``) and refuses an explicit compiled one. Every record gets ``beta`` (and the
controlled quantity: ``rate`` or ``train_coverage90``). Their state (β, the smoothed signal,
the update count) is stored in every training checkpoint and restored on resume. Under DDP
callbacks run only on rank 0, so β would differ between processes: both refuse
``strategy="ddp"``.

All updates are multiplicative on β, clipped per update, bounded to ``[beta_min, beta_max]``,
start after ``warmup`` steps and happen every ``every`` steps (docs/adaptive_beta.md).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from bjepa._validation import check_positive, check_positive_int
from bjepa.inference.callbacks import Callback

if TYPE_CHECKING:
    from bjepa.inference.engine import Trainer

__all__ = ["AdaptiveBeta", "CalibratedBeta", "TargetRate"]

#: key of the controller's state in a training checkpoint's configuration
STATE_KEY = "adaptive_beta"


def _check_fraction(name: str, value: float, *, low: float = 0.0, high: float = 1.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not low < value < high:
        raise ValueError(f"{name} must be a number in ({low:g}, {high:g}), got {value!r}")
    return float(value)


def _check_nonneg_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return value


class AdaptiveBeta(Callback):
    """Base class of the β controllers: the schedule of updates, the clipped multiplicative
    step, the bounds, the records and the checkpointed state. Subclasses implement
    :meth:`signal` (the controlled quantity, or ``None`` to skip) and :meth:`error` (its
    normalised error: > 0 asks for a larger β).

    :param every: steps between updates (each update costs a fraction of a step).
    :param warmup: steps before the first update (the encoders and the scale net settle first).
    :param gain: log-β change per unit of normalised error.
    :param max_log_step: largest ``|Δ log β|`` of one update (``log 1.5``: at most ×1.5 or
        ÷1.5 per update).
    :param smoothing: weight of the past in the exponential moving average of the signal
        (0 = no smoothing).
    :param beta_min: lower bound of β (β is clamped into the bounds at the start, too).
    :param beta_max: upper bound of β.
    :param attr: the model attribute holding the KL weight (``"beta"``).
    """

    needs_eager_elbo = True
    #: the record key of the controlled quantity
    signal_name = "signal"

    def __init__(self, *, every: int = 10, warmup: int = 100, gain: float = 1.0,
                 max_log_step: float = math.log(1.5), smoothing: float = 0.8,
                 beta_min: float = 1e-5, beta_max: float = 100.0, attr: str = "beta") -> None:
        self.every = check_positive_int("every", every)
        self.warmup = _check_nonneg_int("warmup", warmup)
        self.gain = check_positive("gain", gain)
        self.max_log_step = check_positive("max_log_step", max_log_step)
        if smoothing != 0:
            _check_fraction("smoothing", smoothing)
        self.smoothing = float(smoothing)
        self.beta_min = check_positive("beta_min", beta_min)
        self.beta_max = check_positive("beta_max", beta_max)
        if not math.isfinite(self.beta_max) or self.beta_max <= self.beta_min:
            raise ValueError(f"beta_max must be finite and > beta_min ({beta_min!r}), got "
                             f"{beta_max!r}")
        if not isinstance(attr, str) or not attr:
            raise ValueError(f"attr must name the model's KL weight attribute, got {attr!r}")
        self.attr = attr
        self.smoothed: float | None = None
        self.updates = 0
        #: ``(step, β)`` after every update, and the start
        self.trace: list[tuple[int, float]] = []

    # -- what subclasses define ----------------------------------------------------------------
    def signal(self, trainer: Trainer) -> float | None:
        """The controlled quantity now (``None``: skip this update)."""
        raise NotImplementedError

    def error(self, value: float) -> float:
        """Normalised error of the (smoothed) signal: > 0 raises β, < 0 lowers it."""
        raise NotImplementedError

    def check_model(self, model: Any) -> None:
        """Refuse models the scheme cannot steer (override to add checks)."""

    # -- the loop's moments --------------------------------------------------------------------
    @property
    def name(self) -> str:
        return type(self).__name__

    def on_fit_start(self, trainer: Trainer) -> None:
        if getattr(trainer.strategy, "name", "single") == "ddp":
            raise ValueError(f"{self.name} cannot run under strategy='ddp': callbacks run only "
                             "on rank 0, so β would differ between processes. Train with "
                             "strategy='single', or fix β (model.beta) for DDP runs")
        if str(trainer.settings.elbo).startswith("jit-"):
            raise ValueError(f"{self.name} changes model.{self.attr} during training, which a "
                             f"compiled ELBO ({trainer.settings.elbo!r}) would not see; pass "
                             "elbo='auto' or an eager ELBO such as 'meanfield'")
        model = trainer.model
        beta = getattr(model, self.attr, None)
        if isinstance(beta, bool) or not isinstance(beta, int | float):
            raise ValueError(f"{self.name} needs a model with a float KL weight "
                             f"model.{self.attr} (VJEPA, BJEPA); {type(model).__name__} has "
                             f"{self.attr}={beta!r}")
        self.check_model(model)
        state = self._saved_state(trainer)
        if state is not None:
            beta = float(state["beta"])
            self.smoothed = None if state.get("smoothed") is None else float(state["smoothed"])
            self.updates = int(state.get("updates", 0))
        self._set(model, min(max(float(beta), self.beta_min), self.beta_max))
        self.trace = [(trainer.start_step, getattr(model, self.attr))]
        # run first at each record so the loggers (metrics, TensorBoard) see ``beta``; moving
        # an entry to the front leaves the loop's iteration over the later ones intact
        if self in trainer.callbacks and trainer.callbacks[0] is not self:
            trainer.callbacks.remove(self)
            trainer.callbacks.insert(0, self)

    def on_step_end(self, trainer: Trainer, completed: int) -> None:
        if completed <= self.warmup or (completed - self.warmup) % self.every:
            return
        value = self.signal(trainer)
        if value is None or not math.isfinite(value):
            return
        s = self.smoothing
        self.smoothed = value if self.smoothed is None else s * self.smoothed + (1 - s) * value
        step = max(-self.max_log_step, min(self.max_log_step, self.gain * self.error(
            self.smoothed)))
        beta = getattr(trainer.model, self.attr) * math.exp(step)
        self._set(trainer.model, min(max(beta, self.beta_min), self.beta_max))
        self.updates += 1
        self.trace.append((completed, getattr(trainer.model, self.attr)))

    def on_record(self, trainer: Trainer, record: dict[str, float]) -> None:
        record["beta"] = float(getattr(trainer.model, self.attr))
        if self.smoothed is not None:
            record[self.signal_name] = float(self.smoothed)

    def before_checkpoint(self, trainer: Trainer) -> None:
        trainer.config[STATE_KEY] = self.state(trainer.model)

    # -- state ---------------------------------------------------------------------------------
    def state(self, model: Any) -> dict[str, Any]:
        """Plain values a checkpoint stores (restored by :meth:`on_fit_start` on resume)."""
        return {"scheme": self.name, "beta": float(getattr(model, self.attr)),
                "smoothed": self.smoothed, "updates": self.updates}

    def _saved_state(self, trainer: Trainer) -> dict[str, Any] | None:
        if trainer.start_step <= 0:
            return None
        payload = getattr(trainer, "_payload", None) or {}
        state = (payload.get("config") or {}).get(STATE_KEY)
        if isinstance(state, dict) and state.get("scheme") == self.name:
            return state
        for rec in reversed(trainer.history.records):  # an older checkpoint: the last record
            if "beta" in rec:
                return {"beta": rec["beta"], "smoothed": rec.get(self.signal_name)}
        return None

    def _set(self, model: Any, beta: float) -> None:
        setattr(model, self.attr, float(beta))


class TargetRate(AdaptiveBeta):
    """Keep the rate — the KL of the target posterior to its prior, per latent dimension, in
    nats — at ``nats_per_dim``.

    Each update evaluates the ELBO's parts of the last mini-batch (``trainer.step_parts()``,
    about a third of a step), reads the β-scaled KL site ``kl_<site>``, divides by β and the
    latent size, and moves β by ``gain · log(rate / nats_per_dim)`` (clipped): a rate above
    the target raises β (compress more), a rate below lowers it. This is the β-VAE
    "controlled capacity" idea in multiplicative form; the rate's scale is fixed (nats per
    dimension against a standard-normal prior), unlike the dynamics NLL's.

    :param nats_per_dim: the target rate (> 0). On Noisy TV 3 nats/dim sits between β = 0.3
        and 1 of the fixed-β sweep (docs/adaptive_beta.md).
    :param site: the latent site whose KL is controlled (``"z_target"``).
    :param latent_dim: its size; default ``model.latent_dim``.
    """

    signal_name = "rate"

    def __init__(self, nats_per_dim: float = 3.0, *, site: str = "z_target",
                 latent_dim: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.nats_per_dim = check_positive("nats_per_dim", nats_per_dim)
        if not math.isfinite(self.nats_per_dim):
            raise ValueError(f"nats_per_dim must be finite, got {nats_per_dim!r}")
        self.site = site
        self.latent_dim = None if latent_dim is None else check_positive_int("latent_dim",
                                                                             latent_dim)

    def check_model(self, model: Any) -> None:
        d = self.latent_dim or getattr(model, "latent_dim", None)
        if not isinstance(d, int) or d <= 0:
            raise ValueError(f"TargetRate needs the latent size: pass latent_dim= "
                             f"({type(model).__name__} has no latent_dim)")
        self._dim = d

    def signal(self, trainer: Trainer) -> float | None:
        parts = trainer.step_parts()
        key = f"kl_{self.site}"
        if not parts:
            return None
        if key not in parts:
            raise ValueError(f"TargetRate(site={self.site!r}): the ELBO has no KL part {key!r} "
                             f"(parts: {sorted(parts)}); pass the latent site's name as site=")
        beta = getattr(trainer.model, self.attr)
        return parts[key] / (beta * self._dim)

    def error(self, value: float) -> float:
        return math.log(max(value, 1e-12) / self.nats_per_dim)


class CalibratedBeta(AdaptiveBeta):
    """A GECO-style constraint: as large a β as possible while the predictive stays calibrated.

    The constraint is that the share of target draws ``z_T ~ q(z_T | x_T)`` inside the
    predictive's central ``level`` intervals (per latent dimension) is at least ``coverage``.
    The Lagrangian of "minimise the KL subject to the constraint", divided by its multiplier
    λ, is VJEPA's loss with β = 1/λ, so each update is a multiplicative dual step on λ,
    i.e. ``log β ← log β + gain · (c̄ − coverage) / (1 − coverage)`` (clipped), where ``c̄`` is
    the moving average of the measured coverage (GECO averages its constraint the same way).
    Coverage is scale-free, unlike the dynamics NLL, whose level moves with the latent scale.

    The coverage is measured on ``rows`` pairs: the validation pairs of ``fit(val=...)`` when
    given, else rows of the training data drawn with a generator of the callback's own (the
    training RNG is not touched), or the last streamed batch.

    :param coverage: the coverage the predictive must keep, in (0, 1); default 0.9.
    :param level: the nominal central interval checked, in (0, 1); default 0.9 (so the
        constraint asks for nominal coverage; the sweep's small-β runs sit at 0.905).
    :param rows: pairs used per update.
    :param draws: draws of ``z_T`` per pair.
    :param gain: default 2: an error of 0.05 in coverage (half the miss rate) moves β by
        ×e^{1} before clipping.
    :param min_rate: optional second constraint, an information floor in nats per latent
        dimension (the rate of :class:`TargetRate`): β then moves by the more violated of the
        two constraints, so it is lowered while the rate is below the floor even when the
        coverage is met. Use it where a wide posterior is easy to cover (an MDN head,
        docs/adaptive_beta.md); costs a ``step_parts()`` evaluation per update.
    :param site: the KL site of the rate (with ``min_rate``).
    """

    signal_name = "train_coverage90"

    def __init__(self, coverage: float = 0.9, *, level: float = 0.9, rows: int = 1024,
                 draws: int = 4, gain: float = 2.0, seed: int = 0,
                 min_rate: float | None = None, site: str = "z_target", **kwargs: Any) -> None:
        super().__init__(gain=gain, **kwargs)
        if min_rate is not None:
            check_positive("min_rate", min_rate)
            if not math.isfinite(min_rate):
                raise ValueError(f"min_rate must be finite, got {min_rate!r}")
        self.min_rate = min_rate
        self.site = site
        self.rate: float | None = None
        self.coverage = _check_fraction("coverage", coverage)
        self.level = _check_fraction("level", level)
        self.rows = check_positive_int("rows", rows)
        self.draws = check_positive_int("draws", draws)
        self.seed = int(seed)
        self._gen: torch.Generator | None = None

    def check_model(self, model: Any) -> None:
        for name in ("predict", "target_dist"):
            if not callable(getattr(model, name, None)):
                raise ValueError(f"CalibratedBeta needs a model with predict() and "
                                 f"target_dist() (VJEPA, BJEPA); {type(model).__name__} has "
                                 f"no {name}()")

    def _pairs(self, trainer: Trainer) -> tuple[torch.Tensor, torch.Tensor]:
        if trainer.val is not None and trainer.val[1] is not None:
            ctx, tgt = trainer.val
        elif trainer.batches.loader is None:
            ctx, tgt = trainer.batches.context, trainer.batches.target
        else:
            (ctx, tgt), _ = trainer.last_inputs
        n = ctx.shape[-2]
        if n > self.rows:
            if self._gen is None:
                self._gen = torch.Generator().manual_seed(self.seed)
            idx = torch.randperm(n, generator=self._gen)[: self.rows].to(ctx.device)
            ctx, tgt = ctx.index_select(-2, idx), tgt.index_select(-2, idx)
        return ctx, tgt

    def measure(self, model: Any, context: torch.Tensor, target: torch.Tensor) -> float:
        """Share of draws ``z_T ~ q(z_T | x_T)`` inside the predictive's central ``level``
        intervals (averaged over rows, dimensions and draws)."""
        from bjepa.diagnostics.calibration import as_forecast

        was = model.training
        model.eval()
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed + 7919 * self.updates)
                fc = as_forecast(model.predict(context), num_samples=200)
                draws = model.target_dist(target).sample((self.draws,))
                inside = [((fc.cdf(d) - 0.5).abs() <= self.level / 2).double().mean()
                          for d in draws]
        finally:
            model.train(was)
        return float(torch.stack(inside).mean())

    def signal(self, trainer: Trainer) -> float | None:
        if self.min_rate is not None:
            parts = trainer.step_parts()
            key = f"kl_{self.site}"
            if parts and key not in parts:
                raise ValueError(f"CalibratedBeta(site={self.site!r}): the ELBO has no KL part "
                                 f"{key!r} (parts: {sorted(parts)}); pass site=")
            if parts:
                model = trainer.model
                rate = parts[key] / (getattr(model, self.attr) * model.latent_dim)
                s = self.smoothing
                self.rate = rate if self.rate is None else s * self.rate + (1 - s) * rate
        ctx, tgt = self._pairs(trainer)
        return self.measure(trainer.model, ctx, tgt)

    def error(self, value: float) -> float:
        err = (value - self.coverage) / (1.0 - self.coverage)
        if self.min_rate is not None and self.rate is not None:
            err = min(err, math.log(max(self.rate, 1e-12) / self.min_rate))
        return err

    def on_record(self, trainer: Trainer, record: dict[str, float]) -> None:
        super().on_record(trainer, record)
        if self.rate is not None:
            record["rate"] = float(self.rate)

    def state(self, model: Any) -> dict[str, Any]:
        return {**super().state(model), "rate": self.rate}

    def on_fit_start(self, trainer: Trainer) -> None:
        super().on_fit_start(trainer)
        saved = self._saved_state(trainer)
        if saved is not None and saved.get("rate") is not None:
            self.rate = float(saved["rate"])
