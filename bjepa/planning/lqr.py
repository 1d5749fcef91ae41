"""Linear-quadratic control: the discrete Riccati equation, LQR gains, stationary covariances
and the LQR oracle that controls the *true* state of a linear system.

For ``s_{t+1} = A s_t + B u_t + w`` and the cost ``Σ (s − s*)ᵀ Q (s − s*) + uᵀ R u``, the
optimal infinite-horizon policy is ``u = u* − K (s − s*)`` with ``K = (R + Bᵀ P B)⁻¹ Bᵀ P A``
and ``P`` the stabilising solution of the discrete algebraic Riccati equation (DARE)::

    P = Q + Aᵀ P A − Aᵀ P B (R + Bᵀ P B)⁻¹ Bᵀ P A.

Example::

    K = lqr_gain(A, B, Q, R)
    oracle = LQRController(A, B, Q, R, setpoint=goal)
    u = oracle.act(state)
"""

from __future__ import annotations

import logging
import math

import torch

from bjepa._validation import check_nonnegative, check_positive_int, check_tensor

__all__ = [
    "LQRController",
    "lqr_gain",
    "risk_aware_setpoint",
    "solve_dare",
    "stationary_covariance",
]

logger = logging.getLogger(__name__)


def _square(name: str, m: torch.Tensor, n: int | None = None) -> torch.Tensor:
    check_tensor(name, m, ndim=2)
    if m.shape[0] != m.shape[1] or (n is not None and m.shape[0] != n):
        want = f"({n}, {n})" if n is not None else "square"
        raise ValueError(f"{name} must be {want}, got shape {tuple(m.shape)}")
    return m.double()


def _system(A: torch.Tensor, B: torch.Tensor, Q: torch.Tensor, R: torch.Tensor):
    A = _square("A", torch.as_tensor(A))
    n = A.shape[0]
    B = torch.as_tensor(B)
    check_tensor("B", B, ndim=2)
    if B.shape[0] != n:
        raise ValueError(f"B must have {n} rows (A is {n}x{n}), got shape {tuple(B.shape)}")
    Q = _square("Q", torch.as_tensor(Q), n)
    R = _square("R", torch.as_tensor(R), B.shape[1])
    return A, B.double(), Q, R


def solve_dare(A: torch.Tensor, B: torch.Tensor, Q: torch.Tensor, R: torch.Tensor, *,
               tol: float = 1e-12, max_iter: int = 100_000) -> torch.Tensor:
    """The stabilising solution ``P`` of the DARE (Riccati value iteration from ``P = Q``).

    :param A: ``(n, n)`` dynamics.
    :param B: ``(n, m)`` input matrix.
    :param Q: ``(n, n)`` state cost, symmetric positive semi-definite.
    :param R: ``(m, m)`` control cost, symmetric positive definite.
    :param tol: stop when the largest change of ``P`` relative to its size is below this.
    :param max_iter: iteration limit.
    :returns: ``P`` ``(n, n)``, float64.
    :raises ValueError: if the iteration does not converge (e.g. ``(A, B)`` not stabilisable).
    """
    A, B, Q, R = _system(A, B, Q, R)
    check_positive_int("max_iter", max_iter)
    P = Q.clone()
    for _ in range(max_iter):
        BtP = B.T @ P
        gain = torch.linalg.solve(R + BtP @ B, BtP @ A)
        nxt = Q + A.T @ P @ (A - B @ gain)
        nxt = 0.5 * (nxt + nxt.T)
        if not bool(torch.isfinite(nxt).all()):
            break
        delta = float((nxt - P).abs().max()) / max(float(nxt.abs().max()), 1e-300)
        P = nxt
        if delta < tol:
            return P
    raise ValueError("the Riccati iteration did not converge: is (A, B) stabilisable and "
                     "R positive definite?")


def lqr_gain(A: torch.Tensor, B: torch.Tensor, Q: torch.Tensor, R: torch.Tensor
             ) -> torch.Tensor:
    """The LQR feedback gain ``K`` ``(m, n)`` (the policy is ``u = −K s``), float64."""
    A, B, Q, R = _system(A, B, Q, R)
    P = solve_dare(A, B, Q, R)
    return torch.linalg.solve(R + B.T @ P @ B, B.T @ P @ A)


