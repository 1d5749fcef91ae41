"""Does the Bayesian layer help? (docs/bayes.md)

VJEPA (a point-estimated predictor) against BJEPA with a posterior over the predictor's
weights — AutoNormal, low-rank and full multivariate-normal guides, and NUTS on the same
linear predictor (encoders frozen) as the reference — and against a deep ensemble of
independently seeded VJEPAs, where epistemic uncertainty should matter:

- **small data**: training trajectories of ``n_frames`` frames of the Noisy TV world
  (docs/method.md#noisy-tv) at distractor strength ``sigma``;
- **shift**: test contexts the training data never showed — a signal amplitude
  ``amplitude`` × the largest training amplitude (same dynamics: the true conditional is
  unchanged, only the inputs are new), a rotation ``rotation`` times as fast (``A^k``: the
  dynamics changed), a distractor ``shift_sigma`` never seen.

Every predictive is scored for the next latent (against draws of the model's own target
posterior ``q(z_T | x_T)``) and, through a linear probe fitted on the training frames, for the
true next state ``s_{t+1}`` (the common scale on which models with different encoders
compare): NLL, CRPS, coverage of the central 50/80/90/95 % intervals, mean predictive sd.
:func:`run_planning` trains action-conditioned VJEPA and BJEPA on short exploration runs and
compares the episode cost of risk-aware planning with and without the weight posterior
(:class:`~bjepa.planning.PosteriorSamplingPlanner`).

Used by ``bjepa bayes`` and ``examples/bayes.py``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from pyro import poutine
from torch.distributions import (
    Categorical,
    Distribution,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
)

from bjepa._util import torch_threads
from bjepa._validation import (
    check_choice,
    check_nonnegative,
    check_nonnegative_int,
    check_positive,
    check_positive_int,
)
from bjepa.data import noisy_tv
from bjepa.diagnostics import calibrate, fit_linear_probe
from bjepa.experiments.grid import format_rows, grid_points, run_grid, summarise_rows
from bjepa.inference import fit, nuts_posterior
from bjepa.inference.fit import set_seed
from bjepa.runs import RunFolder, append_jsonl

__all__ = [
    "GUIDES",
    "MODELS",
    "PLANNERS",
    "REGIMES",
    "BayesConfig",
    "Split",
    "compare",
    "ensemble_predictive",
    "format_table",
    "make_data",
    "predictive_parts",
    "probe_predictive",
    "run",
    "run_planning",
    "score",
    "summarise",
]

logger = logging.getLogger(__name__)

#: model names: the point predictor, its deep ensemble, BJEPA per weight guide, NUTS reference
MODELS = ["vjepa", "ensemble", "bjepa-normal", "bjepa-lowrank", "bjepa-mvn", "bjepa-nuts"]
#: BJEPA's weight guides by model name
GUIDES = {"bjepa-normal": "normal", "bjepa-lowrank": "lowrank", "bjepa-mvn": "mvn"}
#: test regimes: in distribution, then the three shifts
REGIMES = ["in", "amplitude", "rotation", "distractor"]
#: planners of :func:`run_planning`
PLANNERS = ["oracle", "vjepa", "bjepa-median", "bjepa-posterior"]
#: per-row metrics (``lat_``: the next latent; ``state_``: the probe-mapped next state)
METRICS = ["lat_nll", "lat_crps", "lat_cov90", "lat_cov_err", "lat_sd", "lat_epistemic",
           "state_nll", "state_crps", "state_cov90", "state_cov_err", "state_sd",
           "state_rmse", "train_seconds"]
PLAN_METRICS = ["cost", "cost_vs_oracle", "violation_rate", "success", "train_seconds"]
COLORS = {"vjepa": "C1", "ensemble": "C2", "bjepa-normal": "C0", "bjepa-lowrank": "C4",
          "bjepa-mvn": "C9", "bjepa-nuts": "k", "oracle": "C7", "bjepa-median": "C4",
          "bjepa-posterior": "C0"}


@dataclass
class BayesConfig:
    """Everything that defines a ``bjepa bayes`` run (dumped as ``config.json``)."""

    #: what to run: ``"calibration"`` (the model × n_frames × regime grid), ``"planning"``
    parts: list[str] = field(default_factory=lambda: ["calibration", "planning"])
    models: list[str] = field(default_factory=lambda: list(MODELS))
    n_frames: list[int] = field(default_factory=lambda: [50, 100, 200, 500, 1000, 6000])
    regimes: list[str] = field(default_factory=lambda: list(REGIMES))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    # the world and its shifts
    sigma: float = 2.0
    amplitude: float = 3.0
    rotation: int = 2
    shift_sigma: float = 8.0
    test_frames: int = 500
    # models and training (VJEPA's recommended budget, benchmarks/README.md)
    latent_dim: int = 4
    beta: float = 0.01
    tau: float = 0.99
    gamma: float = 0.0
    steps: int = 600
    lr: float = 3e-3
    batch_size: int = 256
    ensemble_size: int = 5
    weight_draws: int = 50
    guide_init_scale: float = 0.03
    nuts_max_frames: int = 100
    nuts_warmup: int = 100
    nuts_samples: int = 100
    target_draws: int = 4
    # planning with little data (the control task of docs/mpc.md)
    plan_frames: list[int] = field(default_factory=lambda: [50, 200, 4000])
    plan_planners: list[str] = field(default_factory=lambda: list(PLANNERS))
    plan_episodes: int = 16
    plan_steps: int = 600
    plan_draws: int = 8
    plan_samples: int = 16
    plan_horizon: int = 8
    plan_candidates: int = 128
    plan_sigma: float = 4.0
    device: str = "cpu"
    threads: int | None = None
    progress: bool = True

    @classmethod
    def quick(cls, **overrides: Any) -> BayesConfig:
        """A small configuration (two data sizes, one seed, a 3-member ensemble, short NUTS,
        one small planning run) that finishes in under two minutes on 2 CPU cores."""
        base: dict[str, Any] = dict(
            n_frames=[100, 500], seeds=[0], steps=300, ensemble_size=3, weight_draws=30,
            test_frames=600, nuts_warmup=50, nuts_samples=50, nuts_max_frames=100,
            plan_frames=[100], plan_episodes=4, plan_steps=300, plan_horizon=5,
            plan_candidates=48, plan_samples=8, plan_draws=4,
            plan_planners=["oracle", "vjepa", "bjepa-posterior"])
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    def validate(self) -> BayesConfig:
        for name, values, choices in [("part", self.parts, ["calibration", "planning"]),
                                      ("model", self.models, MODELS),
                                      ("regime", self.regimes, REGIMES),
                                      ("planner", self.plan_planners, PLANNERS)]:
            for v in values:
                check_choice(name, v, choices)
        if not self.parts:
            raise ValueError("parts must name calibration, planning or both")
        if not self.models or not self.regimes or not self.seeds or not self.n_frames:
            raise ValueError("models, regimes, seeds and n_frames must each list at least one "
                             "value")
        if "planning" in self.parts and not (self.plan_frames and self.plan_planners):
            raise ValueError("planning needs plan_frames and plan_planners")
        if "bjepa-nuts" in self.models and "bjepa-normal" not in self.models:
            raise ValueError("bjepa-nuts samples the predictor of bjepa-normal's encoders: add "
                             "bjepa-normal to models")
        for s in self.seeds:
            check_nonnegative_int("seed", s)
        for n in [*self.n_frames, *self.plan_frames]:
            check_positive_int("n_frames", n)
            if n < 20:
                raise ValueError(f"n_frames must be >= 20 (a probe needs more rows than "
                                 f"latent dimensions), got {n}")
        for name in ["test_frames", "latent_dim", "steps", "batch_size", "ensemble_size",
                     "weight_draws", "nuts_warmup", "nuts_samples", "target_draws",
                     "plan_episodes", "plan_steps", "plan_draws", "plan_samples",
                     "plan_horizon", "plan_candidates", "rotation"]:
            check_positive_int(name, getattr(self, name))
        check_nonnegative_int("nuts_max_frames", self.nuts_max_frames)
        for name in ["amplitude", "lr", "guide_init_scale"]:
            check_positive(name, getattr(self, name))
        for name in ["sigma", "shift_sigma", "beta", "gamma", "plan_sigma"]:
            check_nonnegative(name, getattr(self, name))
        if self.plan_samples % self.plan_draws:
            raise ValueError(f"plan_samples ({self.plan_samples}) must be a multiple of "
                             f"plan_draws ({self.plan_draws})")
        if self.threads is not None:
            check_positive_int("threads", self.threads)
        return self


# ----------------------------------------------------------------------------------- data
@dataclass
class Split:
    """Pairs of one regime: standardised context/target frames and the true next state."""

    context: torch.Tensor
    target: torch.Tensor
    state: torch.Tensor

    def __len__(self) -> int:
        return self.context.shape[0]


def _pairs(x: np.ndarray, s: np.ndarray, mean: np.ndarray, std: np.ndarray,
           length: int) -> Split:
    """Pairs within consecutive trajectories of ``length`` frames (none across their joins)."""
    f = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    xs = (x - mean) / std
    idx = np.array([t for t in range(len(x) - 1) if (t + 1) % length])
    return Split(f(xs[idx]), f(xs[idx + 1]), f(s[idx + 1]))


def make_data(cfg: BayesConfig, n_frames: int, seed: int) -> tuple[Split, dict[str, Split]]:
    """The training pairs of one ``n_frames``-frame trajectory and the test pairs of every
    regime (one system per seed, standardised with the training statistics).

    Test sets hold about ``test_frames`` frames in trajectories as long as the training one
    (at most ``test_frames``), each from a fresh start, so that ``"in"`` covers the training
    range; ``"amplitude"`` adds ``A^t v`` to the signal (the exact trajectory from
    ``s_0 + v``) with ``‖v‖ = amplitude ×`` the largest training ``‖s_t‖``.
    """
    rng = np.random.default_rng(seed)
    params = noisy_tv.make_params(cfg.sigma, rng=rng)
    with np.errstate(over="ignore", invalid="ignore"):
        x, s, _ = noisy_tv.simulate(params, n_frames, rng)
    mean, std = x.mean(0), x.std(0) + 1e-8
    train = _pairs(x, s, mean, std, n_frames)
    length = min(n_frames, cfg.test_frames)
    reps = math.ceil(cfg.test_frames / length)
    tests = {}
    for k, regime in enumerate(REGIMES):
        if regime not in cfg.regimes:
            continue
        r = np.random.default_rng([seed, 1 + k])  # the same test set whatever else runs
        p = params
        if regime == "rotation":
            p = dataclasses.replace(params, A=np.linalg.matrix_power(params.A, cfg.rotation))
        elif regime == "distractor":
            p = dataclasses.replace(params, sigma=cfg.shift_sigma)
        xs, ss = [], []
        for _ in range(reps):
            xr, sr, _ = noisy_tv.simulate(p, length, r)
            if regime == "amplitude":
                v = r.standard_normal(sr.shape[1])
                v *= cfg.amplitude * np.linalg.norm(s, axis=1).max() / np.linalg.norm(v)
                drift = np.stack([np.linalg.matrix_power(p.A, t) @ v for t in range(length)])
                sr, xr = sr + drift, xr + drift @ p.C.T
            xs.append(xr)
            ss.append(sr)
        tests[regime] = _pairs(np.concatenate(xs), np.concatenate(ss), mean, std, length)
    return train, tests


# ------------------------------------------------------------------------------- models
def _build(cfg: BayesConfig, name: str) -> Any:
    from bjepa.models import BJEPA, VJEPA

    if name in GUIDES:
        return BJEPA(20, cfg.latent_dim, beta=cfg.beta, tau=cfg.tau, gamma=cfg.gamma,
                     weight_prior="normal", weight_guide=GUIDES[name],
                     guide_init_scale=cfg.guide_init_scale)
    return VJEPA(20, cfg.latent_dim, beta=cfg.beta, tau=cfg.tau)


def _train(cfg: BayesConfig, name: str, train: Split, seed: int) -> tuple[Any, float]:
    set_seed(seed)
    model = _build(cfg, name)
    batch = cfg.batch_size if len(train) > cfg.batch_size else None
    start = time.process_time()
    fit(model, train.context, train.target, steps=cfg.steps, lr=cfg.lr, batch_size=batch,
        seed=seed, device=cfg.device, progress=False, log_every=max(cfg.steps // 20, 1))
    return model.cpu().eval(), time.process_time() - start


def _train_members(cfg: BayesConfig, train: Split, seeds: list[int]) -> tuple[list[Any],
                                                                              float]:
    """Independently seeded VJEPAs on the same data, trained as one batched program (each
    ends where it would end trained alone, :mod:`bjepa.inference.replicas`)."""
    if len(seeds) == 1:
        model, seconds = _train(cfg, "vjepa", train, seeds[0])
        return [model], seconds
    models = []
    for s in seeds:
        set_seed(s)
        models.append(_build(cfg, "vjepa"))
    batch = cfg.batch_size if len(train) > cfg.batch_size else None
    start = time.process_time()
    fit(models, [train.context] * len(seeds), [train.target] * len(seeds), steps=cfg.steps,
        lr=cfg.lr, batch_size=batch, seed=seeds, device=cfg.device, progress=False,
        log_every=max(cfg.steps // 20, 1))
    return [m.cpu().eval() for m in models], time.process_time() - start


def _gaussian_parts(d: Distribution) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(weights (K,), loc (N, K, D), scale (N, K, D))`` of a diagonal Gaussian or a
    mixture of diagonal Gaussians with shared weights."""
    if isinstance(d, Independent) and isinstance(d.base_dist, Normal):
        return (d.mean.new_ones(1), d.base_dist.loc[:, None], d.base_dist.scale[:, None])
    if isinstance(d, MixtureSameFamily):
        comp = d.component_distribution
        if isinstance(comp, Independent) and isinstance(comp.base_dist, Normal):
            w = d.mixture_distribution.probs
            return w.reshape(-1, w.shape[-1])[0], comp.base_dist.loc, comp.base_dist.scale
    raise TypeError(f"expected a diagonal Gaussian or a mixture of them, got "
                    f"{type(d).__name__}")


