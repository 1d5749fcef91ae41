"""Probe metrics: how much of a quantity a frozen representation makes linearly available, and
how much two representations share (canonical correlations, predictive information)."""

from __future__ import annotations

import torch

from bjepa._validation import check_tensor

__all__ = [
    "LogisticProbe",
    "canonical_directions",
    "linear_probe_r2",
    "logistic_probe",
    "logistic_probe_accuracy",
    "predictive_information",
    "r2_score",
]


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


def canonical_directions(a: torch.Tensor, b: torch.Tensor, k: int,
                         ridge: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` leading canonical directions of ``a`` (paired rows with ``b``).

    Returns ``(W, rho)``: ``W`` of shape ``(k, a.shape[1])`` with ``a @ W.T`` white and
    maximally correlated with ``b``, and the canonical correlations ``rho`` (descending).
    In a linear-Gaussian world these directions span the optimal predictive bottleneck
    (Creutzig, Globerson & Tishby 2009).
    """
    a = a.double() - a.double().mean(0)
    b = b.double() - b.double().mean(0)
    n = a.shape[0]

    def inv_sqrt(cov: torch.Tensor) -> torch.Tensor:
        evals, evecs = torch.linalg.eigh(cov)
        floor = ridge * evals.max().clamp_min(1e-30)
        return evecs @ torch.diag(evals.clamp_min(floor).rsqrt()) @ evecs.T

    wa, wb = inv_sqrt(a.T @ a / n), inv_sqrt(b.T @ b / n)
    u, s, _ = torch.linalg.svd(wa @ (a.T @ b / n) @ wb)
    return (u[:, :k].T @ wa).float(), s[:k].float()


def predictive_information(a: torch.Tensor, b: torch.Tensor, *, ridge: float = 1e-6) -> float:
    """Gaussian estimate of the mutual information ``I(a; b)`` in nats between paired rows,
    ``−½ Σ_i log(1 − ρ_i²)`` over the canonical correlations ``ρ_i``.

    Invariant to any invertible affine map of ``a`` or ``b``, so it compares representations of
    different scale — e.g. ``I(z_t; z_{t+1})`` of several training restarts on the same data,
    where a scale-sensitive training objective cannot (:func:`bjepa.inference.fit_restarts`).
    A constant representation scores 0.

    Example::

        pi = predictive_information(model.encode(x[:-1]), model.encode_target(x[1:]))
    """
    check_tensor("a", a, ndim=2)
    check_tensor("b", b, ndim=2)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"a and b need the same rows: {a.shape[0]} vs {b.shape[0]}")
    if a.shape[0] <= a.shape[1] + b.shape[1]:
        raise ValueError(f"predictive_information needs more rows than columns of a and b "
                         f"together, got {a.shape[0]} rows for {a.shape[1]} + {b.shape[1]} "
                         "columns; pass more rows")
    _, rho = canonical_directions(a, b, min(a.shape[1], b.shape[1]), ridge=ridge)
    rho = rho.double().clamp(0.0, 1.0 - 1e-12)
    return max(float(-0.5 * torch.log1p(-rho.pow(2)).sum()), 0.0)


def _check_labels(name: str, y: torch.Tensor, rows: int) -> None:
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.is_floating_point() \
            or y.dtype == torch.bool:
        raise ValueError(f"{name} must be a 1-d integer tensor of class labels, got "
                         f"{getattr(y, 'dtype', type(y).__name__)} of shape "
                         f"{tuple(getattr(y, 'shape', ()))}")
    if y.shape[0] != rows:
        raise ValueError(f"{name} needs one label per row of z: {y.shape[0]} vs {rows}")
    if y.numel() and int(y.min()) < 0:
        raise ValueError(f"{name} must hold class labels >= 0")


class LogisticProbe:
    """A multinomial logistic-regression read-out fitted by :func:`logistic_probe`: features
    are standardised with the training statistics, then ``softmax(W z + b)``."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor) -> None:
        self.mean, self.std, self.weight, self.bias = mean, std, weight, bias

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        check_tensor("z", z, ndim=2, last_dim=self.weight.shape[1])
        z = (z.double().to(self.mean.device) - self.mean) / self.std
        return z @ self.weight.T + self.bias

    def predict(self, z: torch.Tensor) -> torch.Tensor:
        """The most probable class of each row."""
        return self.logits(z).argmax(-1).cpu()

    def accuracy(self, z: torch.Tensor, y: torch.Tensor) -> float:
        """Fraction of rows whose predicted class is ``y``."""
        _check_labels("y", y, z.shape[0])
        return float((self.predict(z) == y.cpu()).double().mean())


def logistic_probe(z_train: torch.Tensor, y_train: torch.Tensor, *, num_classes: int | None = None,
                   l2: float = 1e-3, max_iter: int = 100) -> LogisticProbe:
    """Fit a multinomial logistic regression from ``z_train`` ``(N, D)`` to integer labels
    ``y_train`` ``(N,)`` by L-BFGS on the mean cross-entropy plus ``l2 · ||W||²`` (features
    standardised with the training statistics, intercept unpenalised).

    Example::

        probe = logistic_probe(model.encode(train.obs), train.next_label)
        probe.accuracy(model.encode(test.obs), test.next_label)
    """
    check_tensor("z_train", z_train, ndim=2)
    _check_labels("y_train", y_train, z_train.shape[0])
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    k = int(num_classes if num_classes is not None else int(y_train.max()) + 1)
    z = z_train.detach().double().cpu()
    y = y_train.detach().long().cpu()
    mean, std = z.mean(0), z.std(0).clamp_min(1e-8)
    x = (z - mean) / std
    weight = torch.zeros(k, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-9)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight.T + bias, y) \
            + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return LogisticProbe(mean, std, weight.detach(), bias.detach())


def logistic_probe_accuracy(z_train: torch.Tensor, y_train: torch.Tensor, z_test: torch.Tensor,
                            y_test: torch.Tensor, *, l2: float = 1e-3) -> float:
    """Test accuracy of a :func:`logistic_probe` fitted on ``(z_train, y_train)``."""
    num_classes = int(max(int(y_train.max()), int(y_test.max()))) + 1
    return logistic_probe(z_train, y_train, num_classes=num_classes, l2=l2).accuracy(z_test,
                                                                                     y_test)
