"""InferenceData that ArviZ's own functions accept (loo, loo_pit, plot_loo_pit, plot_ppc,
summary, compare), honest PSIS-LOO, chains from independent runs, `bjepa diagnose` on folders
with a bad checkpoint, `--compare`, and the files read by ArviZ >= 1.3 on Python >= 3.12."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from bjepa.data import noisy_tv
from bjepa.diagnostics import (
    diagnose_model,
    diagnose_run,
    loo_summary,
    save_inference_data,
    to_inference_data,
)
from bjepa.diagnostics._common import import_arviz
from bjepa.diagnostics.runs import compare_runs
from bjepa.inference import fit, load_model, save_checkpoint
from bjepa.inference.weights import weight_posterior_chains
from bjepa.models import BJEPA, VJEPA

az = import_arviz()
SIGMA, SEED, TRAIN, TEST = 4.0, 0, 600, 200
META = {"data": "noisy_tv", "sigma": SIGMA, "seed": SEED, "train_steps": TRAIN,
        "test_steps": TEST}


@pytest.fixture(scope="module")
def split():
    return noisy_tv.make_split(SIGMA, SEED, train_steps=TRAIN, test_steps=TEST)


@pytest.fixture(scope="module")
def vjepa(split):
    train, _ = split
    m = VJEPA(20, 4, init="cca")
    hist = fit(m, train.obs[:-1], train.obs[1:], steps=120, lr=1e-2, seed=0, progress=False)
    return m, hist


@pytest.fixture(scope="module")
def bjepa(split):
    train, _ = split
    m = BJEPA(20, 4, weight_prior="normal", init="cca")
    fit(m, train.obs[:-1], train.obs[1:], steps=120, lr=1e-2, seed=0, progress=False)
    return m


def _quiet():
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("ignore")
    return ctx


def test_groups_and_shapes_fit_arviz_functions(vjepa, split, tmp_path):
    model, hist = vjepa
    _, test = split
    ctx, tgt = test.obs[:80], test.obs[1:81]
    trace = ([r["step"] for r in hist.records], hist.loss)
    idata = to_inference_data(model, ctx, tgt, num_samples=40, loss_trace=trace)
    assert {"posterior", "posterior_predictive", "observed_data", "log_likelihood", "prior",
            "sample_stats"} <= set(idata.groups())
    ll, ll_joint = idata.log_likelihood["z_target"], idata.log_likelihood["z_target_joint"]
    assert ll.dims == idata.posterior_predictive["z_target"].dims == \
        ("chain", "draw", "time", "latent_dim")
    assert ll_joint.dims == ("chain", "draw", "time")
    # at the observed value; the diagonal head's joint density is the product of marginals
    obs = torch.as_tensor(idata.observed_data["z_target"].values)
    np.testing.assert_allclose(ll_joint.values[0, 0], model.predict(ctx).log_prob(obs).numpy(),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ll.values.sum(-1), ll_joint.values, rtol=1e-4, atol=1e-4)
    assert idata.prior["z_target"].shape == idata.posterior["z_target"].shape
    assert abs(float(idata.prior["z_target"].std()) - 1.0) < 0.05      # N(0, I)
    loss = idata.sample_stats["training_loss"]
    assert loss.dims == ("chain", "step") and loss.shape == (1, len(hist.records))
    assert "R-hat needs several independent runs" in idata.posterior.attrs["chains"]

    path = save_inference_data(idata, tmp_path / "idata.nc")
    again = az.from_netcdf(path)
    quiet = _quiet()
    try:
        pit = az.loo_pit(again, y="z_target")
        assert pit.shape == (80, 4) and float(pit.min()) >= 0 and float(pit.max()) <= 1
        loo = az.loo(again, var_name="z_target_joint")
        assert loo.p_loo == pytest.approx(0.0, abs=1e-9)      # no global latents
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        az.plot_loo_pit(again, y="z_target")
        az.plot_ppc(again, var_names=["z_target"], num_pp_samples=20)
        plt.close("all")
    finally:
        quiet.__exit__(None, None, None)


def test_loo_summary_is_honest():
    rng = np.random.default_rng(0)
    s, n = 200, 100

    def idata(ll):
        return az.from_dict(log_likelihood={"y_joint": ll[None]},
                            posterior={"w": rng.normal(size=(1, s))})

    # no global latents: the same log-likelihood for every draw
    const = loo_summary(idata(np.broadcast_to(rng.normal(size=n), (s, n)).copy()))
    assert const["applicable"] is False and const["reliable"] and const["p_loo"] == 0.0
    # a well-behaved posterior: small, smooth variation across draws
    w = rng.normal(size=(s, 1))
    good = loo_summary(idata(-0.5 * (rng.normal(size=n) - 0.05 * w) ** 2))
    assert good["applicable"] and good["reliable"], good["problems"]
    # draws that each fit a few observations extremely well: heavy-tailed weights, p_loo ≫ N/5
    wild = rng.normal(size=(s, n)) * 30.0
    bad = loo_summary(idata(wild), num_parameters=5)
    assert bad["reliable"] is False
    assert any("k̂ > 0.7" in p for p in bad["problems"])
    assert any("p_loo" in p for p in bad["problems"])


def test_unreliable_loo_enters_the_verdict_and_report(bjepa, split, tmp_path):
    from bjepa.diagnostics import write_diagnosis

    _, test = split
    diag = diagnose_model(bjepa, test.obs[:60], test.obs[1:61], num_samples=100,
                          psis_particles=50)
    assert diag.loo["applicable"] and diag.loo["num_parameters"] > 0
    loo_reason = [r for r in diag.reasons if r.startswith("PSIS-LOO cannot be trusted")]
    assert bool(loo_reason) == (not diag.loo["reliable"])
    if not diag.loo["reliable"]:
        assert diag.verdict == "unhealthy"
    report = write_diagnosis(diag, tmp_path / "d")["report"].read_text()
    assert "p_loo" in report and ("(reliable)" in report or "**unreliable**" in report)


def test_independent_runs_become_chains_with_rhat(bjepa, split):
    train, test = split
    chains = weight_posterior_chains(bjepa, train.obs[:200], train.obs[1:201], num_chains=2,
                                     steps=60)
    idata = to_inference_data(chains, test.obs[:40], test.obs[1:41], num_samples=30)
    assert idata.posterior.sizes["chain"] == 2
    assert idata.posterior.attrs["chains"].startswith("2 chains")
    quiet = _quiet()
    try:
        rhat = az.rhat(idata, var_names=["predictor_net_weight"])["predictor_net_weight"]
    finally:
        quiet.__exit__(None, None, None)
    assert np.isfinite(rhat.values).all()
    # the encoders are untouched: every chain scores the same observed latents
    assert torch.equal(chains[0].encode(test.obs[:5]), bjepa.encode(test.obs[:5]))
    other = copy.deepcopy(bjepa)
    with torch.no_grad():
        next(other.context_encoder.parameters()).add_(0.5)
        other._ema.update(other.context_encoder, 0.0)
    with pytest.raises(ValueError, match="do not share one observed space"):
        to_inference_data([bjepa, other], test.obs[:40], test.obs[1:41], num_samples=10)


def _fast(**kw):
    return {"num_samples": 20, "max_rows": 40, "psis_particles": 50, **kw}


def test_diagnose_folder_with_a_bad_checkpoint_and_merged_summary(vjepa, tmp_path):
    model, _ = vjepa
    run = tmp_path / "run"
    save_checkpoint(run / "checkpoints" / "good.pt", model, meta=META)
    (run / "checkpoints" / "bad.pt").write_bytes(b"not a checkpoint")
    failures: list = []
    results = diagnose_run(run, failures=failures, **_fast())
    assert [d.name for d, _ in results] == ["good"]
    assert [f.name for f in failures] == ["bad"] and "corrupt" in failures[0].error
    summary = (run / "diagnostics" / "summary.md").read_text()
    assert "[good](good/report.md)" in summary and "`bad`: cannot read checkpoint" in summary
    # one checkpoint again: its row is replaced, the others are kept
    save_checkpoint(run / "checkpoints" / "second.pt", model, meta=META)
    diagnose_run(run, checkpoint="second", **_fast())
    rows = json.loads((run / "diagnostics" / "summary.json").read_text())
    assert sorted(r["name"] for r in rows) == ["bad", "good", "second"]
    # a folder where every checkpoint fails raises the reason
    (tmp_path / "allbad" / "checkpoints").mkdir(parents=True)
    (tmp_path / "allbad" / "checkpoints" / "x.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot read checkpoint x.pt"):
        diagnose_run(tmp_path / "allbad", **_fast())


def test_cli_compare_ranks_one_space_and_refuses_others(bjepa, vjepa, split, tmp_path, capsys):
    from bjepa.cli import main

    train, _ = split
    run = tmp_path / "run"
    (chain,) = weight_posterior_chains(bjepa, train.obs[:200], train.obs[1:201],
                                       num_chains=2, steps=40)[:1]
    save_checkpoint(run / "checkpoints" / "bjepa-a.pt", bjepa, meta=META)
    save_checkpoint(run / "checkpoints" / "bjepa-refit.pt", chain, meta=META)
    save_checkpoint(run / "checkpoints" / "vjepa.pt", vjepa[0], meta=META)  # its own space
    code = main(["diagnose", str(run), "--num-samples", "50", "--max-rows", "40",
                 "--psis-particles", "50", "--compare"])
    out = capsys.readouterr()
    assert code == 0, out.err
    diag = run / "diagnostics"
    table = (diag / "compare.csv").read_text()
    assert "bjepa-a" in table and "bjepa-refit" in table and "vjepa" not in table
    md = (diag / "compare.md").read_text()
    assert "`vjepa`: its observed values (target latents) differ" in md
    assert (diag / "compare.png").stat().st_size > 5000
    # nothing to compare: a clear refusal, exit 2
    solo = tmp_path / "solo"
    save_checkpoint(solo / "checkpoints" / "only.pt", vjepa[0], meta=META)
    assert main(["diagnose", str(solo), "--num-samples", "20", "--max-rows", "40",
                 "--compare"]) == 2
    assert "no two diagnosed models score the same observed values" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no inference_data.nc"):
        compare_runs(diag, names=["missing"])


def test_train_cli_weight_prior(tmp_path, capsys):
    from bjepa.cli import main

    out = tmp_path / "t"
    assert main(["train", "--model", "bjepa", "--weight-prior", "laplace", "--steps", "5",
                 "--train-steps", "200", "--test-steps", "100", "--out", str(out),
                 "--no-progress"]) == 0
    model = load_model(out)                     # the run folder: its newest checkpoint
    assert model.weight_guide is not None and model.hparams["weight_prior"] == "laplace"
    assert main(["train", "--model", "vjepa", "--weight-prior", "normal", "--steps", "5",
                 "--out", str(tmp_path / "v"), "--no-progress"]) == 2
    assert "--weight-prior applies to --model bjepa only" in capsys.readouterr().err


# -- ArviZ >= 1.3 (DataTree) on Python >= 3.12 reads the files bjepa wrote ---------------------
ARVIZ1_SCRIPT = textwrap.dedent("""
    import json, sys, warnings
    warnings.simplefilter("ignore")
    sys.modules["bjepa"] = None
    import arviz as az
    a, b = az.from_netcdf(sys.argv[1]), az.from_netcdf(sys.argv[2])
    loo = az.loo(a, var_name="z_target_joint")
    pit = az.loo_pit(a, var_names="z_target")
    summ = az.summary(a, var_names=["predictor_net_weight"])
    cmp = az.compare({"a": a, "b": b}, var_name="z_target_joint")
    # bjepa's ArviZ-facing module (numpy, xarray and ArviZ only), loaded by its file path:
    # writing a file and summarising LOO as bjepa does, under ArviZ 1.x
    import importlib.util
    import numpy as np
    spec = importlib.util.spec_from_file_location("bjepa_arviz", sys.argv[3])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    post = a["posterior"]["predictor_net_weight"].values
    ll = a["log_likelihood"]["z_target_joint"].values
    groups = {"posterior": mod.dataset({"w": post}, {}, {}, {"source": "bjepa"}),
              "log_likelihood": mod.dataset(
                  {"z_target_joint": ll, "flat_joint": np.broadcast_to(ll[:1, :1], ll.shape)},
                  {"z_target_joint": ["time"], "flat_joint": ["time"]}, {}, {})}
    tree = mod.build(groups)
    mod.save(tree, sys.argv[4])
    again = az.from_netcdf(sys.argv[4])
    summary = mod.summarise_loo(again, "z_target_joint", num_parameters=40)
    exact = mod.summarise_loo(again, "flat_joint")
    ranked = az.compare({"varying": mod.elpd(again, "z_target_joint"),
                         "flat": mod.elpd(again, "flat_joint")})
    print(json.dumps({"version": az.__version__, "tree": type(a).__name__,
                      "elpd": float(loo.elpd), "p": float(loo.p),
                      "pit_shape": list(pit["z_target"].shape),
                      "rhat": [float(x) for x in summ["r_hat"]],
                      "ranked": list(cmp.index), "own_tree": type(tree).__name__,
                      "own_loo": summary, "own_exact": exact,
                      "own_ranked": sorted(ranked.index)}))