def predictive_parts(model: Any, context: torch.Tensor, *, draws: dict | None = None,
                     num_samples: int = 100) -> tuple[torch.Tensor, torch.Tensor,
                                                      torch.Tensor]:
    """``(weights (K,), loc (N, K, D), scale (N, K, D))`` of a model's predictive over the
    next latent: one component for VJEPA (or BJEPA without a weight prior), ``num_samples``
    weight-posterior draws for BJEPA, or the given weight ``draws`` (e.g. NUTS samples)."""
    with torch.no_grad():
        if draws is None:
            kw = {"num_samples": num_samples} if getattr(model, "weight_guide", None) else {}
            return _gaussian_parts(model.predict(context, **kw))
        n = next(iter(draws.values())).shape[0]
        locs, scales = [], []
        for s in range(n):
            with poutine.block(), poutine.condition(data={k: v[s] for k, v in draws.items()}):
                d = model._conditioned_predictive(context)
            locs.append(d.base_dist.loc)
            scales.append(d.base_dist.scale)
        return context.new_full((n,), 1.0 / n), torch.stack(locs, 1), torch.stack(scales, 1)


def plugin_parts(model: Any, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                            torch.Tensor]:
    """The plug-in predictive of a BJEPA: its predictor at the weight posterior's median."""
    median = {k: v[None] for k, v in model.weight_guide.median().items()
              if k in model.weight_site_names}
    return predictive_parts(model, context, draws=median)


