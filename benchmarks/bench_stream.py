"""Training from disk vs from memory: throughput and peak RSS of a linear VJEPA on a large
``.npy`` file (default 10 M rows × 64 float32 columns, 2.4 GiB), batch 4096.

Writes the file once (in chunks), then trains in two fresh processes with the same model,
batch size, ELBO (eager mean-field) and step count:

- ``ram-loader``: the whole array loaded into RAM, ``fit(model, loader)`` with
  :func:`bjepa.data.make_loader` over it — the in-memory reference for the same data path;
- ``stream``: the same loader over the memory-mapped file (random mini-batches of 4096 pairs
  read from disk, ``--workers`` reader processes), with single pairs shuffled and with pairs
  shuffled in blocks of ``--block`` consecutive ones (fewer, longer reads);
- ``memory``: the whole array in a tensor, ``fit(model, context, target, batch_size=4096)``
  (mini-batches drawn by the model's ``pyro.plate``, whose ``randperm`` over all N rows each
  step dominates at this size; ``--memory-steps``).

Each child reports the steady training rate (steps/s between the first and last metric records,
start-up excluded) and its peak resident set (``ru_maxrss``; for ``stream`` also its reader
processes'). Results go to ``benchmarks/results/bench_stream.json`` and ``.md``.

    python benchmarks/bench_stream.py                      # 10 M × 64 (needs ~2.5 GiB disk)
    python benchmarks/bench_stream.py --rows 1000000 --steps 200 --file /tmp/x.npy
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent


def write_file(path: Path, rows: int, cols: int, seed: int = 0, chunk: int = 1 << 20) -> None:
    """A standardised AR(1) signal in 4 directions plus noise, written chunk by chunk."""
    if path.exists() and path.stat().st_size >= rows * cols * 4:
        header = np.load(path, mmap_mode="r")
        if header.shape == (rows, cols) and header.dtype == np.float32:
            return
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(4, cols)) / 2
    tmp = path.with_name(f".{path.name}.partial")  # renamed when complete
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(rows, cols))
    from scipy.signal import lfilter

    state = np.zeros((1, 4))
    for i in range(0, rows, chunk):
        n = min(chunk, rows - i)
        eps = rng.normal(size=(n, 4)) * np.sqrt(1 - 0.95 ** 2)
        sig, state = lfilter([1.0], [1.0, -0.95], eps, axis=0, zi=state)
        out[i:i + n] = (sig @ mix + rng.normal(size=(n, cols)) * 0.5).astype(np.float32)
    out.flush()
    del out
    os.replace(tmp, path)


CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
from bjepa.models import VJEPA
from bjepa.inference import fit

mode, path, steps, batch, workers, block = sys.argv[1], sys.argv[2], int(sys.argv[3]), \
    int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
torch.set_num_threads(1)
model = VJEPA(64, 4, encoder="linear", init="random")
t0 = time.perf_counter()
if mode == "memory":
    x = torch.from_numpy(np.load(path))                  # the whole file in RAM
    args, kw = (x[:-1], x[1:]), {"batch_size": batch}     # rows drawn by pyro.plate
else:
    from bjepa.data import from_array, load, make_loader, make_pairs
    if mode == "ram-loader":
        pairs = make_pairs(from_array(np.load(path)))     # the whole file in RAM
    else:
        pairs = make_pairs(load(path))                    # a memory map, nothing read yet
    args, kw = (make_loader(pairs, batch, num_workers=workers, seed=0, block=block),), {}
setup = time.perf_counter() - t0
cpu0 = resource.getrusage(resource.RUSAGE_SELF)
hist = fit(model, *args, steps=steps, lr=1e-3, elbo="meanfield", seed=0, progress=False,
           log_every=max(steps // 20, 1), warmup_steps=0, **kw)
cpu1 = resource.getrusage(resource.RUSAGE_SELF)
cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
r = hist.records
rate = (r[-1]["step"] - r[0]["step"]) / (r[-1]["seconds"] - r[0]["seconds"])
own = cpu1.ru_maxrss / 1024

def hwm(pid):  # a live reader process's peak resident set (MiB)
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0

it = getattr(args[0], "_iterator", None) if mode != "memory" else None
kids = max([hwm(w.pid) for w in getattr(it, "_workers", [])] or [0.0])

def cpu_of(pid):  # a live reader process's CPU seconds
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

import os
kids_cpu = sum(cpu_of(w.pid) for w in getattr(it, "_workers", []))
print(json.dumps({"mode": mode, "steps_per_second": rate, "rows_per_second": rate * batch,
                  "setup_seconds": setup, "train_seconds": hist.seconds,
                  "peak_rss_mib": own, "peak_rss_workers_mib": kids,
                  "cpu_seconds": cpu, "readers_cpu_seconds": kids_cpu,
                  "rows_per_cpu_second": steps * batch / cpu,
                  "final_loss": hist.final_loss}))
"""