""")


def _arviz1_python() -> str | None:
    """A Python >= 3.12 with ArviZ >= 1.3 (and only its readers): $BJEPA_ARVIZ1_PYTHON, or a
    venv built once under ~/.cache/bjepa/arviz1 from a python3.12/3.13 on the machine."""
    given = os.environ.get("BJEPA_ARVIZ1_PYTHON")
    if given:
        return given
    venv = Path(os.environ.get("BJEPA_ARVIZ1_VENV", Path.home() / ".cache/bjepa/arviz1"))
    py = venv / "bin" / "python"
    if py.exists():
        return str(py)
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [shutil.which(f"python3.{m}") for m in (12, 13, 14)]
    candidates += [str(p) for p in sorted(root.glob("versions/3.1[2-9]*/bin/python"))]
    base = next((c for c in candidates if c and subprocess.run(
        [c, "-c", "import sys, venv; assert sys.version_info >= (3, 12)"],
        capture_output=True, check=False).returncode == 0), None)
    if base is None:
        return None
    subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", "arviz>=1.3", "h5netcdf",
                    "h5py"],
                   check=True, timeout=1200)
    return str(py)


@pytest.mark.slow
def test_files_open_in_arviz_1_on_python_312(bjepa, split, tmp_path):
    py = _arviz1_python()
    if py is None:
        pytest.skip("no Python >= 3.12 on this machine to run ArviZ >= 1.3")
    train, test = split
    chains = weight_posterior_chains(bjepa, train.obs[:300], train.obs[1:301], num_chains=2,
                                     steps=150)
    a = save_inference_data(to_inference_data(chains, test.obs[:100], test.obs[1:101],
                                              num_samples=200), tmp_path / "a.nc")
    b = save_inference_data(to_inference_data(bjepa, test.obs[:100], test.obs[1:101],
                                              num_samples=200), tmp_path / "b.nc")
    module = Path(__file__).parents[1] / "bjepa" / "diagnostics" / "_arviz.py"
    res = subprocess.run([py, "-c", ARVIZ1_SCRIPT, str(a), str(b), str(module),
                          str(tmp_path / "own.nc")], capture_output=True, text=True,
                         timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert int(got["version"].split(".")[0]) >= 1 and got["tree"] == "DataTree"
    assert np.isfinite(got["elpd"]) and got["p"] > 0
    assert got["pit_shape"] == [100, 4]
    assert all(np.isfinite(got["rhat"]))                      # two chains: R-hat defined
    assert sorted(got["ranked"]) == ["a", "b"]
    assert got["own_tree"] == "DataTree"
    assert got["own_loo"]["applicable"] and got["own_loo"]["elpd_loo"] == pytest.approx(
        got["elpd"], rel=1e-6)
    assert got["own_exact"]["applicable"] is False and got["own_exact"]["p_loo"] == 0.0
    assert got["own_ranked"] == ["flat", "varying"]
    py_version = subprocess.run([py, "-c", "import sys; print(sys.version_info[:2])"],
                                capture_output=True, text=True, check=True).stdout
    assert py_version.strip() >= "(3, 12)"
    assert sys.version_info[:2] >= (3, 11)


def test_diagnose_exports_weight_posterior_refits_as_chains(bjepa, tmp_path):
    from bjepa.diagnostics import load_inference_data

    run = tmp_path / "run"
    save_checkpoint(run / "checkpoints" / "b.pt", bjepa, meta=META)
    results = diagnose_run(run, chains=2, chain_steps=10, **_fast())
    assert [d.settings.get("chains") for d, _ in results] == [2]
    b = load_inference_data(run / "diagnostics" / "b" / "inference_data.nc")
    assert b.posterior.sizes["chain"] == 2 and b.posterior.attrs["chains"].startswith("2 chains")
    with pytest.raises(ValueError, match="chains"):
        diagnose_run(run, chains=0, **_fast())