def _mixture(weights: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> Distribution:
    """Equal- or given-weight mixture of diagonal Gaussians, batch ``(N,)``, event ``(D,)``."""
    mix = Categorical(probs=weights.expand(loc.shape[0], -1))
    return MixtureSameFamily(mix, Independent(Normal(loc, scale), 1))


def ensemble_predictive(members: Sequence[Any], context: torch.Tensor,
                        train_context: torch.Tensor) -> tuple[Distribution, list[Any]]:
    """The deep ensemble's predictive over the next latent of member 0: the equal-weight
    mixture of the members' predictives, each carried into member 0's latent space by the
    affine map ``z_0 ≈ z_k M_k + c_k`` fitted (least squares) on the training contexts'
    latents (``M_0 = I``: JEPA latents are identified only up to such a map).

    Returns ``(mixture of full-covariance Gaussians, [(M_k, c_k), ...])``.
    """
    with torch.no_grad():
        z0 = members[0].encode(train_context).double()
        locs, covs, maps = [], [], []
        for m in members:
            d = m.predict(context)
            zk = m.encode(train_context).double()
            design = torch.cat([zk, torch.ones_like(zk[:, :1])], 1)
            sol = torch.linalg.lstsq(design, z0).solution
            M, c = sol[:-1], sol[-1]
            loc = d.base_dist.loc.double() @ M + c
            var = d.base_dist.scale.double().pow(2)
            cov = M.T[None] @ (var[..., None] * M[None])  # Mᵀ diag(s²) M per row
            cov = cov + 1e-9 * torch.eye(M.shape[1], dtype=cov.dtype)
            locs.append(loc)
            covs.append(cov)
            maps.append((M, c))
        loc, cov = torch.stack(locs, 1), torch.stack(covs, 1)
        k = len(members)
        mix = Categorical(probs=loc.new_full((loc.shape[0], k), 1.0 / k))
        return MixtureSameFamily(mix, MultivariateNormal(loc, covariance_matrix=cov)), maps


def probe_predictive(parts: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                           tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]
                     ) -> Distribution:
    """The predictive of the true next state: each latent component ``N(m, diag s²)`` pushed
    through its model's linear probe ``y = z B + b + ε``, ``ε ~ N(0, diag r²)``, to
    ``N(m B + b, Bᵀ diag(s²) B + diag r²)``; ``parts`` holds ``(weights (K,), loc (N, K, D),
    scale (N, K, D), (B, b, r))`` per model (several for an ensemble, weighted equally)."""
    locs, covs, ws = [], [], []
    for w, loc, scale, (B, b, r) in parts:
        B, b, r = B.double(), b.double(), r.double()
        locs.append(loc.double() @ B + b)
        var = scale.double().pow(2)
        covs.append(B.T @ (var[..., None] * B) + torch.diag(r.pow(2) + 1e-12))
        ws.append(w.double() / len(parts))
    loc, cov, w = torch.cat(locs, 1), torch.cat(covs, 1), torch.cat(ws)
    mix = Categorical(probs=w.expand(loc.shape[0], -1))
    return MixtureSameFamily(mix, MultivariateNormal(loc, covariance_matrix=cov))