def run_child(mode: str, path: Path, steps: int, batch: int, workers: int, block: int) -> dict:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, mode, str(path), str(steps), str(batch),
                           str(workers), str(block)], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{done.stderr[-3000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row.update(workers=workers if mode != "memory" else None,
               block=block if mode != "memory" else None,
               wall_seconds=time.perf_counter() - t0)
    return row


def main(args: argparse.Namespace) -> dict:
    path = Path(args.file)
    need = args.rows * 64 * 4
    free = shutil.disk_usage(path.parent).free
    if not path.exists() and free < need * 1.1:
        raise SystemExit(f"{path.parent} has {free / 2**30:.1f} GiB free, the file needs "
                         f"{need / 2**30:.1f} GiB; pass a smaller --rows")
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    write_file(path, args.rows, 64)
    print(f"data: {path} ({path.stat().st_size / 2**30:.2f} GiB) in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    plan = [("ram-loader", 0, 1), *[("stream", w, 1) for w in args.workers],
            *[("stream", w, args.block) for w in args.workers if args.block > 1]]
    if args.memory_steps:
        plan.append(("memory", 0, 1))
    for rep in range(args.repeats):  # interleaved, so a change in machine load hits all runs
        for mode, workers, block in plan:
            steps = args.memory_steps if mode == "memory" else args.steps
            row = run_child(mode, path, steps, args.batch, workers, block)
            row["repeat"] = rep
            rows.append(row)
            print(json.dumps(row), flush=True)
    for r in rows:  # against the in-RAM loader of the same round
        ram = next(m for m in rows if m["mode"] == "ram-loader" and m["repeat"] == r["repeat"])
        r["throughput_vs_memory"] = r["rows_per_second"] / ram["rows_per_second"]
        r["cpu_throughput_vs_memory"] = r["rows_per_cpu_second"] / ram["rows_per_cpu_second"]
    result = {
        "rows": args.rows, "cols": 64, "file_gib": path.stat().st_size / 2**30,
        "batch": args.batch, "steps": args.steps, "results": rows,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "load_average_at_start": load0,
                    "load_average_at_end": os.getloadavg()},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    out = ROOT / "results"
    out.mkdir(exist_ok=True)
    (out / "bench_stream.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# bench_stream: {args.rows:,} rows × 64 float32 ({result['file_gib']:.2f} GiB), "
             f"linear VJEPA, batch {args.batch}, {args.steps} steps", "",
             "| round | run | readers | shuffled in blocks of | rows/s | vs in-RAM loader (same "
             "round) | rows per CPU-second of the training process | vs in-RAM loader | "
             "readers' CPU s | peak RSS (MiB) | readers' peak RSS (MiB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['repeat']} | {r['mode']} | "
                     f"{r['workers'] if r['workers'] is not None else '–'} | "
                     f"{r['block'] if r['block'] is not None else '–'} | "
                     f"{r['rows_per_second']:,.0f} | {100 * r['throughput_vs_memory']:.0f} % | "
                     f"{r['rows_per_cpu_second']:,.0f} | "
                     f"{100 * r['cpu_throughput_vs_memory']:.0f} % | "
                     f"{r['readers_cpu_seconds']:.1f} | "
                     f"{r['peak_rss_mib']:.0f} | {r['peak_rss_workers_mib']:.0f} |")
    (out / "bench_stream.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if not args.keep:
        path.unlink()
    return result


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--memory-steps", type=int, default=40,
                   help="steps of the fit(context, target, batch_size) run (0: skip it); "
                        "pyro.plate draws its rows with an O(N) randperm per step")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--workers", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1],
                   help="reader processes to try for the stream run (default 0,1)")
    p.add_argument("--block", type=int, default=64,
                   help="also stream with pairs shuffled in blocks of this many (1: skip)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--file", default="/tmp/bjepa_bench_stream.npy")
    p.add_argument("--keep", action="store_true", help="keep the data file")
    main(p.parse_args())
