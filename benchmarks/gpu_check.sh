#!/usr/bin/env bash
# GPU smoke test and CPU-vs-CUDA timing. Run from the repository root on a machine with a CUDA
# GPU after `make test` has built .venv (set PYTHON to use another interpreter):
#
#     bash benchmarks/gpu_check.sh
#
# Writes benchmarks/results/gpu_check_{cpu,cuda}.{json,md}; prints steps per second.
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}

"$PY" - <<'PYEOF'
import torch
assert torch.cuda.is_available(), "no CUDA device is visible to torch"
print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__)
PYEOF

# 1. every test marked `cuda` (skipped on CPU-only machines): single-model and replica-batched
#    training, the Atari conv encoders
"$PY" -m pytest -q -m cuda tests

# 2. a run folder end to end on the GPU: batched training, probes, checkpoints, diagnostics
out=$(mktemp -d)
"$PY" -m bjepa.cli noisy-tv --quick --device cuda --out "$out/run" --no-progress
"$PY" -m bjepa.cli diagnose "$out/run" --device cuda > /dev/null
rm -rf "$out"

# 3. the batched Noisy TV table (5 models x 9 sigma x 2 seeds) on CPU and on CUDA
for dev in cpu cuda; do
  "$PY" benchmarks/bench_table.py --seeds 0-1 --skip-paper --device "$dev" --name "gpu_check_$dev"
done
"$PY" - <<'PYEOF'
import json
from pathlib import Path
res = {d: json.loads(Path(f"benchmarks/results/gpu_check_{d}.json").read_text())
       for d in ("cpu", "cuda")}
steps = 1000  # the recommended budget: steps per model run
for d, r in res.items():
    rec = r["recommended"]
    print(f"{d:>4}: {rec['runs']} runs in {rec['wall_seconds']:.1f} s = "
          f"{rec['runs'] * steps / rec['wall_seconds']:.0f} model-steps/s")
print(f"CUDA speed-up: {res['cpu']['recommended']['wall_seconds'] / res['cuda']['recommended']['wall_seconds']:.2f}x")
PYEOF

# 4. the compiled step on CUDA (TorchInductor -> Triton): ten Noisy TV seeds as one batched
#    program under the paper's protocol (full batch, lr 1e-3; 2 000 steps here), eager mean-field
#    ELBO against elbo="inductor", compile time included; writes gpu_check_inductor.json
"$PY" - <<'PYEOF'
import json, time
from pathlib import Path
import torch
from bjepa.data import noisy_tv
from bjepa.experiments.noisy_tv import probe
from bjepa.inference import fit, set_seed
from bjepa.models import VJEPA
seeds = list(range(10))
splits = {s: noisy_tv.make_split(8.0, s) for s in seeds}
out = {"device": torch.cuda.get_device_name(0), "steps": 2000, "rows": []}
for elbo in ("meanfield", "inductor"):
    models = []
    for s in seeds:
        set_seed(s)
        models.append(VJEPA(20, 4))
    torch.cuda.synchronize()
    t = time.perf_counter()
    hs = fit(models, [splits[s][0].obs[:-1] for s in seeds], [splits[s][0].obs[1:] for s in seeds],
             steps=2000, lr=1e-3, seed=seeds, elbo=elbo, device="cuda", progress=False)
    torch.cuda.synchronize()
    sec = time.perf_counter() - t
    r2 = [probe(m.cpu(), *splits[s])["signal_r2"] for s, m in zip(seeds, models)]
    out["rows"].append({"elbo": hs[0].elbo, "seconds": sec, "signal_r2": r2})
    print(f"cuda, 10 seeds batched, elbo={hs[0].elbo}: {sec:.1f} s, mean R2 {sum(r2) / 10:.3f}")
Path("benchmarks/results/gpu_check_inductor.json").write_text(json.dumps(out, indent=1))
PYEOF