def _probe(model: Any, train: Split) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Linear probe from the target encoder's latent of ``x_{t+1}`` to ``s_{t+1}``."""
    with torch.no_grad():
        return fit_linear_probe(model.encode_target(train.target), train.state)


def score(predictive: Distribution, observed: torch.Tensor, prefix: str) -> dict[str, float]:
    """NLL, CRPS, 90 % coverage, mean absolute coverage error over the 50/80/90/95 %
    intervals and mean predictive sd, as ``<prefix>_nll`` etc.; for the state also RMSE."""
    rep = calibrate(predictive, observed, target=prefix)
    out = {f"{prefix}_nll": rep.nll / rep.dim, f"{prefix}_crps": rep.crps,
           f"{prefix}_cov90": rep.coverage_at(0.9),
           f"{prefix}_cov_err": float(np.mean([abs(c - lv) for c, lv in
                                               zip(rep.coverage, rep.levels, strict=True)])),
           f"{prefix}_sd": float(predictive.variance.sqrt().mean())}
    if prefix == "state":
        out["state_rmse"] = float(np.sqrt(np.mean(np.square(rep.rmse_per_dim))))
    return out


def _epistemic(weights: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> float:
    """Share of the predictive variance due to the spread of the components' means."""
    w = weights.double()[None, :, None]
    mean = (w * loc.double()).sum(1, keepdim=True)
    between = (w * (loc.double() - mean).pow(2)).sum(1)
    within = (w * scale.double().pow(2)).sum(1)
    return float((between / (between + within)).mean())


def _evaluate_seed(cfg: BayesConfig, n_frames: int, seed: int) -> list[dict[str, Any]]:
    """Train every model on one ``n_frames`` trajectory and score it on every regime."""
    train, tests = make_data(cfg, n_frames, seed)
    rows: list[dict[str, Any]] = []
    trained: dict[str, tuple[Any, float]] = {}
    need_members = "ensemble" in cfg.models or "vjepa" in cfg.models
    members: list[Any] = []
    member_seconds = 0.0
    if need_members:
        k = cfg.ensemble_size if "ensemble" in cfg.models else 1
        members, member_seconds = _train_members(cfg, train, [seed * 1000 + j
                                                              for j in range(k)])
        trained["vjepa"] = (members[0], member_seconds / k)
    for name in GUIDES:
        if name in cfg.models:
            trained[name] = _train(cfg, name, train, seed)
    nuts_draws = None
    if "bjepa-nuts" in cfg.models and n_frames <= cfg.nuts_max_frames:
        start = time.process_time()
        base = trained["bjepa-normal"][0]
        with torch.no_grad():
            zc, zt = base.encode(train.context), base.encode_target(train.target)
        nuts_draws, _ = nuts_posterior(base, z_context=zc, z_target=zt,
                                       num_samples=cfg.nuts_samples,
                                       warmup_steps=cfg.nuts_warmup, seed=seed)
        trained["bjepa-nuts"] = (base, time.process_time() - start)
    probes = {name: _probe(m, train) for name, (m, _) in trained.items()}
    member_probes = [_probe(m, train) for m in members]
    for regime, test in tests.items():
        gen_seed = seed * 7919 + REGIMES.index(regime)
        for name in cfg.models:
            if name == "ensemble":
                lat, _ = ensemble_predictive(members, test.context, train.context)
                with torch.no_grad(), torch.random.fork_rng():
                    torch.manual_seed(gen_seed)
                    obs = members[0].target_dist(test.target).sample((cfg.target_draws,))
                parts = [(*predictive_parts(m, test.context), pr)
                         for m, pr in zip(members, member_probes, strict=True)]
                comp = lat.component_distribution  # in member 0's latent space
                epi = _epistemic(lat.mixture_distribution.probs[0], comp.loc,
                                 comp.variance.sqrt())
                seconds = member_seconds
            elif name in trained:
                model, seconds = trained[name]
                with torch.random.fork_rng():
                    torch.manual_seed(gen_seed)
                    wts, loc, sc = predictive_parts(
                        model, test.context, num_samples=cfg.weight_draws,
                        draws=nuts_draws if name == "bjepa-nuts" else None)
                    with torch.no_grad():
                        obs = model.target_dist(test.target).sample((cfg.target_draws,))
                lat = _mixture(wts, loc, sc) if wts.numel() > 1 else Independent(
                    Normal(loc[:, 0], sc[:, 0]), 1)
                parts = [(wts, loc, sc, probes[name])]
                epi = _epistemic(wts, loc, sc)
            else:
                continue  # NUTS above nuts_max_frames
            state = probe_predictive(parts)
            row = {"model": name, "n_frames": n_frames, "regime": regime, "seed": seed,
                   **score(lat, obs, "lat"), "lat_epistemic": epi,
                   **score(state, test.state, "state"),
                   "train_seconds": round(seconds, 2)}
            if name in GUIDES:
                _, _, ps = plugin_parts(trained[name][0], test.context)
                row["plugin_lat_sd"] = float(ps.mean())
            rows.append(row)
    return rows


def run(cfg: BayesConfig, folder: RunFolder | None = None) -> dict[str, list[dict[str, Any]]]:
    """The calibration grid (one row per model × n_frames × regime × seed) and the planning
    runs (one row per planner × plan_frames × seed); with a ``folder``, writes
    ``config.json``, ``results.csv/json``, ``planning.csv/json``, ``summary.json``,
    ``table.md`` and the figures."""
    cfg.validate()
    with torch_threads(cfg.threads):
        return _run(cfg, folder)


def _run(cfg: BayesConfig, folder: RunFolder | None) -> dict[str, list[dict[str, Any]]]:
    if folder is not None:
        folder.write_json("config.json", asdict(cfg))
        for name in ("results.jsonl", "planning.jsonl"):
            folder.file(name).unlink(missing_ok=True)
    points = grid_points(["all"], cfg.n_frames, cfg.seeds)

    def run_one(p: Any) -> dict[str, Any]:
        unit = _evaluate_seed(cfg, p.setting, p.seed)
        _append_rows(folder, "results.jsonl", unit)
        return {"rows": unit}

    def describe(r: dict[str, Any]) -> str:
        sel = {x["model"]: x["state_cov90"] for x in r["rows"] if x["regime"] == "in"}
        return " ".join(f"{k}={v:.2f}" for k, v in sel.items())

    rows: list[dict[str, Any]] = []
    if "calibration" in cfg.parts:
        grid = run_grid(points, run_one=run_one, describe=describe, progress=cfg.progress,
                        desc="bayes: n_frames × seeds")
        rows = [r for g in grid for r in g["rows"]]
    plan_rows = run_planning(cfg, folder) if "planning" in cfg.parts else []
    if folder is not None:
        if rows:
            folder.write_rows("results", rows)
        if plan_rows:
            folder.write_rows("planning", plan_rows)
        summary = summarise(rows) if rows else []
        folder.write_json("summary.json", {"calibration": summary,
                                           "planning": summarise_planning(plan_rows),
                                           "compare": compare(rows)})
        folder.file("table.md").write_text(format_markdown(summary, plan_rows, rows) + "\n",
                                           encoding="utf-8")
        if rows:
            plot_calibration_vs_n(summary, folder.file("calibration_vs_n.png"))
            plot_sd_shift(summary, folder.file("sd_in_vs_out.png"))
        if plan_rows:
            plot_planning(plan_rows, folder.file("planning.png"))
    return {"calibration": rows, "planning": plan_rows}


def _append_rows(folder: RunFolder | None, name: str, rows: list[dict[str, Any]]) -> None:
    """Append ``rows`` to the JSON-lines file ``name`` of the run folder as soon as a unit
    ends, so that an interrupted run keeps what it finished."""
    append_jsonl(None if folder is None else folder.file(name), rows)


# ------------------------------------------------------------------------------ planning
def run_planning(cfg: BayesConfig, folder: RunFolder | None = None) -> list[dict[str, Any]]:
    """Train ActionVJEPA and ActionBJEPA (normal weight prior, AutoNormal) on exploration runs
    of ``plan_frames`` steps of the control task of docs/mpc.md and run each planner on the
    same episodes; one row per planner × plan_frames × seed.

    Planners: ``oracle`` (LQR on the true state, the reference), ``vjepa`` (CVaR of sampled
    rollouts under VJEPA), ``bjepa-median`` (the same under BJEPA's posterior-median
    predictor), ``bjepa-posterior`` (rollouts spread over ``plan_draws`` weight draws).
    """
    from bjepa.data import control
    from bjepa.experiments import mpc
    from bjepa.models.action import ActionBJEPA, ActionVJEPA
    from bjepa.planning import LQRController, PosteriorSamplingPlanner, SamplingPlanner

    rows: list[dict[str, Any]] = []
    for n in cfg.plan_frames:
        for seed in cfg.seeds:
            mcfg = mpc.MPCConfig(sigma=cfg.plan_sigma, explore_steps=n, steps=cfg.plan_steps,
                                 episodes=cfg.plan_episodes, horizon=cfg.plan_horizon,
                                 candidates=cfg.plan_candidates,
                                 elites=max(cfg.plan_candidates // 8, 2),
                                 samples=cfg.plan_samples, device=cfg.device).validate()
            params = mpc.make_params(mcfg, seed)
            data = control.explore(params, n, seed)
            x, u, y = data.pairs
            kw = dict(action_dim=mcfg.state_dim, head=mcfg.head, beta=mcfg.beta,
                      tau=mcfg.tau, target_scale_init=mcfg.target_scale_init)
            models: dict[str, tuple[Any, float]] = {}
            for kind in ("vjepa", "bjepa"):
                if kind == "vjepa" and "vjepa" not in cfg.plan_planners:
                    continue
                if kind == "bjepa" and not {"bjepa-median", "bjepa-posterior"} & set(
                        cfg.plan_planners):
                    continue
                set_seed(seed)
                model = ActionVJEPA(mcfg.obs_dim, mcfg.state_dim, **kw) if kind == "vjepa" \
                    else ActionBJEPA(mcfg.obs_dim, mcfg.state_dim, weight_prior="normal",
                                     gamma=cfg.gamma, guide_init_scale=cfg.guide_init_scale,
                                     **kw)
                start = time.process_time()
                fit(model, model.pack(x, u), y, steps=mcfg.steps, lr=mcfg.lr, seed=seed,
                    device=cfg.device, progress=False, log_every=max(mcfg.steps // 20, 1))
                models[kind] = (model.eval(), time.process_time() - start)
            cem = dict(horizon=mcfg.horizon, num_candidates=mcfg.candidates,
                       num_elites=mcfg.elites, iterations=mcfg.iterations,
                       cold_iterations=mcfg.cold_iterations, init_std=mcfg.init_std,
                       warm_std=mcfg.warm_std, device=cfg.device, seed=seed,
                       num_samples=cfg.plan_samples, risk="cvar", alpha=mcfg.alpha,
                       expected_violations=mcfg.expected_violations)
            oracle_cost = None
            for name in cfg.plan_planners:
                if name == "oracle":
                    f = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
                    policy = LQRController(f(params.A), f(params.B), f(params.Q),
                                           f(params.R), mpc._oracle_setpoint(params))
                    seconds = 0.0
                else:
                    model, seconds = models["vjepa" if name == "vjepa" else "bjepa"]
                    task = mpc.make_task(model, data, cfg.device)
                    torch.manual_seed(seed)
                    policy = PosteriorSamplingPlanner(model, task, num_draws=cfg.plan_draws,
                                                      **cem) if name == "bjepa-posterior" \
                        else SamplingPlanner(model, task, **cem)
                out = mpc.run_episodes(policy, params, data, cfg.plan_episodes, 10_000 + seed)
                row = {"planner": name, "plan_frames": n, "seed": seed,
                       "episodes": cfg.plan_episodes,
                       **{k: float(np.mean(out[k])) for k in ("cost", "violation_rate",
                                                              "success")},
                       "train_seconds": round(seconds, 2),
                       "plan_seconds": round(out["seconds"], 2)}
                if name == "oracle":
                    oracle_cost = row["cost"]
                rows.append(row)
            unit = [r for r in rows if r["plan_frames"] == n and r["seed"] == seed]
            for r in unit:
                r["cost_vs_oracle"] = r["cost"] / oracle_cost if oracle_cost else math.nan
            _append_rows(folder, "planning.jsonl", unit)
            logger.info("planning n=%d seed=%d: %s", n, seed, {
                r["planner"]: round(r["cost"], 3) for r in rows
                if r["plan_frames"] == n and r["seed"] == seed})
    return rows


# ----------------------------------------------------------------------------- summaries
def _order(key: tuple[Any, ...]) -> tuple[Any, ...]:
    model, n, regime = key
    return (REGIMES.index(regime), MODELS.index(model), n)


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean, sd (over seeds), min and max of every metric per model × n_frames × regime."""
    return summarise_rows(rows, ["model", "n_frames", "regime"],
                          [*METRICS, "plugin_lat_sd"], order=_order)


def summarise_planning(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sd over seeds per planner × plan_frames."""
    if not rows:
        return []
    return summarise_rows(rows, ["planner", "plan_frames"], PLAN_METRICS,
                          order=lambda k: (k[1], PLANNERS.index(k[0])))


def format_table(summary: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of :func:`summarise`'s rows (state scores, mean ± sd over seeds)."""
    return format_rows(summary, [("regime", "regime", "<10"), ("model", "model", "<13"),
                                 ("n_frames", "frames", ">6d")],
                       [("state_nll", "NLL s", ".3f"), ("state_cov90", "cov90 s", ".3f"),
                        ("state_cov_err", "|cov err| s", ".3f"),
                        ("lat_cov_err", "|cov err| z", ".3f"), ("state_sd", "sd s", ".3f")])


def compare(rows: Sequence[dict[str, Any]], against: str = "vjepa") -> list[dict[str, Any]]:
    """Every other model against ``against`` per n_frames × regime, on state NLL, state and
    latent coverage error: the margin (difference of the seed means, positive = the model is
    better) and the seed spread (the larger of the two seed sds); ``better`` when the margin
    exceeds the spread (never with a single seed: there is no spread). Paired differences per
    seed are given too (``paired_mean``, ``paired_sd``)."""
    out = []
    by = {(r["model"], r["n_frames"], r["regime"], r["seed"]): r for r in rows}
    keys = sorted({(r["n_frames"], r["regime"]) for r in rows},
                  key=lambda k: (REGIMES.index(k[1]), k[0]))
    for model in [m for m in MODELS if m != against and any(r["model"] == m for r in rows)]:
        for n, regime in keys:
            seeds = sorted(s for (m, nn, rg, s) in by if m == model and nn == n and rg == regime
                           and (against, n, regime, s) in by)
            if not seeds:
                continue
            for metric in ("state_nll", "state_cov_err", "lat_cov_err"):
                a = np.array([by[model, n, regime, s][metric] for s in seeds])
                b = np.array([by[against, n, regime, s][metric] for s in seeds])
                sd = lambda v: float(v.std(ddof=1)) if len(v) > 1 else 0.0  # noqa: E731
                margin = float(b.mean() - a.mean())
                spread = max(sd(a), sd(b))
                out.append({"model": model, "against": against, "n_frames": n,
                            "regime": regime, "metric": metric, "seeds": len(seeds),
                            "model_mean": float(a.mean()), "against_mean": float(b.mean()),
                            "margin": margin, "spread": spread,
                            "paired_mean": float((b - a).mean()), "paired_sd": sd(b - a),
                            "better": len(seeds) > 1 and bool(margin > spread),
                            "worse": len(seeds) > 1 and bool(-margin > spread)})
    return out


def format_markdown(summary: Sequence[dict[str, Any]], plan_rows: Sequence[dict[str, Any]],
                    rows: Sequence[dict[str, Any]]) -> str:
    """Markdown tables: per regime, state NLL and 90 % coverage (model × n_frames), latent
    coverage error, the predictive sd relative to in distribution, the comparisons that
    clear the seed spread, and the planning costs."""
    out: list[str] = []
    models = [m for m in MODELS if any(s["model"] == m for s in summary)]
    sizes = sorted({s["n_frames"] for s in summary})
    by = {(s["model"], s["n_frames"], s["regime"]): s for s in summary}

    def cell(key: tuple, metric: str, fmt: str) -> str:
        s = by.get(key)
        if s is None or f"{metric}_mean" not in s or not math.isfinite(s[f"{metric}_mean"]):
            return "—"
        return f"{s[f'{metric}_mean']:{fmt}} ± {s[f'{metric}_sd']:{fmt}}"

    head = "| model | " + " | ".join(f"{n}" for n in sizes) + " |"
    rule = "|---|" + "---|" * len(sizes)
    for metric, title, fmt in [("state_nll", "NLL of the true next state (nats per dim)",
                                ".3f"),
                               ("state_cov90", "90 % interval coverage of the true next state",
                                ".3f"),
                               ("lat_cov_err", "coverage error of the next latent (mean "
                                "|coverage − nominal| over 50/80/90/95 %)", ".3f")]:
        for regime in [r for r in REGIMES if any(s["regime"] == r for s in summary)]:
            out += [f"**{title} — {regime}** (columns: training frames)", "", head, rule]
            out += [f"| {m} | " + " | ".join(cell((m, n, regime), metric, fmt)
                                             for n in sizes) + " |" for m in models]
            out.append("")
    out += ["**predictive sd of the true next state, out of / in distribution** "
            "(ratio of the seed means; in brackets the realised RMSE ratio)", "",
            "| model | regime | " + " | ".join(f"{n}" for n in sizes) + " |",
            "|---|---|" + "---|" * len(sizes)]
    for regime in [r for r in REGIMES[1:] if any(s["regime"] == r for s in summary)]:
        for m in models:
            cells = []
            for n in sizes:
                a, b = by.get((m, n, regime)), by.get((m, n, "in"))
                if a is None or b is None:
                    cells.append("—")
                    continue
                cells.append(f"{a['state_sd_mean'] / b['state_sd_mean']:.2f} "
                             f"({a['state_rmse_mean'] / b['state_rmse_mean']:.2f})")
            out.append(f"| {m} | {regime} | " + " | ".join(cells) + " |")
    out.append("")
    wins = [c for c in compare(rows) if c["better"] or c["worse"]]
    out += ["**against VJEPA, beyond the seed spread** (margin = VJEPA mean − model mean; "
            "spread = larger seed sd)", "",
            "| model | frames | regime | metric | model | VJEPA | margin | spread | verdict |",
            "|---|---|---|---|---|---|---|---|---|"]
    out += [f"| {c['model']} | {c['n_frames']} | {c['regime']} | {c['metric']} | "
            f"{c['model_mean']:.3f} | {c['against_mean']:.3f} | {c['margin']:+.3f} | "
            f"{c['spread']:.3f} | {'better' if c['better'] else 'worse'} |" for c in wins]
    out.append("")
    if plan_rows:
        out += ["**planning with little data** (episode cost, mean ± sd over seeds)", "",
                "| planner | exploration frames | n | cost | cost / oracle | unsafe steps | "
                "safe success |", "|---|---|---|---|---|---|---|"]
        for s in summarise_planning(plan_rows):
            out.append(f"| {s['planner']} | {s['plan_frames']} | {s['n']} | "
                       f"{s['cost_mean']:.3f} ± {s['cost_sd']:.3f} | "
                       f"{s['cost_vs_oracle_mean']:.3f} ± {s['cost_vs_oracle_sd']:.3f} | "
                       f"{s['violation_rate_mean']:.3f} ± {s['violation_rate_sd']:.3f} | "
                       f"{s['success_mean']:.2f} ± {s['success_sd']:.2f} |")
    return "\n".join(out)


# ------------------------------------------------------------------------------- figures
def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_calibration_vs_n(summary: Sequence[dict[str, Any]], path: Any) -> None:
    """90 % coverage and NLL of the true next state against the training-set size, one
    column per regime (mean ± sd over seeds)."""
    plt = _plt()
    regimes = [r for r in REGIMES if any(s["regime"] == r for s in summary)]
    fig, axes = plt.subplots(2, len(regimes), figsize=(4.2 * len(regimes), 7.2),
                             squeeze=False, constrained_layout=True)
    for j, regime in enumerate(regimes):
        for model in MODELS:
            sel = sorted((s for s in summary if s["model"] == model and s["regime"] == regime),
                         key=lambda s: s["n_frames"])
            if not sel:
                continue
            x = [s["n_frames"] for s in sel]
            for i, metric in enumerate(("state_cov90", "state_nll")):
                m = np.array([s[f"{metric}_mean"] for s in sel])
                sd = np.array([s[f"{metric}_sd"] for s in sel])
                ax = axes[i, j]
                ax.errorbar(x, m, yerr=sd, marker="o", ms=3, capsize=2, lw=1.2,
                            color=COLORS[model], label=model,
                            ls="--" if model == "bjepa-nuts" else "-")
        axes[0, j].axhline(0.9, color="k", lw=0.8, ls=":")
        axes[0, j].set(title=f"{regime}", xscale="log", ylabel="90 % coverage of s_{t+1}",
                       xlabel="training frames")
        axes[1, j].set(xscale="log", ylabel="NLL of s_{t+1} (nats / dim)",
                       xlabel="training frames")
        axes[1, j].set_yscale("symlog", linthresh=1.0)
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    n = max(s["n"] for s in summary)
    fig.suptitle("Predictive of the probe-mapped true next state against training-set size "
                 f"(mean ± sd over {n} seed{'s' if n > 1 else ''}; NLL axis symmetric-log)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sd_shift(summary: Sequence[dict[str, Any]], path: Any) -> None:
    """Predictive sd of the true next state out of distribution over in distribution,
    against training-set size, one panel per shift; the dotted line of each model's colour is
    the realised RMSE ratio (what a calibrated sd would follow)."""
    plt = _plt()
    regimes = [r for r in REGIMES[1:] if any(s["regime"] == r for s in summary)]
    if not regimes:
        return
    by = {(s["model"], s["n_frames"], s["regime"]): s for s in summary}
    fig, axes = plt.subplots(1, len(regimes), figsize=(4.6 * len(regimes), 4.0),
                             squeeze=False, constrained_layout=True)
    for ax, regime in zip(axes[0], regimes, strict=True):
        for model in MODELS:
            xs = sorted({n for (m, n, r) in by if m == model and r == regime
                         and (m, n, "in") in by})
            if not xs:
                continue
            sd = [by[model, n, regime]["state_sd_mean"] / by[model, n, "in"]["state_sd_mean"]
                  for n in xs]
            err = [by[model, n, regime]["state_rmse_mean"]
                   / by[model, n, "in"]["state_rmse_mean"] for n in xs]
            ax.plot(xs, sd, "o-", color=COLORS[model], ms=3, label=f"{model}: sd ratio")
            ax.plot(xs, err, ":", color=COLORS[model], lw=1)
        ax.plot([], [], "k:", label="realised RMSE ratio")
        ax.axhline(1.0, color="k", lw=0.6)
        ax.set(title=f"{regime} vs in distribution", xscale="log", yscale="log",
               xlabel="training frames", ylabel="predictive sd (out) / sd (in)")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Does the predictive widen where the data never were? (true next state)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_planning(rows: Sequence[dict[str, Any]], path: Any) -> None:
    """Episode cost relative to the oracle per planner and exploration length (seeds as
    dots)."""
    plt = _plt()
    summary = summarise_planning(rows)
    sizes = sorted({s["plan_frames"] for s in summary})
    planners = [p for p in PLANNERS if any(s["planner"] == p for s in summary)]
    fig, ax = plt.subplots(figsize=(2.2 + 1.6 * len(sizes) * len(planners) / 2, 4.0),
                           constrained_layout=True)
    width = 0.8 / len(planners)
    for i, p in enumerate(planners):
        for j, n in enumerate(sizes):
            s = next((s for s in summary if s["planner"] == p and s["plan_frames"] == n), None)
            if s is None:
                continue
            x = j + (i - (len(planners) - 1) / 2) * width
            ax.bar(x, s["cost_vs_oracle_mean"], width * 0.9, yerr=s["cost_vs_oracle_sd"],
                   color=COLORS[p], alpha=0.7, capsize=3, label=p if j == 0 else None)
            vals = [r["cost_vs_oracle"] for r in rows if r["planner"] == p
                    and r["plan_frames"] == n]
            ax.scatter(np.full(len(vals), x), vals, s=8, color="k", zorder=3)
    ax.axhline(1.0, color="k", lw=0.8, ls=":")
    ax.set_xticks(range(len(sizes)), [f"{n} exploration frames" for n in sizes])
    ax.set(ylabel="episode cost / oracle cost", title="Latent MPC with little training data")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)
