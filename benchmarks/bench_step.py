"""Milliseconds per training step: Pyro VJEPA vs a hand-written torch step of the same loss.

Both sides update the same parameters with the same ``torch.optim.Adam`` and do the same
EMA update; they differ only in how the loss and its gradient are produced:

* **torch**: the VJEPA loss written out by hand — NLL of one reparameterised target sample
  under the predictor plus β times the closed-form KL of the target posterior to N(0, I);
* **pyro**: the library's own step, :class:`bjepa.inference.fit.FusedSVI` (``SVI`` with one
  foreach Adam), for each ELBO — exactly what :func:`bjepa.inference.fit` runs. The ``jit-``
  rows use :class:`bjepa.inference.jit.CompiledELBO`; ``fit``'s default ``elbo="auto"`` is
  ``jit-meanfield`` for runs of 200 steps or more (the headline row).

    python benchmarks/bench_step.py            # writes benchmarks/results/bench_step.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import pyro
import torch
from torch.distributions import Normal

from bjepa.inference.fit import FusedSVI, make_elbo, resolve_elbo
from bjepa.models import VJEPA

OUT = Path(__file__).parent / "results"


def torch_loss(m: VJEPA, xc: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
    """The VJEPA loss by hand (sum over the batch, as Pyro's ELBO)."""
    with torch.no_grad():
        mu = m.target_encoder(xt)
    raw = m.target_scale_net(xt)
    sq = torch.nn.functional.softplus(raw) + 1e-4
    z = mu + sq * torch.randn_like(mu)
    pred = m.predictor(m.context_encoder(xc))
    nll = -pred.log_prob(z).sum()
    kl = torch.distributions.kl_divergence(Normal(mu, sq), Normal(0.0, 1.0)).sum()
    return nll + m.beta * kl


def time_steps(step, n_steps: int, warmup: int = 20) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(n_steps):
        step()
    return (time.perf_counter() - start) / n_steps * 1e3


def bench(encoder: str, batch: int | None, elbo: str | None, n_steps: int) -> float:
    torch.manual_seed(0)
    pyro.clear_param_store()
    n = 6000
    x = torch.randn(n + 1, 20)
    xc, xt = x[:-1], x[1:]
    m = VJEPA(20, 4, encoder=encoder)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3, foreach=True)
    gen = torch.Generator().manual_seed(0)

    def batch_of():
        if batch is None:
            return xc, xt
        idx = torch.randint(0, n, (batch,), generator=gen)
        return xc[idx], xt[idx]

    if elbo is None:
        def step():
            c, t = batch_of()
            loss = torch_loss(m, c, t)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            m.after_step(0, 1)
    else:
        svi = FusedSVI(m.model, m.guide, m.parameters(), make_elbo(elbo), optimizer=opt)

        def step():
            svi.step(xc, xt, batch_size=batch)
            m.after_step(0, 1)

    return time_steps(step, n_steps)


def main(args: argparse.Namespace) -> list[dict]:
    torch.set_num_threads(args.threads)
    rows = []
    impls = [None, "meanfield", "trace", "jit-meanfield", "jit-trace"]
    default = resolve_elbo("auto", VJEPA(20, 4), 1000)
    for encoder in ("linear", "mlp"):
        for batch in (512, None):
            # interleaved repetitions, median per implementation: robust to a noisy machine
            times: dict[str | None, list[float]] = {i: [] for i in impls}
            for _ in range(args.reps):
                for impl in impls:
                    times[impl].append(bench(encoder, batch, impl, args.steps))
            ref = statistics.median(times[None])
            for impl in impls:
                ms = statistics.median(times[impl])
                label = "torch (by hand)" if impl is None else \
                    f"pyro {impl}" + (" (default)" if impl == default else "")
                rows.append({"encoder": encoder, "batch": batch or "full", "impl": label,
                             "ms_per_step": ms, "ratio": ms / ref,
                             "runs_ms": [round(t, 4) for t in times[impl]]})
                print(f"{encoder:6} B={batch or 'full':>5} {label:26} {ms:7.3f} ms "
                      f"({ms / ref:.2f}x torch {ref:.3f} ms)", flush=True)
    OUT.mkdir(exist_ok=True)
    meta = {"machine": platform.platform(), "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "threads": args.threads, "torch": torch.__version__, "pyro": pyro.__version__,
            "steps": args.steps, "reps": args.reps}
    (OUT / "bench_step.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = ["| encoder | batch | implementation | ms / step | × torch |", "|---|---|---|---|---|"]
    lines += [f"| {r['encoder']} | {r['batch']} | {r['impl']} | {r['ms_per_step']:.3f} | "
              f"{r['ratio']:.2f} |" for r in rows]
    (OUT / "bench_step.md").write_text("\n".join(lines) + "\n")
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions (median)")
    main(p.parse_args())
