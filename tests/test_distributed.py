"""Multi-process training (issue 10): ``fit_ddp`` on two CPU processes launched with
``torchrun`` (gloo) takes the same steps as single-process ``fit`` on the same global batches,
keeps the EMA target identical on every rank, and writes checkpoints that a single process
loads and resumes (and vice versa)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch

from bjepa import models
from bjepa.data import noisy_tv
from bjepa.inference import fit
from bjepa.inference.checkpoint import load_checkpoint, load_model
from bjepa.inference.distributed import (
    _ShardGuide,
    _shards,
    _widen,
    fit_ddp,
    init_distributed,
    is_rank_zero,
)
from bjepa.inference.fit import set_seed

STEPS, RESUMED_STEPS, BATCH = 12, 24, 63  # 63 rows: shards of 32 and 31 rows
ROWS = 400
# float32 sums in another order (two half-batches, then an average) differ in the last bits
ATOL, RTOL = 2e-6, 1e-5

WORKER = r'''
import json, sys, warnings
from pathlib import Path

warnings.simplefilter("error")  # as in the test suite: a warning in a worker fails the test
for module in ("pyro", "arviz", "xarray"):
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)

import pyro
import torch

from bjepa import models
from bjepa.cli import main as cli_main
from bjepa.data import noisy_tv
from bjepa.inference.distributed import (
    fit_ddp, init_distributed, is_rank_zero, shutdown_distributed)
from bjepa.inference.fit import set_seed

out = Path(sys.argv[1])
cfg = json.loads(sys.argv[2])
ctx = init_distributed("cpu", timeout=60)
assert ctx.world_size == 2 and ctx.backend == "gloo"
assert is_rank_zero() == (ctx.rank == 0)
pyro.enable_validation(True)
train, _ = noisy_tv.make_split(4.0, 0, train_steps=cfg["rows"] + 1, test_steps=100)
x_c, x_t = train.obs[:-1], train.obs[1:]


def tensors(m):
    state = [t for t in m.state_dict().values() if isinstance(t, torch.Tensor)]
    return state + list(m.target_encoder.state_dict().values())


def dump(name, m, hist):
    torch.save({"tensors": tensors(m), "loss": hist.loss,
                "last": str(hist.last_checkpoint)}, out / f"{name}-rank{ctx.rank}.pt")


# A: VJEPA (data init, so a warm-up phase with a frozen encoder), uneven shards, checkpoints
set_seed(0)
m = models.VJEPA(20, 4)
h = fit_ddp(m, x_c, x_t, steps=cfg["steps"], batch_size=cfg["batch"], seed=0, progress=False,
            checkpoint_dir=out / "ck-ddp", checkpoint_every=cfg["steps"] // 2)
dump("vjepa", m, h)

# B: resume on 2 processes a run that 1 process checkpointed
set_seed(0)
m = models.VJEPA(20, 4)
h = fit_ddp(m, x_c, x_t, steps=cfg["resumed_steps"], batch_size=cfg["batch"], seed=0,
            progress=False, checkpoint_dir=out / "ck-single", resume=True)
dump("resumed", m, h)

# C: BJEPA with a weight prior: global (per-run) latent sites next to per-row ones
set_seed(1)
m = models.BJEPA(20, 4, weight_prior="normal")
h = fit_ddp(m, x_c, x_t, steps=4, batch_size=64, seed=1, progress=False)
dump("bjepa", m, h)

# D: the command line, as `torchrun -m bjepa.cli train --strategy ddp` runs it
rc = cli_main(["train", "--strategy", "ddp", "--model", "vjepa", "--sigma", "4",
               "--steps", "10", "--batch-size", "64", "--log-every", "1",
               "--train-steps", "300", "--test-steps", "100", "--no-progress",
               "--out", str(out / "run")])
assert rc == 0, rc
shutdown_distributed()
'''


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    train, _ = noisy_tv.make_split(4.0, 0, train_steps=ROWS + 1, test_steps=100)
    return train.obs[:-1], train.obs[1:]


def _tensors(m: torch.nn.Module) -> list[torch.Tensor]:
    state = [t for t in m.state_dict().values() if isinstance(t, torch.Tensor)]
    return state + list(m.target_encoder.state_dict().values())


def _assert_close(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=ATOL, rtol=RTOL)


def _torchrun(script: Path, *args: str, timeout: float = 240.0) -> str:
    """Run ``script`` on 2 CPU processes with torchrun; kill the whole group on a timeout."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "--max-restarts=0", str(script), *args]
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout:.0f}s:\n{output[-4000:]}")
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{output[-6000:]}"
    return output


