"""The β sweep and the EMA τ ablation: direction of the β ends, τ = 0 as a
stop-gradient copy, the CLI run folders, resume and validation.

See docs/method.md#beta-sweep and docs/method.md#ema-tau-ablation."""

import json

import pytest
import torch

from bjepa.cli import main
from bjepa.experiments.sweeps import (
    BetaSweepConfig,
    TauAblationConfig,
    format_table,
    run_beta_sweep,
    run_tau_ablation,
    summarise,
    tau_label,
)
from bjepa.inference import fit
from bjepa.inference.ema import EMATarget
from bjepa.models import VJEPA

SMALL = dict(sigmas=[8.0], seeds=[0], steps=300, lr=1e-2, batch_size=None, train_steps=600,
             test_steps=400, progress=False)


@pytest.fixture(scope="module")
def beta_ends():
    torch.set_num_threads(1)
    rows = run_beta_sweep(BetaSweepConfig(betas=[1e-4, 10.0], **SMALL))
    return {r["beta"]: r for r in rows}


def test_small_beta_keeps_information_large_beta_collapses_onto_prior(beta_ends):
    small, large = beta_ends[1e-4], beta_ends[10.0]
    # the rate term: KL(q ‖ prior) per dimension falls with β ...
    assert small["kl_per_dim"] > 2 * large["kl_per_dim"]
    # ... because the target posterior widens towards the prior's unit scale ...
    assert large["target_sd"] > 3 * small["target_sd"]
    # ... and so carries less information about x_T, in fewer informative units
    assert small["info_per_dim"] > large["info_per_dim"]
    assert large["informative_units"] <= small["informative_units"]
    # small β: the predictive's 90 % intervals hold 90 % of the next latent's posterior draws
    # (measured 0.900; ±0.05 is about 3 standard errors over 400 test rows) ...
    assert small["coverage90"] == pytest.approx(0.9, abs=0.05)
    # ... large β: the target posterior widens (sd 0.50) past what the predictor spreads (0.20),
    # so the intervals are too narrow for it (measured 0.63)
    assert large["predictive_sd"] < large["target_sd"] and large["coverage90"] < 0.8
    assert large["nll"] > small["nll"]
    for row in beta_ends.values():  # the probe's state forecast covers at least nominally
        assert row["state_coverage90"] >= 0.85
        assert torch.isfinite(torch.tensor([row["nll"], row["state_nll"]])).all()


def test_ema_update_with_tau_zero_is_an_exact_copy():
    src = torch.nn.Linear(5, 3)
    ema = EMATarget(src)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p))
    ema.update(src, 0.0)
    for pt, ps in zip(ema.module.parameters(), src.parameters(), strict=True):
        assert torch.equal(pt, ps) and not pt.requires_grad


def test_tau_zero_target_is_stop_gradient_copy_of_context_encoder():
    x = torch.randn(200, 6)
    model = VJEPA(6, 2, tau=0.0, beta=0.01)
    fit(model, x[:-1], x[1:], steps=20, seed=0, progress=False)
    with torch.no_grad():
        assert torch.allclose(model.encode_target(x), model.encode(x))
    target = model.target_dist(x).mean
    assert not target.requires_grad  # no gradient reaches the encoder through the target


def test_tau_ablation_rows_and_summary():
    cfg = TauAblationConfig(taus=[0.0, "cosine:0.99:1"], **{**SMALL, "steps": 50})
    rows = run_tau_ablation(cfg)
    assert [r["tau"] for r in rows] == [0.0, "cosine:0.99:1"]
    summary = summarise(rows, "tau")
    assert [s["n"] for s in summary] == [1, 1]
    assert summary[0]["signal_r2_sd"] == 0.0
    assert "cos 0.99→1" in format_table(summary, "tau")


def test_summarise_mean_and_sd_over_seeds():
    rows = [{"beta": 0.1, "sigma": 8.0, "seed": s, "signal_r2": v, "kl_per_dim": 2 * v}
            for s, v in enumerate([0.5, 0.7, 0.9])]
    rows.append({"beta": 1.0, "sigma": 8.0, "seed": 0, "signal_r2": 0.2, "kl_per_dim": 0.1})
    out = summarise(rows, "beta")
    assert [(s["beta"], s["n"]) for s in out] == [(0.1, 3), (1.0, 1)]
    assert out[0]["signal_r2_mean"] == pytest.approx(0.7)
    assert out[0]["signal_r2_sd"] == pytest.approx(0.2)
    assert out[0]["kl_per_dim_mean"] == pytest.approx(1.4)
    assert tau_label(0.996) == "0.996" and tau_label("cosine") == "cos 0.99→1"


def test_beta_sweep_cli_writes_run_folder_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["beta-sweep", "--betas", "1e-4,10", "--sigmas", "8", "--seeds", "0-1", "--steps",
            "20", "--train-steps", "300", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    for name in ["config.json", "metrics.jsonl", "results.csv", "results.json", "summary.json",
                 "beta_sweep.png"]:
        assert (out / name).stat().st_size > 0, name
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 2 * 2
    assert {"beta", "sigma", "seed", "signal_r2", "noise_r2", "active_units", "kl_per_dim",
            "coverage90", "nll", "state_coverage90", "state_nll"} <= set(rows[0])
    assert json.loads((out / "config.json").read_text())["betas"] == [1e-4, 10.0]
    assert "KL/dim" in capsys.readouterr().out
    # resuming a finished run keeps every row as it was (nothing is retrained)
    assert main(["beta-sweep", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert json.loads((out / "results.json").read_text()) == rows
    # a second fresh run into the same folder is refused
    assert main(argv) == 2


def test_tau_ablation_cli_writes_run_folder(tmp_path):
    out = tmp_path / "tau"
    assert main(["tau-ablation", "--taus", "0,0.99,cosine:0.99:1", "--sigmas", "0",
                 "--seeds", "0", "--steps", "10", "--train-steps", "300", "--out", str(out),
                 "--no-progress"]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert [r["tau"] for r in rows] == [0.0, 0.99, "cosine:0.99:1"]
    assert (out / "tau_ablation.png").stat().st_size > 0


@pytest.mark.parametrize("argv, message", [
    (["beta-sweep", "--betas", "1e-4,-1"], "beta"),
    (["beta-sweep", "--steps", "0"], "steps"),
    (["tau-ablation", "--taus", "0.5,1.5"], "tau"),
    (["tau-ablation", "--taus", "cosine:a:b"], "tau"),
    (["tau-ablation", "--seeds", "0", "--sigmas", "-1"], "sigma"),
])
def test_cli_rejects_bad_values(argv, message, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
