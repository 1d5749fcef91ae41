"""Smoke tests: the CLI writes every promised file; every example runs with its quick flags."""

import ast
import json
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from bjepa.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _quick_args(path: Path) -> list[str] | None:
    """Every example declares ``QUICK_ARGS = [...]``: its quickest command-line flags."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "QUICK_ARGS"
                                                for t in node.targets):
            return ast.literal_eval(node.value)
    return None


EXAMPLES = {p.name: _quick_args(p) for p in sorted((ROOT / "examples").glob("*.py"))}


def test_noisy_tv_cli_writes_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["noisy-tv", "--quick", "--models", "vjepa,jepa,vae,ar", "--sigmas", "0,8",
               "--seeds", "0-1", "--steps", "20", "--out", str(out), "--no-progress"])
    assert rc == 0
    for name in ["config.json", "metrics.jsonl", "results.csv", "results.json",
                 "r2_vs_sigma.png"]:
        assert (out / name).stat().st_size > 0, name
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 4 * 2 * 2
    assert {"model", "sigma", "seed", "signal_r2", "noise_r2", "train_seconds"} <= set(rows[0])
    assert "signal R2" in capsys.readouterr().out
    # a second run into the same folder is refused, not interleaved
    assert main(["noisy-tv", "--quick", "--steps", "2", "--out", str(out)]) == 2


def test_cli_rejects_bad_values(tmp_path, capsys):
    assert main(["noisy-tv", "--models", "gpt", "--out", str(tmp_path / "x")]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["noisy-tv", "--beta", "-1", "--out", str(tmp_path / "y")]) == 2


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "bjepa.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "noisy-tv" in out and "diagnose" in out


def test_every_example_declares_quick_args():
    missing = [name for name, args in EXAMPLES.items() if args is None]
    assert not missing, f"examples without a QUICK_ARGS list: {missing}"


@pytest.mark.parametrize("script", sorted(EXAMPLES))
def test_example_runs(script, monkeypatch, tmp_path, capsys):
    """Each example runs with its quick flags and prints numeric results; every file it
    writes is non-empty, every JSON file parses and every figure is a PNG."""
    monkeypatch.chdir(tmp_path)  # examples write their run folders under ./runs
    monkeypatch.setattr(sys, "argv", [script, *EXAMPLES[script]])
    runpy.run_path(str(ROOT / "examples" / script), run_name="__main__")
    out = capsys.readouterr().out
    assert re.search(r"\d\.\d", out), f"{script} printed no results:\n{out[-2000:]}"
    for path in (p for p in tmp_path.rglob("*") if p.is_file() and p.name != ".lock"):
        assert path.stat().st_size > 0, path
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path


@pytest.mark.parametrize("first", ["from bjepa import models", "import bjepa.inference",
                                   "import bjepa.models.base", "import bjepa.inference.ema",
                                   "import bjepa.priors"])
def test_any_module_can_be_imported_first(first):
    """Circular imports only show when a module is the first one a fresh process imports."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", first], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
