"""Deterministic kill points for the crash-safety test in ``test_reliability.py``.

:func:`train_until` runs the training job of ``_kill_train.py`` in a child process and, the
``nth`` time that process reaches ``point``, tells the parent through ``conn`` and waits there
to be killed with SIGKILL. The kill thus lands at a chosen place — not at a moment that depends
on how loaded the machine is:

- ``"mid-write"``: half of a checkpoint's bytes are in the temporary file (synced to disk);
- ``"before-rename"``: the temporary file is complete but not yet renamed over the target;
- ``"after-rename"``: the new checkpoint is in place, older ones not yet pruned;
- ``"mid-step"``: the optimiser has stepped, the EMA target is not yet updated.
"""

from __future__ import annotations

import io
import os
import time
from typing import Any

POINTS = ("mid-write", "before-rename", "after-rename", "mid-step")


def train_until(checkpoint_dir: str, steps: int, point: str, nth: int, conn: Any) -> None:
    import _kill_train
    import torch

    from bjepa.models import VJEPA

    if point not in POINTS:
        raise ValueError(f"point must be one of {POINTS}, got {point!r}")
    count = [0]

    def reached() -> None:
        count[0] += 1
        if count[0] == nth:
            conn.send(point)
            time.sleep(600)  # SIGKILL arrives here

    if point == "mid-write":
        real_save = torch.save

        def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            data = buf.getvalue()
            f.write(data[:len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            reached()
            f.write(data[len(data) // 2:])

        torch.save = save
    elif point in ("before-rename", "after-rename"):
        real_replace = os.replace

        def replace(src: Any, dst: Any) -> None:
            if point == "before-rename":
                reached()
            real_replace(src, dst)
            if point == "after-rename":
                reached()

        os.replace = replace
    else:
        real_after = VJEPA.after_step

        def after_step(self: Any, step: int, total_steps: int) -> Any:
            reached()
            return real_after(self, step, total_steps)

        VJEPA.after_step = after_step
    _kill_train.train(checkpoint_dir, steps)
    conn.send("finished")
