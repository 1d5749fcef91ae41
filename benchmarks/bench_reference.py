"""Equal work, side by side: the reference implementation's VJEPA loop against bjepa.

The paper's public reference code trains VJEPA with a plain torch loop. Restated here (our
code, its arithmetic), per step on the full training set:

    z = W_e x;  μ_p = W_μ z;  logvar_p = W_lv z
    without gradient: μ_t = W_ema x';  logvar_t = W_tv x'      (W_tv random, never trained)
    z_s = μ_t + ε · exp(logvar_t / 2)
    loss = ½ mean Σ (logvar_p + (z_s − μ_p)² / exp(logvar_p))
           + 0.01 · (−½ mean Σ (1 + logvar_t − μ_t² − exp(logvar_t)))
    Adam on W_e, W_μ, W_lv;  then W_ema ← 0.99 W_ema + 0.01 W_e

All maps bias-free linear, D_x = 20, D_z = 4. bjepa's VJEPA does more per step: it *learns* the
target variance (a variance head trained through the KL), its predictor is a small network
with a learned scale, and the loss comes out of Pyro's ELBO.

Both sides run in this one process on the same Noisy TV data and seeds, interleaved seed by
seed, under two protocols:

* **paper**: ``--steps`` (default 6000) full-batch Adam steps at lr 1e-3;
* **recommended**: 1000 steps of 256-row mini-batches at lr 3e-3 (bjepa's default budget).

For bjepa it times ``fit`` with its default ``elbo="auto"`` (under the paper protocol the
TorchInductor step: gradients, NaN screen and Adam as one compiled graph; compile time
included — the first seed compiles, later seeds reuse the graph), the seeds trained as one
replica-batched program (``fit([m_1, …, m_R], ...)``) and, under the paper protocol, the
defaults before the compiled step (TorchScript alone, eager batched) for comparison. Every row
reports seconds per model and the test signal R² of a linear probe, so a speed-up is always
read beside what was learned. Writes
``benchmarks/results/bench_reference.json`` and ``.md``::

    python benchmarks/bench_reference.py                       # 10 seeds, both protocols
    python benchmarks/bench_reference.py --seeds 0-2 --skip-recommended
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from bjepa.cli._common import parse_int_list
from bjepa.data import noisy_tv
from bjepa.experiments.noisy_tv import probe
from bjepa.inference import fit, set_seed
from bjepa.metrics import linear_probe_r2
from bjepa.models import VJEPA

OUT = Path(__file__).parent / "results"
D_Z = 4


class ReferenceVJEPA(torch.nn.Module):
    """The reference loop's parameters: four bias-free linear maps and the EMA copy."""

    def __init__(self, obs_dim: int, latent_dim: int = D_Z) -> None:
        super().__init__()
        self.enc = torch.nn.Linear(obs_dim, latent_dim, bias=False)
        self.mu = torch.nn.Linear(latent_dim, latent_dim, bias=False)
        self.logvar = torch.nn.Linear(latent_dim, latent_dim, bias=False)
        self.target_logvar = torch.nn.Linear(obs_dim, latent_dim, bias=False)  # never trained
        self.target_logvar.requires_grad_(False)
        self.ema = torch.nn.Linear(obs_dim, latent_dim, bias=False)
        self.ema.load_state_dict(self.enc.state_dict())
        self.ema.requires_grad_(False)

    def loss(self, x: torch.Tensor, x_next: torch.Tensor, beta: float = 0.01) -> torch.Tensor:
        z = self.enc(x)
        mu_p, logvar_p = self.mu(z), self.logvar(z)
        with torch.no_grad():
            mu_t, logvar_t = self.ema(x_next), self.target_logvar(x_next)
            z_s = mu_t + torch.randn_like(mu_t) * torch.exp(logvar_t / 2)
        nll = 0.5 * (logvar_p + (z_s - mu_p) ** 2 / torch.exp(logvar_p)).sum(-1).mean()
        kl = -0.5 * (1 + logvar_t - mu_t ** 2 - torch.exp(logvar_t)).sum(-1).mean()
        return nll + beta * kl

    @torch.no_grad()
    def ema_update(self, tau: float = 0.99) -> None:
        self.ema.weight.mul_(tau).add_(self.enc.weight, alpha=1 - tau)