def test_two_processes_equal_one(tmp_path, monkeypatch):
    """The headline check: 2 gloo processes == 1 process, both ways of resuming, the EMA
    target identical on both ranks, rank 0 alone writing the run folder."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    x_c, x_t = _data()

    # single-process references; the 12-step checkpoint is what phase B resumes on 2 processes
    set_seed(0)
    ref = models.VJEPA(20, 4)
    ref_hist = fit(ref, x_c, x_t, steps=STEPS, batch_size=BATCH, seed=0, progress=False,
                   checkpoint_dir=tmp_path / "ck-ref")
    shutil.copytree(tmp_path / "ck-ref", tmp_path / "ck-single", ignore=_no_lock)
    set_seed(0)
    ref24 = models.VJEPA(20, 4)
    ref24_hist = fit(ref24, x_c, x_t, steps=RESUMED_STEPS, batch_size=BATCH, seed=0,
                     progress=False, checkpoint_dir=tmp_path / "ck-ref", resume=True)

    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER))
    cfg = {"rows": ROWS, "steps": STEPS, "resumed_steps": RESUMED_STEPS, "batch": BATCH}
    _torchrun(script, str(tmp_path), json.dumps(cfg))

    def load(name: str, rank: int) -> dict:
        return torch.load(tmp_path / f"{name}-rank{rank}.pt", weights_only=True)

    for name in ("vjepa", "resumed", "bjepa"):  # every rank holds the very same state
        r0, r1 = load(name, 0), load(name, 1)
        assert all(torch.equal(a, b) for a, b in zip(r0["tensors"], r1["tensors"], strict=True))
        assert r0["loss"] == r1["loss"]

    # A: same parameters, EMA target (the last tensors) and per-step loss as one process
    ddp = load("vjepa", 0)
    _assert_close(ddp["tensors"], _tensors(ref))
    torch.testing.assert_close(torch.tensor(ddp["loss"]), torch.tensor(ref_hist.loss),
                               atol=0.0, rtol=RTOL)
    assert len(ddp["loss"]) == STEPS

    # the checkpoint the 2 processes wrote loads in this process and resumes here (2 → 1)
    ck = tmp_path / "ck-ddp"
    assert ddp["last"] == str(ck / f"step-{STEPS:09d}.pt")
    payload = load_checkpoint(ddp["last"])
    assert payload["training"]["step"] == STEPS
    assert payload["training"]["config"]["world_size"] == 2
    _assert_close(_tensors(load_model(ddp["last"])), ddp["tensors"])
    set_seed(0)
    again = models.VJEPA(20, 4)
    hist = fit(again, x_c, x_t, steps=RESUMED_STEPS, batch_size=BATCH, seed=0, progress=False,
               checkpoint_dir=ck, resume=True)
    assert hist.resumed_from == STEPS
    _assert_close(_tensors(again), _tensors(ref24))

    # B: a single-process checkpoint resumed on 2 processes (1 → 2)
    resumed = load("resumed", 0)
    _assert_close(resumed["tensors"], _tensors(ref24))
    torch.testing.assert_close(torch.tensor(resumed["loss"]), torch.tensor(ref24_hist.loss),
                               atol=0.0, rtol=RTOL)

    # C: BJEPA's global weight sites are drawn once for the whole batch, as in one process
    set_seed(1)
    bj = models.BJEPA(20, 4, weight_prior="normal")
    fit(bj, x_c, x_t, steps=4, batch_size=64, seed=1, progress=False)
    _assert_close(load("bjepa", 0)["tensors"], _tensors(bj))

    # D: the CLI run folder, written by rank 0 alone
    run = tmp_path / "run"
    config = json.loads((run / "config.json").read_text())
    assert (config["strategy"], config["world_size"]) == ("ddp", 2)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(10))  # once, not once per rank
    results = json.loads((run / "results.json").read_text())
    assert results["world_size"] == 2
    # ... and it holds what the same command on one process gives: the model and its probe
    from bjepa.cli import main as cli_main

    single = tmp_path / "single"
    assert cli_main(["train", "--strategy", "single", "--model", "vjepa", "--sigma", "4",
                     "--steps", "10", "--batch-size", "64", "--log-every", "1",
                     "--train-steps", "300", "--test-steps", "100", "--no-progress",
                     "--out", str(single)]) == 0
    one = json.loads((single / "results.json").read_text())
    assert results["signal_r2"] == pytest.approx(one["signal_r2"], abs=1e-4)
    assert results["noise_r2"] == pytest.approx(one["noise_r2"], abs=1e-4)
    _assert_close(_tensors(load_model(run / "model.pt")), _tensors(load_model(single / "model.pt")))


def _no_lock(folder: str, names: list[str]) -> list[str]:
    return [n for n in names if n == ".lock"]


# -- single process: no torchrun, no process group -------------------------------------------------
def test_single_process_fallback_equals_fit(monkeypatch):
    """Without WORLD_SIZE, ``fit_ddp`` trains in this process and reproduces ``fit``."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = init_distributed()
    assert (ctx.rank, ctx.world_size, ctx.is_distributed) == (0, 1, False)
    assert is_rank_zero()
    x_c, x_t = _data()
    results = []
    for train in (fit, fit_ddp):
        set_seed(0)
        m = models.VJEPA(20, 4)
        h = train(m, x_c, x_t, steps=8, batch_size=50, seed=0, progress=False)
        results.append((_tensors(m), h.loss))
    _assert_close(results[1][0], results[0][0])
    torch.testing.assert_close(torch.tensor(results[1][1]), torch.tensor(results[0][1]),
                               atol=0.0, rtol=RTOL)


