"""Probe metrics: how much of a quantity a frozen representation makes linearly available."""

from __future__ import annotations

import torch

from bjepa._validation import check_tensor

__all__ = ["linear_probe_r2", "r2_score"]


def r2_score(y_true: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
    """Coefficient of determination per output column (NaN where ``y_true`` is constant)."""
    y_true, y_pred = y_true.double(), y_pred.double()
    sse = (y_true - y_pred).pow(2).sum(0)
    sst = (y_true - y_true.mean(0)).pow(2).sum(0)
    scale = y_true.abs().amax(0).clamp_min(1e-30) ** 2 * y_true.shape[0]
    r2 = 1.0 - sse / sst
    return torch.where(sst > 1e-12 * scale, r2, torch.full_like(r2, float("nan")))


def linear_probe_r2(z_train: torch.Tensor, y_train: torch.Tensor, z_test: torch.Tensor,
                    y_test: torch.Tensor, *, per_dim: bool = False) -> float | torch.Tensor:
    """Fit ordinary least squares (with intercept) from ``z_train`` to ``y_train``; return the
    test R² averaged over the columns of ``y`` (or per column with ``per_dim=True``).

    Columns of ``y_test`` with zero variance (e.g. the distractor at σ = 0) give NaN.

    Example::

        r2 = linear_probe_r2(model.encode(train.obs), train.signal, model.encode(test.obs),
                             test.signal)
    """
    for name, v in [("z_train", z_train), ("y_train", y_train), ("z_test", z_test),
                    ("y_test", y_test)]:
        check_tensor(name, v, ndim=2)
    if z_train.shape[0] != y_train.shape[0]:
        raise ValueError(f"z_train and y_train need the same rows: {z_train.shape[0]} vs "
                         f"{y_train.shape[0]}")
    if z_test.shape[0] != y_test.shape[0]:
        raise ValueError(f"z_test and y_test need the same rows: {z_test.shape[0]} vs "
                         f"{y_test.shape[0]}")
    if z_train.shape[1] != z_test.shape[1]:
        raise ValueError(f"z_train and z_test need the same columns: {z_train.shape[1]} vs "
                         f"{z_test.shape[1]}")
    if y_train.shape[1] != y_test.shape[1]:
        raise ValueError(f"y_train and y_test need the same columns: {y_train.shape[1]} vs "
                         f"{y_test.shape[1]}")
    if z_train.shape[0] <= z_train.shape[1]:
        raise ValueError(f"z_train needs more rows than columns for a linear probe, got shape "
                         f"{tuple(z_train.shape)}")
    dev = z_train.device

    def design(z: torch.Tensor) -> torch.Tensor:
        z = z.double().to(dev)
        return torch.cat([z, torch.ones(z.shape[0], 1, dtype=z.dtype, device=dev)], dim=1)

    xtr = design(z_train)
    # tiny ridge for numerical safety with collapsed (rank-deficient) representations
    gram = xtr.T @ xtr
    gram = gram + 1e-9 * torch.trace(gram) / gram.shape[0] * torch.eye(gram.shape[0],
                                                                          dtype=gram.dtype,
                                                                          device=dev)
    coef = torch.linalg.solve(gram, xtr.T @ y_train.double().to(dev))
    r2 = r2_score(y_test.to(dev), design(z_test) @ coef)
    return r2.float().cpu() if per_dim else float(r2.nanmean()) if not r2.isnan().all() \
        else float("nan")
