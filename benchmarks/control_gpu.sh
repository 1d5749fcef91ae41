#!/usr/bin/env bash
# Pixel-based control in DeepMind Control on a CUDA GPU (not run on the 2-core CPU VM where
# bjepa is developed; see docs/control.md). Run from the repository root after `make install`
# (set PYTHON to use another interpreter). Rendering uses EGL (NVIDIA's driver provides it;
# elsewhere install Mesa: apt-get install libegl1 libgl1-mesa-dri libosmesa6).
#
#     bash benchmarks/control_gpu.sh            # ~hours: 2 models x 2 noise patches x 3 seeds
#     EPISODES=10 bash benchmarks/control_gpu.sh   # a shorter check
#
# Writes runs/control-gpu/<model>-p<patch>-s<seed>/ (one run folder per cell, resumable with
# --resume) and the combined table and curves in runs/control-gpu/report/.
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
EPISODES=${EPISODES:-100}
TASK=${TASK:-cheetah-run}
export MUJOCO_GL=${MUJOCO_GL:-egl}

"$PY" - <<'PYEOF'
import torch
assert torch.cuda.is_available(), "no CUDA device is visible to torch"
print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__)
PYEOF

# the CUDA tests of the control models first (skipped on CPU-only machines)
"$PY" -m pytest -q -m cuda tests/test_control.py

out=runs/control-gpu
runs=()
for model in vjepa recon; do
  for patch in 0 32; do
    for seed in 0 1 2; do
      dir="$out/$model-p$patch-s$seed"
      resume=(); [ -f "$dir/config.json" ] && resume=(--resume)
      "$PY" -m bjepa.cli -v control --pixels --size 64 --task "$TASK" --models "$model" \
        --distractor-dims "$patch" --sigma 0.5 --seeds "$seed" --episodes "$EPISODES" \
        --batch-size 64 --device cuda --no-progress --out "$dir" "${resume[@]}"
      runs+=("$dir")
    done
  done
done
"$PY" -m bjepa.cli control --report "${runs[@]}" --out "$out/report" --overwrite
