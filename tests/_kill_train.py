"""Training job for the crash-safety test in ``test_reliability.py``: it is started in a
separate process and killed with SIGKILL at random moments, then started again.

It checkpoints after every step, and its checkpoints are large (an MLP VJEPA, ~3 MB with the
optimiser state) so that most of its time is spent writing them: many kills land mid-write.

    python tests/_kill_train.py CHECKPOINT_DIR STEPS
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from bjepa.inference import fit
from bjepa.models import VJEPA

OBS_DIM = 16


def data() -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random walk (the same in every process)."""
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(129, OBS_DIM, generator=g).cumsum(0) / 10.0
    return x[:-1], x[1:]


def train(checkpoint_dir: str, steps: int, checkpoint_every: int | None = 1) -> None:
    """Train (or resume) to ``steps`` steps, checkpointing every ``checkpoint_every`` steps
    (``None``: only at the start and the end — the uninterrupted reference run)."""
    torch.set_num_threads(1)  # identical arithmetic in every process
    torch.manual_seed(0)
    model = VJEPA(OBS_DIM, 4, encoder="mlp", hidden_dim=256, init="random")
    context, target = data()
    fit(model, context, target, steps=steps, lr=1e-3, batch_size=32, seed=0, progress=False,
        checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, keep_last=2, resume=True,
        metrics_path=Path(checkpoint_dir) / "metrics.jsonl", metrics_tags={"job": "kill"})


if __name__ == "__main__":
    train(sys.argv[1], int(sys.argv[2]))
