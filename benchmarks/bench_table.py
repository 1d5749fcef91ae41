"""Wall time of the full Noisy TV table: recommended settings vs the paper's protocol.

1. **Recommended** — one ``bjepa noisy-tv`` process, exactly as a user runs it: 5 models ×
   9 σ × 10 seeds with the CLI defaults (1000 Adam steps of 256 rows at lr 3e-3; the runs of
   each model train as one batched program). Timed end to end (imports, data, training,
   probes, checkpoints, figure); peak RSS of the process.
2. **Paper protocol** — 6000 full-batch steps at lr 1e-3, one model at a time
   (``--paper-budget --replicas 1``). Running all 450 would take hours, so a subset is measured
   (default: every model at σ = 8, seed 0) and the full table's time is extrapolated as
   ``Σ_models mean(train seconds of the model's measured runs) × (9 σ × 10 seeds)`` — training
   time only, so the estimate is a lower bound for the paper's protocol.

Writes ``benchmarks/results/bench_table.json`` and ``.md``::

    python benchmarks/bench_table.py                    # ~2 min + ~5 min for the subset
    python benchmarks/bench_table.py --seeds 0-1 --skip-paper --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bjepa.cli._common import parse_int_list

OUT = Path(__file__).parent / "results"
MODELS = "vjepa,bjepa,jepa,vae,ar"
SIGMAS = "0,0.5,1,2,3,4,5,6,8"


def run_cli(args: list[str], cold: bool = False) -> tuple[float, int, list[dict]]:
    """Run ``bjepa`` in a fresh process; returns (wall seconds, peak RSS bytes, result rows).
    ``cold``: with an empty TorchInductor cache, so every compiled step compiles from scratch
    (otherwise graphs compiled by an earlier run on this machine load from its disk cache)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "bjepa.cli", *args, "--out", str(out), "--no-progress"]
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(Path(tmp) / "inductor")) \
            if cold else None
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
        wall = time.perf_counter() - start
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        rows = json.loads((out / "results.json").read_text())
    # ru_maxrss is the largest child so far: only trust it when this child set a new maximum
    return wall, peak_kib * 1024 if peak_kib > before else -1, rows


def summary(rows: list[dict]) -> dict[str, dict]:
    out = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        sel = [r for r in rows if r["model"] == model]
        per_sigma = {}
        for s in sorted({r["sigma"] for r in sel}):
            v = [r["signal_r2"] for r in sel if r["sigma"] == s]
            per_sigma[s] = {"mean": statistics.fmean(v), "min": min(v), "n": len(v)}
        out[model] = {
            "mean_signal_r2": statistics.fmean(r["signal_r2"] for r in sel),
            "worst_sigma_mean": min(p["mean"] for p in per_sigma.values()),
            "worst_seed": min(p["min"] for p in per_sigma.values()),
            "train_seconds": sum(r["train_seconds"] for r in sel),
            "per_sigma": per_sigma,
        }
    return out