def stationary_covariance(F: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """``Σ`` solving the discrete Lyapunov equation ``Σ = F Σ Fᵀ + W`` (``F`` stable).

    Solved exactly as a linear system in ``vec Σ``; meant for small state dimensions.
    """
    F = _square("F", torch.as_tensor(F))
    n = F.shape[0]
    W = _square("W", torch.as_tensor(W), n)
    if float(torch.linalg.eigvals(F).abs().max()) >= 1.0:
        raise ValueError("F must be stable (spectral radius < 1) for a stationary covariance")
    lhs = torch.eye(n * n, dtype=F.dtype) - torch.kron(F, F)
    sigma = torch.linalg.solve(lhs, W.reshape(-1)).reshape(n, n)
    return 0.5 * (sigma + sigma.T)


def _equilibrium_action(A: torch.Tensor, B: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``u*`` with ``s = A s + B u*`` (least squares when ``B`` is not square)."""
    rhs = (s - s @ A.T).unsqueeze(-1)
    return torch.linalg.lstsq(B, rhs).solution.squeeze(-1)


def _normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.erfc(-x / math.sqrt(2.0))


def risk_aware_setpoint(A: torch.Tensor, B: torch.Tensor, Q: torch.Tensor, R: torch.Tensor,
                        noise_cov: torch.Tensor, goal: torch.Tensor, normal: torch.Tensor,
                        threshold: float, penalty: float, *, max_iter: int = 200
                        ) -> torch.Tensor:
    """The setpoint ``s*`` minimising the stationary expected stage cost of LQR tracking,

    ``E[(s − g)ᵀ Q (s − g) + uᵀ R u + λ · 1(a·s > c)]`` with ``s ~ N(s*, Σ)``,
    ``u ~ N(u*, K Σ Kᵀ)``, ``Σ`` the closed-loop stationary covariance under noise
    ``noise_cov`` and ``u*`` the action holding ``s*``. The violation probability is
    ``Φ((a·s* − c) / √(aᵀ Σ a))``. Minimised by L-BFGS from ``s* = g``.

    :param penalty: λ >= 0 (``0`` returns ``goal`` itself: certainty equivalence).
    :returns: ``s*`` ``(n,)``, float64.
    """
    A, B, Q, R = _system(A, B, Q, R)
    n = A.shape[0]
    W = _square("noise_cov", torch.as_tensor(noise_cov), n)
    goal = torch.as_tensor(goal).double().reshape(-1)
    normal = torch.as_tensor(normal).double().reshape(-1)
    if goal.shape != (n,) or normal.shape != (n,):
        raise ValueError(f"goal and normal must have {n} entries")
    check_nonnegative("penalty", penalty)
    if penalty == 0:
        return goal.clone()
    K = lqr_gain(A, B, Q, R)
    sigma = stationary_covariance(A - B @ K, W)
    spread = torch.sqrt(normal @ sigma @ normal)
    check_positive_int("max_iter", max_iter)
    s = goal.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([s], lr=1.0, max_iter=max_iter, tolerance_grad=1e-12,
                            tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        u = _equilibrium_action(A, B, s)
        cost = (s - goal) @ Q @ (s - goal) + u @ R @ u \
            + penalty * _normal_cdf((s @ normal - threshold) / spread)
        cost.backward()
        return cost

    opt.step(closure)
    return s.detach()


class LQRController:
    """LQR on the true state: ``u = u* − K (s − s*)`` (an oracle: it sees the state and knows
    the true ``A``, ``B``).

    :param A: ``(n, n)`` true dynamics.
    :param B: ``(n, m)`` true input matrix.
    :param Q: state cost.
    :param R: control cost.
    :param setpoint: ``s*`` ``(n,)`` to regulate to (the goal, or a
        :func:`risk_aware_setpoint`).
    :param device: where :meth:`act` computes.
    """

    #: what :meth:`act` reads: the true state
    observes = "state"

    def __init__(self, A: torch.Tensor, B: torch.Tensor, Q: torch.Tensor, R: torch.Tensor,
                 setpoint: torch.Tensor, *, device: str | torch.device = "cpu") -> None:
        A, B, Q, R = _system(A, B, Q, R)
        setpoint = torch.as_tensor(setpoint).double().reshape(-1)
        if setpoint.shape != (A.shape[0],):
            raise ValueError(f"setpoint must have {A.shape[0]} entries, got "
                             f"{tuple(setpoint.shape)}")
        self.device = torch.device(device)
        self.gain = lqr_gain(A, B, Q, R).to(self.device)
        self.setpoint = setpoint.to(self.device)
        self.hold = _equilibrium_action(A, B, setpoint).to(self.device)

    def reset(self, n_envs: int) -> None:
        """Nothing to reset (a static feedback law)."""
        check_positive_int("n_envs", n_envs)

    def act(self, state: torch.Tensor) -> torch.Tensor:
        """Actions ``(N, m)`` for true states ``(N, n)`` (returned on ``state``'s device)."""
        check_tensor("state", state, ndim=2, last_dim=self.setpoint.shape[0])
        s = state.to(self.device, torch.float64)
        u = self.hold - (s - self.setpoint) @ self.gain.T
        return u.to(state.device)
