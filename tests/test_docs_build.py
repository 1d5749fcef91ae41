"""The documentation builds and stands alone.

* A quick Sphinx build (notebooks not executed: ``nb_execution_mode=off``) with warnings as
  errors, so a broken docstring, Markdown link or cross-reference to bjepa's API fails the
  suite; every public name of the documented modules must be in the built ``objects.inv``.
  ``make docs`` is the full build, which also executes the tutorials.
* Every section of ``docs/method.md`` that a file in the repository links to exists, and no
  shipped file points outside the repository.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTED = ["bjepa.models", "bjepa.inference", "bjepa.priors", "bjepa.diagnostics",
              "bjepa.data", "bjepa.planning", "bjepa.metrics"]
SHIPPED = [ROOT / "README.md", ROOT / "Makefile", ROOT / "pyproject.toml"] + [
    p for folder in ("bjepa", "models", "inference", "docs", "examples", "tests", "benchmarks")
    for p in (ROOT / folder).rglob("*")
    if p.suffix in {".py", ".md", ".rst", ".txt", ".cfg", ".toml", ".sh"}
    and "_build" not in p.parts and "__pycache__" not in p.parts
]


def slugify(title: str) -> str:
    """The GitHub / MyST heading anchor of a Markdown title."""
    title = re.sub(r"[`*_]", "", title.strip().lower())
    return re.sub(r"[^\w\- ]", "", title).replace(" ", "-")


def method_anchors() -> set[str]:
    text = (ROOT / "docs" / "method.md").read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return {slugify(m.group(2)) for m in re.finditer(r"^(#{1,6}) (.+)$", text, flags=re.M)}


def test_method_anchors_named_in_the_repository_exist():
    anchors = method_anchors()
    assert {"the-vjepa-objective", "noisy-tv", "collapse"} <= anchors
    missing = []
    for path in SHIPPED:
        text = path.read_text(encoding="utf-8", errors="replace")
        for m in re.finditer(r"method\.md#([\w\-]+)|, #([\w\-]+)\)", text):
            anchor = m.group(1) or m.group(2)
            if anchor not in anchors:
                missing.append(f"{path.relative_to(ROOT)}: #{anchor}")
    assert not missing, f"links to sections that docs/method.md does not have: {missing}"


def test_shipped_files_do_not_point_outside_the_repository():
    bad = []
    for path in SHIPPED:
        if path == Path(__file__).resolve():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for needle in ("SPEC §", "SPEC.md", "../shared", "/work/"):
            if needle in text:
                bad.append(f"{path.relative_to(ROOT)}: {needle!r}")
    assert not bad, f"shipped files refer to files outside the repository: {bad}"


def _inventory(path: Path) -> dict[str, set[str]]:
    from sphinx.util.inventory import InventoryFile

    with path.open("rb") as f:
        inv = InventoryFile.load(f, "", lambda base, uri: uri)
    data = getattr(inv, "data", inv)
    return {kind: set(entries) for kind, entries in data.items()}


def test_sphinx_build_quick(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_nb")
    pytest.importorskip("furo")
    out = tmp_path / "html"
    env = dict(os.environ, BJEPA_DOCS_EXECUTE="off", PYTHONWARNINGS="ignore")
    env.pop("BJEPA_DOCS_INTERSPHINX", None)  # offline: no inventories to fetch
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-b", "html", "-c", "docs", "-W", "--keep-going",
         "-q", "-d", str(tmp_path / "doctrees"), ".", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"sphinx-build failed:\n{proc.stdout}\n{proc.stderr}"

    inv = _inventory(out / "objects.inv")
    python_names = set().union(*(v for k, v in inv.items() if k.startswith("py:")))
    missing = []
    for modname in DOCUMENTED:
        module = importlib.import_module(modname)
        assert modname in inv["py:module"]
        for name in module.__all__:
            obj = getattr(module, name)
            full = f"{modname}.{name}"
            if isinstance(obj, types.ModuleType):
                ok = obj.__name__ in inv["py:module"]
            else:
                ok = full in python_names
            if not ok:
                missing.append(full)
    assert not missing, f"public names missing from the API reference: {missing}"
    for page in ("docs/index.html", "docs/method.html", "docs/tutorials/quickstart.html",
                 "docs/api/models.html", "README.html", "index.html"):
        assert (out / page).is_file(), page