def test_fit_ddp_rejects_bad_arguments(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    x_c, x_t = _data()
    m = models.VJEPA(20, 4)
    with pytest.raises(ValueError, match="elbo='jit-meanfield'"):
        fit_ddp(m, x_c, x_t, steps=2, elbo="jit-meanfield")
    with pytest.raises(ValueError, match="steps"):
        fit_ddp(m, x_c, x_t, steps=0)
    with pytest.raises(ValueError, match="resume=True needs checkpoint_dir"):
        fit_ddp(m, x_c, x_t, steps=2, resume=True)


def test_init_distributed_names_missing_rendezvous(monkeypatch):
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        init_distributed("cpu")


# -- the two pieces that make the sharded run equal the single-process one --------------------
def test_shards_cover_the_global_batch_and_rescale_the_plate():
    for batch, world in [(63, 2), (64, 4), (10, 3), (7, 7)]:
        shards = _shards(1000, batch, world)
        assert [s.offset for s in shards] == [sum(s.count for s in shards[:i])
                                              for i in range(world)]
        assert sum(s.count for s in shards) == batch
        assert max(s.count for s in shards) - min(s.count for s in shards) <= 1
        # Pyro scales a shard by N / b_r; times W b_r / B, averaged over W ranks: N / B
        per_row = [s.scale * 1000 / s.count / world for s in shards]
        assert per_row == pytest.approx([1000 / batch] * world)


@pytest.mark.parametrize("make", [
    lambda b: dist.Normal(torch.randn(b, 3), torch.rand(b, 3) + 0.1).to_event(1),
    lambda b: dist.MultivariateNormal(torch.randn(b, 3), scale_tril=torch.eye(3) * 0.5),
    lambda b: dist.MixtureSameFamily(dist.Categorical(logits=torch.randn(b, 4)),
                                     dist.Normal(torch.randn(b, 4, 2), 1.0).to_event(1)),
    lambda b: dist.Normal(torch.randn(b, 2), 1.0).to_event(1).mask(torch.ones(b, dtype=bool)),
], ids=["normal", "mvn", "mixture", "masked"])
def test_widened_draw_is_the_single_process_draw(make):
    """A rank drawing its rows through the widened distribution gets, bit for bit, the rows a
    single process draws for the whole batch from the same generator state."""
    whole = make(10)
    torch.manual_seed(3)
    expected = whole.sample()
    for offset, count in [(0, 5), (5, 5), (3, 4)]:
        part = _slice(whole, offset, count)
        torch.manual_seed(3)
        got = _widen(part, 0, offset, 10 - offset - count).sample()
        assert torch.equal(got[offset:offset + count], expected[offset:offset + count])


def _slice(d: torch.distributions.Distribution, offset: int, count: int):
    """Rows ``[offset, offset + count)`` of one of the test distributions above."""
    rows = slice(offset, offset + count)
    if isinstance(d, dist.MaskedDistribution):
        return _slice(d.base_dist, offset, count).mask(d._mask[rows])
    if isinstance(d, torch.distributions.Independent):
        return type(d)(_slice(d.base_dist, offset, count), d.reinterpreted_batch_ndims)
    if isinstance(d, dist.MixtureSameFamily):
        return type(d)(dist.Categorical(logits=d.mixture_distribution.logits[rows]),
                       _slice(d.component_distribution, offset, count))
    if isinstance(d, dist.MultivariateNormal):
        return type(d)(d.loc[rows], scale_tril=d.scale_tril[rows])
    return type(d)(d.loc[rows], d.scale[rows])


def test_shard_guide_draws_this_ranks_rows_of_the_global_draw():
    """Around a guide, the handler gives rank 1 of 2 its rows of the indices and noise one
    process draws for the whole batch; a distribution it cannot widen is drawn from a private
    generator, so the shared stream stays where one process leaves it."""
    shard = _shards(10, 6, 2)[1]  # rows 3..5 of a global batch of 6 out of 10

    def guide(batch: int, extra: bool):
        with pyro.plate("data", 10, subsample_size=batch) as idx:
            a = pyro.sample("a", dist.Normal(torch.zeros(batch), 1.0))
            b = pyro.sample("b", dist.LogNormal(torch.zeros(batch), 1.0)) if extra else None
        return idx, a, b

    torch.manual_seed(0)
    idx_all, a_all, _ = guide(6, False)
    after = torch.get_rng_state()
    torch.manual_seed(0)
    handler = _ShardGuide(shard, seed=0, rank=1, device=torch.device("cpu"))
    handler.start_step(0)
    idx, a, b = handler(guide)(shard.count, True)
    assert torch.equal(idx, idx_all[3:6])
    assert torch.equal(a, a_all[3:6])
    assert b.shape == (3,) and handler.fallback_sites == {"b"}
    assert torch.equal(torch.get_rng_state(), after)


def test_train_cli_without_torchrun(tmp_path, monkeypatch, capsys):
    """``bjepa train --strategy ddp`` without torchrun trains in this process, like
    ``--strategy single``; ``--strategy single`` under a multi-process launch is refused."""
    from bjepa.cli import main

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    common = ["train", "--sigma", "4", "--steps", "4", "--batch-size", "32", "--train-steps",
              "200", "--test-steps", "100", "--no-progress"]
    rows = []
    for strategy in ("single", "ddp"):
        out = tmp_path / strategy
        assert main([*common, "--strategy", strategy, "--out", str(out)]) == 0
        rows.append(json.loads((out / "results.json").read_text()))
        assert {p.name for p in out.iterdir()} >= {"config.json", "metrics.jsonl", "model.pt",
                                                  "results.json", "checkpoints"}
    assert rows[0]["signal_r2"] == rows[1]["signal_r2"]
    assert main([*common, "--out", str(tmp_path / "single")]) == 2  # holds a run already
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main([*common, "--out", str(tmp_path / "other")]) == 2
    assert "--strategy ddp" in capsys.readouterr().err
