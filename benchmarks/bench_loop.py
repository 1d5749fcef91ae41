"""CPU seconds of whole ``fit`` calls — the training loop's cost around the step, for comparing
two versions of the library side by side (run this file with each version's Python,
interleaved). CPU time of one thread rather than wall time, so a busy machine disturbs it less.

Prints one JSON line::

    python benchmarks/bench_loop.py
"""

import json
import time

import torch

from bjepa.data import noisy_tv
from bjepa.inference import fit
from bjepa.models import VJEPA

torch.set_num_threads(1)
train, _ = noisy_tv.make_split(8.0, 0)
x = train.obs
out = {}
# one model, the recommended budget (compiled ELBO by default)
m = VJEPA(20, 4)
t = time.process_time()
fit(m, x[:-1], x[1:], steps=1000, batch_size=256, lr=3e-3, progress=False, log_every=10)
out["single_1000x256"] = time.process_time() - t
# ten seeds as one batched program, full batch
ms = [VJEPA(20, 4) for _ in range(10)]
t = time.process_time()
fit(ms, [x[:-1]] * 10, [x[1:]] * 10, steps=300, lr=1e-3, seed=list(range(10)), progress=False,
    log_every=10)
out["replicas10_300xfull"] = time.process_time() - t
print(json.dumps(out))