def main(args: argparse.Namespace) -> dict:
    n_sigmas = len(args.sigmas.split(","))
    seeds = args.seeds
    n_seeds = len(parse_int_list(seeds))
    result: dict = {"meta": {
        "machine": platform.platform(), "processor": platform.processor() or "unknown",
        "cpus": os.cpu_count(), "python": platform.python_version(), "device": args.device,
        "command": f"bjepa noisy-tv --models {args.models} --sigmas {args.sigmas} "
                   f"--seeds {seeds} --device {args.device} --elbo {args.elbo}",
    }}
    print(f"recommended settings: {result['meta']['command']}", flush=True)
    walls, rsss = [], []
    for i in range(args.repeat):  # the first run also fills the compile cache
        cold = args.cold_first and i == 0
        wall, rss, rows = run_cli(["noisy-tv", "--models", args.models, "--sigmas",
                                   args.sigmas, "--seeds", seeds, "--device", args.device,
                                   "--elbo", args.elbo], cold=cold)
        walls.append(wall)
        rsss.append(rss)
        print(f"  {len(rows)} runs in {wall:.1f} s{' (empty compile cache)' if cold else ''}, "
              f"peak RSS {rss / 2**20:.0f} MiB", flush=True)
    fast = summary(rows)
    warm = walls[1:] if args.cold_first and len(walls) > 1 else walls
    result["recommended"] = {"wall_seconds": statistics.median(warm), "walls": walls,
                             "cold_first": args.cold_first, "peak_rss_bytes": max(rsss),
                             "runs": len(rows), "models": fast}
    if not args.skip_paper:
        cmd = ["noisy-tv", "--paper-budget", "--replicas", "1", "--models", args.models,
               "--sigmas", args.paper_sigmas, "--seeds", args.paper_seeds,
               "--device", args.device]
        print(f"paper protocol subset: bjepa {' '.join(cmd)}", flush=True)
        sub_wall, _, sub_rows = run_cli(cmd)
        paper = summary(sub_rows)
        per_model = {m: paper[m]["train_seconds"] / len([r for r in sub_rows if r["model"] == m])
                     for m in paper}
        estimate = sum(per_model.values()) * n_sigmas * n_seeds
        result["paper"] = {"measured_runs": len(sub_rows), "measured_wall_seconds": sub_wall,
                           "seconds_per_run": per_model,
                           "estimated_wall_seconds": estimate, "models": paper,
                           "subset": {"sigmas": args.paper_sigmas, "seeds": args.paper_seeds}}
        result["speedup"] = estimate / wall
        print(f"  {len(sub_rows)} runs measured in {sub_wall:.1f} s → full table ≈ "
              f"{estimate:.0f} s; speed-up {estimate / wall:.0f}×", flush=True)
    OUT.mkdir(exist_ok=True)
    name = args.name
    (OUT / f"{name}.json").write_text(json.dumps(result, indent=2))
    (OUT / f"{name}.md").write_text(render(result))
    print(render(result))
    return result


def render(result: dict) -> str:
    rec = result["recommended"]
    lines = [f"Machine: {result['meta']['machine']}, {result['meta']['cpus']} CPUs, "
             f"device {result['meta']['device']}", "",
             "| protocol | runs | wall time | peak RSS | mean signal R² per model |",
             "|---|---|---|---|---|"]
    means = ", ".join(f"{m} {v['mean_signal_r2']:.3f}" for m, v in rec["models"].items())
    walls = rec.get("walls", [rec["wall_seconds"]])
    each = ", ".join(f"{w:.1f}" for w in walls)
    cold = bool(rec.get("cold_first")) and len(walls) > 1
    note = f" (median of {len(walls) - cold}; each run: {each} s" + \
        ("; the first with an empty compile cache)" if cold else ")")
    lines.append(f"| recommended (batched) | {rec['runs']} | {rec['wall_seconds']:.1f} s{note} | "
                 f"{rec['peak_rss_bytes'] / 2**20:.0f} MiB | {means} |")
    if "paper" in result:
        p = result["paper"]
        means = ", ".join(f"{m} {v['mean_signal_r2']:.3f}" for m, v in p["models"].items())
        lines.append(f"| paper protocol (sequential, extrapolated from {p['measured_runs']} "
                     f"runs) | {rec['runs']} | ≈ {p['estimated_wall_seconds']:.0f} s | – | "
                     f"{means} (measured subset) |")
        lines += ["", f"Speed-up: {result['speedup']:.0f}×"]
    lines += ["", "| model | worst σ mean | worst seed |", "|---|---|---|"]
    lines += [f"| {m} | {v['worst_sigma_mean']:.3f} | {v['worst_seed']:.3f} |"
              for m, v in rec["models"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=MODELS)
    p.add_argument("--sigmas", default=SIGMAS)
    p.add_argument("--seeds", default="0-9")
    p.add_argument("--device", default="cpu")
    p.add_argument("--elbo", default="auto", choices=["auto", "meanfield", "inductor"],
                   help="passed to bjepa noisy-tv (default: what the command picks)")
    p.add_argument("--skip-paper", action="store_true", help="only the recommended table")
    p.add_argument("--paper-sigmas", default="8")
    p.add_argument("--paper-seeds", default="0")
    p.add_argument("--name", default="bench_table", help="output file stem in results/")
    p.add_argument("--repeat", type=int, default=1, help="recommended runs (median reported)")
    p.add_argument("--cold-first", action="store_true",
                   help="run the first recommended run with an empty TorchInductor cache and "
                        "report it apart (the median is over the later runs)")
    main(p.parse_args())
