"""Train several restarts of one model from different initial weights and keep the best by a
label-free score (``fit_restarts``).

Which basin gradient training reaches can depend on the initial weights more than on the
model: on Atari frames behind a loud noise patch (docs/atari.md) one VJEPA start in two or three
finds the game and the others collapse. The training objective cannot pick the good start for
VJEPA — shrinking the latent scale lowers it without bound, so collapsed restarts have the
*lowest* loss — hence each model supplies a score comparable across restarts on the same data,
``model.selection_score(context, target)`` (higher is better): the predictive information
``I(z_C; z_T)`` for VJEPA, BJEPA and JEPA, the ELBO per row for the VAE and AR models. No labels
are involved.

Example::

    from bjepa.inference import fit_restarts
    from bjepa.models import VJEPA

    best = fit_restarts(lambda: VJEPA(obs_dim, 8, encoder="conv"), ctx, tgt, restarts=4,
                        steps=600, batch_size=64, seed=0)
    best.model, best.index, [r["score"] for r in best.runs]
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bjepa._validation import check_nonnegative_int, check_positive_int

__all__ = ["RestartResult", "fit_restarts", "restart_seed"]

logger = logging.getLogger(__name__)


def restart_seed(seed: int, restart: int) -> int:
    """The seed of restart ``restart`` of a run seeded ``seed``: ``seed`` itself for restart 0
    (so one restart is exactly a plain run), otherwise a 31-bit draw from
    ``numpy.random.SeedSequence([seed, restart])`` (independent of neighbouring seeds)."""
    check_nonnegative_int("seed", seed)
    check_nonnegative_int("restart", restart)
    if restart == 0:
        return seed
    return int(np.random.SeedSequence([seed, restart]).generate_state(1)[0] >> 1)


@dataclass
class RestartResult:
    """What :func:`fit_restarts` returns."""

    #: the trained model of the best restart
    model: Any
    #: its training history
    history: Any
    #: which restart won (0-based)
    index: int
    #: one record per restart: ``restart``, ``seed``, ``score``, ``final_loss``, ``seconds``
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def score(self) -> float:
        return float(self.runs[self.index]["score"])


def fit_restarts(
    build: Callable[[], Any],
    context: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    restarts: int = 3,
    seed: int = 0,
    score: Callable[[Any, torch.Tensor, torch.Tensor | None], float] | None = None,
    score_rows: int | None = 8192,
    checkpoint_dir: str | Path | None = None,
    metrics_tags: dict[str, Any] | None = None,
    on_restart: Callable[[dict[str, Any]], None] | None = None,
    **fit_kwargs: Any,
) -> RestartResult:
    """Train ``restarts`` models built by ``build()`` and keep the one with the highest score.

    Restart ``r`` seeds torch, NumPy and Pyro with ``restart_seed(seed, r)`` before ``build()``
    (so its initial weights differ) and trains with the same seed (mini-batches, guide noise);
    restart 0 is exactly ``set_seed(seed); fit(build(), ..., seed=seed)``.

    :param build: a zero-argument callable returning a fresh, untrained model.
    :param context: ``(N, obs_dim)`` context frames; ``target`` as for :func:`fit`.
    :param restarts: number of restarts (``1`` is a plain run).
    :param seed: base seed.
    :param score: ``(model, context, target) -> float``, higher is better; default
        ``model.selection_score`` (see the module docstring). It sees the training data only.
    :param score_rows: score on ``score_rows`` training pairs spread evenly over the data
        (``None``: all of them).
    :param checkpoint_dir: each restart checkpoints under ``checkpoint_dir/restart<r>``.
    :param metrics_tags: forwarded to :func:`fit` with ``restart`` added.
    :param on_restart: called with each restart's record when it finishes (progress, logging).
    :param fit_kwargs: everything else :func:`fit` takes (``steps``, ``lr``, ``batch_size``,
        ``device``, ``elbo``, ``metrics_path``, ...). Lists of models are not supported.
    :returns: a :class:`RestartResult`; the other restarts' models are discarded.
    """
    from bjepa.inference.fit import fit, set_seed

    if not callable(build) or isinstance(build, torch.nn.Module):
        raise TypeError(f"build must be a zero-argument callable returning a model, got "
                        f"{type(build).__name__}; e.g. lambda: VJEPA(obs_dim, 8)")
    check_positive_int("restarts", restarts)
    check_nonnegative_int("seed", seed)
    if score_rows is not None:
        check_positive_int("score_rows", score_rows)
    for key in ("replicas", "replica_batches", "strategy"):
        if key in fit_kwargs:
            raise TypeError(f"fit_restarts trains one model at a time; remove {key!r} from the "
                            "keyword arguments")
    best: RestartResult | None = None
    runs: list[dict[str, Any]] = []
    for r in range(restarts):
        s = restart_seed(seed, r)
        set_seed(s)
        model = build()
        if isinstance(model, list | tuple):
            raise TypeError("build must return one model, not a list")
        start = time.perf_counter()
        history = fit(model, context, target, seed=s,
                      checkpoint_dir=None if checkpoint_dir is None
                      else Path(checkpoint_dir) / f"restart{r}",
                      metrics_tags={**(metrics_tags or {}), "restart": r}, **fit_kwargs)
        seconds = time.perf_counter() - start
        try:
            value = _score(model, context, target, score, score_rows)
        except ValueError as exc:  # e.g. too few rows for the predictive information
            if restarts > 1:
                raise ValueError(f"cannot score restart {r} to choose among restarts: {exc}"
                                 ) from exc
            logger.warning("no selection score for the single run: %s", exc)
            value = -math.inf
        record = {"restart": r, "seed": s, "score": value, "final_loss": history.final_loss,
                  "seconds": round(seconds, 3)}
        runs.append(record)
        logger.info("restart %d/%d (seed %d): score %.4f, final loss %.4f (%.1fs)", r + 1,
                    restarts, s, value, history.final_loss, seconds)
        if on_restart is not None:
            on_restart(record)
        if best is None or (math.isfinite(value) and not value <= best.score):
            best = RestartResult(model, history, r, runs)
        del model
    assert best is not None
    return best


def _score(model: Any, context: torch.Tensor, target: torch.Tensor | None,
           score: Callable[..., float] | None, rows: int | None) -> float:
    dev = next(model.parameters()).device
    n = context.shape[0]
    idx = (torch.arange(n) if rows is None or rows >= n
           else torch.linspace(0, n - 1, rows).round().long())  # spread over the data
    ctx = context[idx.to(context.device)].to(dev)
    tgt = None if target is None else target[idx.to(target.device)].to(dev)
    was = model.training
    model.eval()
    try:
        value = score(model, ctx, tgt) if score is not None else model.selection_score(ctx, tgt)
    finally:
        model.train(was)
    value = float(value)
    return value if not math.isnan(value) else -math.inf