def train_reference(x: torch.Tensor, seed: int, steps: int, lr: float,
                    batch_size: int | None) -> ReferenceVJEPA:
    torch.manual_seed(seed)
    m = ReferenceVJEPA(x.shape[1])
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=lr)
    xc, xt = x[:-1], x[1:]
    n = xc.shape[0]
    for _ in range(steps):
        if batch_size is None:
            bc, bt = xc, xt
        else:
            idx = torch.randint(0, n, (batch_size,))
            bc, bt = xc[idx], xt[idx]
        loss = m.loss(bc, bt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        m.ema_update()
    return m


def reference_r2(m: ReferenceVJEPA, train: noisy_tv.NoisyTV, test: noisy_tv.NoisyTV) -> float:
    with torch.no_grad():
        ztr, zte = m.enc(train.obs), m.enc(test.obs)
    return linear_probe_r2(ztr[:-1], train.signal[1:], zte[:-1], test.signal[1:])


def timed(fn, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201 - a tiny helper
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def protocol(name: str, seeds: list[int], steps: int, lr: float, batch_size: int | None,
             batched: bool, alternatives: bool = False) -> list[dict]:
    splits = {s: noisy_tv.make_split(8.0, s) for s in seeds}
    rows = []
    for s in seeds:  # interleaved: the same machine state for both sides
        train, test = splits[s]
        ref, t_ref = timed(train_reference, train.obs, s, steps, lr, batch_size)
        rows.append({"protocol": name, "impl": "reference loop", "seed": s, "seconds": t_ref,
                     "signal_r2": reference_r2(ref, train, test)})
        set_seed(s)
        m = VJEPA(train.obs.shape[1], D_Z)
        h_b, t_b = timed(fit, m, train.obs[:-1], train.obs[1:], steps=steps, lr=lr,
                       batch_size=batch_size, seed=s, progress=False,
                       log_every=max(steps // 100, 1))
        rows.append({"protocol": name, "impl": f"bjepa fit (default: {h_b.elbo})", "seed": s,
                     "seconds": t_b,
                     **{"signal_r2": probe(m, train, test)["signal_r2"]}})
        if alternatives:  # TorchScript, the default before the compiled step
            set_seed(s)
            m = VJEPA(train.obs.shape[1], D_Z)
            _, t_i = timed(fit, m, train.obs[:-1], train.obs[1:], steps=steps, lr=lr,
                           batch_size=batch_size, seed=s, progress=False, elbo="jit-meanfield",
                           log_every=max(steps // 100, 1))
            rows.append({"protocol": name, "impl": "bjepa fit, elbo='jit-meanfield'",
                         "seed": s, "seconds": t_i,
                         "signal_r2": probe(m, train, test)["signal_r2"]})
        print(f"{name} seed {s}: reference {t_ref:.2f}s, bjepa {t_b:.2f}s ({h_b.elbo})"
              + (f", jit-meanfield {t_i:.2f}s" if alternatives else ""), flush=True)
    # batched: the default, and the eager ELBO (the default before the compiled step: replicas
    # with their own noise generators cannot be traced by TorchScript)
    for elbo in (["auto", "meanfield"] if alternatives else ["auto"]) if batched else []:
        models = []
        for s in seeds:
            set_seed(s)
            models.append(VJEPA(20, D_Z))
        trains = [splits[s][0] for s in seeds]
        hs, t_all = timed(fit, models, [t.obs[:-1] for t in trains],
                         [t.obs[1:] for t in trains], steps=steps, lr=lr,
                         batch_size=batch_size, seed=seeds, progress=False, elbo=elbo,
                         log_every=max(steps // 100, 1))
        label = "bjepa fit, seeds batched" + (f" (default: {hs[0].elbo})" if elbo == "auto"
                                              else f", elbo={elbo!r}")
        for s, m in zip(seeds, models, strict=True):
            rows.append({"protocol": name, "impl": label, "seed": s,
                         "seconds": t_all / len(seeds),
                         "signal_r2": probe(m, *splits[s])["signal_r2"]})
        print(f"{name} {label}: {t_all:.2f}s for {len(seeds)} seeds", flush=True)
    return rows


def summary(rows: list[dict]) -> list[dict]:
    out = []
    for key in dict.fromkeys((r["protocol"], r["impl"]) for r in rows):
        sel = [r for r in rows if (r["protocol"], r["impl"]) == key]
        out.append({"protocol": key[0], "impl": key[1], "seeds": len(sel),
                    "seconds_per_model": statistics.mean(r["seconds"] for r in sel),
                    "seconds_all": sum(r["seconds"] for r in sel),
                    "r2_mean": statistics.mean(r["signal_r2"] for r in sel),
                    "r2_min": min(r["signal_r2"] for r in sel)})
    for s in out:
        ref = next(o for o in out if o["protocol"] == s["protocol"]
                   and o["impl"] == "reference loop")
        s["time_vs_reference"] = s["seconds_all"] / ref["seconds_all"]
    return out


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    seeds = parse_int_list(args.seeds)
    rows = protocol("paper", seeds, args.steps, 1e-3, None, batched=True,
                    alternatives=not args.skip_alternatives)
    if not args.skip_recommended:
        rows += protocol("recommended", seeds, 1000, 3e-3, 256, batched=True)
    result = {"machine": f"{platform.processor() or platform.machine()}, "
                         f"{os.cpu_count()} CPUs, torch {torch.__version__}, "
                         f"{args.threads} thread(s)",
              "load_at_start": os.getloadavg()[0], "steps": args.steps, "seeds": seeds,
              "summary": summary(rows), "rows": rows}
    OUT.mkdir(exist_ok=True)
    (OUT / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    lines = ["| protocol | implementation | s per model | all seeds (s) | vs reference | "
             "signal R² mean | min |", "|---|---|---|---|---|---|---|"]
    for s in result["summary"]:
        lines.append(f"| {s['protocol']} | {s['impl']} | {s['seconds_per_model']:.2f} | "
                     f"{s['seconds_all']:.1f} | {s['time_vs_reference']:.2f}× | "
                     f"{s['r2_mean']:.3f} | {s['r2_min']:.3f} |")
    text = "\n".join(lines)
    (OUT / f"{args.name}.md").write_text(f"{result['machine']}, load "
                                        f"{result['load_at_start']:.1f} at start\n\n{text}\n")
    print(text)
    return result


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0-9")
    p.add_argument("--steps", type=int, default=6000, help="paper protocol steps")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-recommended", action="store_true")
    p.add_argument("--skip-alternatives", action="store_true",
                   help="time only the default ELBO (not also TorchScript / eager)")
    p.add_argument("--name", default="bench_reference", help="output file stem in results/")
    main(p.parse_args())
