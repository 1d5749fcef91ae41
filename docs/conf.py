"""Sphinx configuration for bjepa's documentation.

The source directory is the repository root (``sphinx-build -c docs . build/docs/html``) so that
the Markdown pages keep the relative links that work on a code host: ``README.md`` ->
``docs/method.md``, ``docs/atari.md`` -> ``../README.md``, ``benchmarks/README.md``. Only the
files in ``include_patterns`` become pages. ``make docs`` builds with warnings as errors.

Tutorials in ``docs/tutorials/`` are notebooks kept as text (MyST Markdown with a jupytext
header); myst-nb executes them at build time and caches the outputs in
``build/docs/jupyter_cache`` (``-D nb_execution_mode=off`` builds without running them, which is
what the fast test in ``tests/test_docs_build.py`` does).

Intersphinx (PyTorch, Pyro, ArviZ, NumPy, Python) needs the projects' ``objects.inv`` files,
which are fetched over the network. Builds here must work offline, so intersphinx is off unless
``BJEPA_DOCS_INTERSPHINX=1`` is set (do that where the documentation sites are reachable,
e.g. when publishing); references to those projects then become links. Either way they never
fail the build (see ``nitpick_ignore_regex``), while a broken reference to bjepa's own API does.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bjepa  # noqa: E402

project = "bjepa"
author = "The bjepa developers"
copyright = "2026, The bjepa developers"  # noqa: A001 - Sphinx's name
release = bjepa.__version__
version = release

root_doc = "docs/index"
extensions = [
    "myst_nb",  # MyST Markdown pages and text notebooks (includes myst-parser)
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
]
if os.environ.get("BJEPA_DOCS_EXECUTE") != "off":  # the quick test build skips source pages
    extensions.append("sphinx.ext.viewcode")
include_patterns = ["README.md", "docs/**", "benchmarks/README.md"]
exclude_patterns = [
    ".venv", ".git", "build", "runs", "dist", "**/__pycache__", "**/.ipynb_checkpoints",
    ".pytest_cache", ".ruff_cache", ".hypothesis", "*.egg-info", "docs/_build",
    "docs/figures", "docs/results", "docs/atari", "benchmarks/results",
]
source_suffix = {".md": "myst-nb", ".rst": "restructuredtext"}

# -- MyST --------------------------------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "dollarmath", "deflist"]
myst_heading_anchors = 3  # GitHub-style anchors, e.g. docs/method.md#the-vjepa-objective

# -- notebooks (myst-nb) -----------------------------------------------------------------------
nb_execution_mode = os.environ.get("BJEPA_DOCS_EXECUTE", "cache")
nb_execution_cache_path = str(ROOT / "build" / "docs" / "jupyter_cache")
nb_execution_timeout = 300
nb_execution_raise_on_error = True  # a tutorial that fails fails the build
nb_execution_show_tb = True
nb_merge_streams = True

# -- autodoc -----------------------------------------------------------------------------------
autodoc_default_options = {
    "members": True,
    "undoc-members": True,
    "show-inheritance": True,
    "member-order": "bysource",
}
autosummary_generate = False  # tables only; the entries are on the same page
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autodoc_class_signature = "mixed"
napoleon_google_docstring = True
napoleon_numpy_docstring = True
napoleon_use_rtype = False

# A reference to bjepa's own API that does not resolve fails the build; references into other
# projects do not (they resolve when intersphinx is on, and stay plain text otherwise).
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|pyro|arviz|az|numpy|np|scipy|matplotlib|xarray|typing|collections"
               r"|pathlib|os|io|logging|concurrent|dataclasses|functools|enum|abc)(\..*)?"),
    (r"py:.*", r"(Tensor|Distribution|Module|nn\.Module|Path|Callable|Iterable|Iterator"
               r"|Sequence|Mapping|Any|Figure|Axes|InferenceData|PyroModule|TraceEnum_ELBO"
               r"|ELBO|Trace_ELBO|SVI|DataLoader|Dataset|ndarray|PathLike)"),
    (r"py:class", r"(optional|callable|array-like|default.*|string|tensor|int|float|bool|str"
                  r"|dict|list|tuple|None|type|object|bytes|sequence|iterable)"),
    (r"py:.*", r"bjepa\..*\._.*"),  # private helpers named in signatures
    (r"py:.*", r".*TypeVar.*|.*\.T$|^T$"),
    (r"py:.*", r"(TauSchedule|ExpandedDistribution)"),  # type alias; pyro internal
    (r"py:func", r"load_state_dict"),  # torch.nn.Module's
]

if os.environ.get("BJEPA_DOCS_INTERSPHINX") == "1":
    extensions.append("sphinx.ext.intersphinx")
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "torch": ("https://docs.pytorch.org/docs/stable", None),
        "pyro": ("https://docs.pyro.ai/en/stable", None),
        "arviz": ("https://python.arviz.org/en/stable", None),
        "numpy": ("https://numpy.org/doc/stable", None),
    }

# -- HTML --------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"bjepa {release}"
html_static_path = []
html_extra_path = ["_extra"]  # index.html at the site root -> docs/index.html
html_show_sourcelink = False
suppress_warnings = [
    "mystnb.unknown_mime_type",
]


# -- the reference pages -----------------------------------------------------------------------
# ``.. bjepa-api:: bjepa.models`` expands at build time to: the package's docstring; one entry per
# name in its ``__all__`` (so a new public name appears without editing the pages, and the test
# checks that every one of them is there); then, per public submodule, its docstring and the
# public classes, functions and documented constants defined there that the package does not
# export (those are documented once, under their public name).


def _key(obj):
    # compare objects by where they are defined (robust to autodoc re-importing modules)
    return (getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)) \
        if hasattr(obj, "__qualname__") else ("id", id(obj))


def _entry(full, obj):
    import inspect

    if inspect.isclass(obj):
        return [f".. autoclass:: {full}", ""]
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return [f".. autofunction:: {full}", ""]
    return [f".. autodata:: {full}", "   :no-value:", ""]


def _api_lines(package_name):
    import importlib
    import inspect
    import pkgutil

    from sphinx.pycode import ModuleAnalyzer

    package = importlib.import_module(package_name)
    public = list(getattr(package, "__all__", ()))
    lines = [f".. automodule:: {package_name}", "   :no-members:", ""]
    names = [name for name in public if not inspect.ismodule(getattr(package, name))]
    if names:  # a table of the public names with their one-line summaries
        lines += [".. autosummary::", "   :nosignatures:", ""]
        lines += [f"   {name}" for name in names] + [""]
    exported = set()
    for name in names:
        obj = getattr(package, name)
        exported.add(_key(obj))
        lines += _entry(f"{package_name}.{name}", obj)
    if not hasattr(package, "__path__"):
        return lines
    subs = sorted(info.name for info in pkgutil.iter_modules(package.__path__)
                  if not info.name.startswith("_"))
    if subs:
        lines += ["Modules", "-------", ""]
    for name in subs:
        full = f"{package_name}.{name}"
        module = importlib.import_module(full)
        title = f"``{full}``"
        lines += [title, "~" * len(title), "", f".. automodule:: {full}", "   :no-members:"]
        if name in public and not inspect.ismodule(getattr(package, name)):
            lines += ["   :no-index:"]  # a module named like a public function (``fit``)
        lines += [""]
        try:
            documented = {attr for (_, attr) in ModuleAnalyzer.for_module(full).find_attr_docs()}
        except Exception:  # no source available
            documented = set()
        for attr, obj in vars(module).items():
            if attr.startswith("_") or _key(obj) in exported:
                continue
            code = inspect.isclass(obj) or inspect.isfunction(obj)
            if code and getattr(obj, "__module__", None) == full or (
                    attr in documented and not inspect.ismodule(obj) and not callable(obj)):
                lines += _entry(f"{full}.{attr}", obj)
    return lines


def _api_directive():
    from docutils.parsers.rst import Directive
    from docutils.statemachine import StringList

    class API(Directive):
        required_arguments = 1
        has_content = False

        def run(self):
            lines = _api_lines(self.arguments[0])
            source = self.state_machine.input_lines.source(
                self.lineno - self.state_machine.input_offset - 1)
            self.state_machine.insert_input(StringList(lines, source), source)
            return []

    return API


# -- references by a module path or a short name ------------------------------------------------
# Docstrings name objects the way their module sees them: ``fit_replicas`` inside
# bjepa.inference.replicas, ``bjepa.inference.replicas.fit_replicas`` elsewhere. The reference
# documents each object once, under its public name (``bjepa.inference.fit_replicas``). A Python
# reference that Sphinx cannot resolve is matched to the one documented bjepa object whose name
# ends with the same components; if there is none (or more than one), the reference stays broken
# and, with ``nitpicky``, fails the build.


def _resolve_by_suffix(app, env, node, contnode):
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    if not target or target.startswith(("torch", "pyro", "numpy", "arviz")):
        return None
    domain = env.get_domain("py")
    parts = target.lstrip(".~").split(".")
    objects = domain.objects
    for drop in range(len(parts) - 2, 0, -1):  # bjepa.data.sources.load -> bjepa.data.load
        name = ".".join(parts[:drop] + parts[drop + 1:])
        if name.startswith("bjepa.") and name in objects:
            return domain.resolve_xref(env, node.get("refdoc"), app.builder,
                                       node.get("reftype"), name, node, contnode)
    if node.get("reftype") in {"meth", "attr"} and len(parts) >= 2:
        # Class.method where the method is inherited: point at the base class that documents it
        owners = [name for name in objects if name.startswith("bjepa.")
                  and (name == ".".join(parts[:-1]) or name.endswith("." + parts[-2]))
                  and objects[name].objtype == "class"]
        for owner in owners:
            try:
                module_name, _, cls_name = owner.rpartition(".")
                cls = getattr(importlib.import_module(module_name), cls_name)
            except (ImportError, AttributeError):
                continue
            for base in getattr(cls, "__mro__", ())[1:]:
                for base_name in (f"{base.__module__}.{base.__qualname__}",):
                    name = f"{base_name}.{parts[-1]}"
                    if name in objects:
                        return domain.resolve_xref(env, node.get("refdoc"), app.builder,
                                                   node.get("reftype"), name, node, contnode)
    for n_tail in (2, 1):
        if len(parts) < n_tail:
            continue
        tail = "." + ".".join(parts[-n_tail:])
        found = [name for name, entry in objects.items()
                 if name.startswith("bjepa.") and name.endswith(tail)
                 and not getattr(entry, "aliased", False)]
        if len(found) > 1:  # prefer the candidates inside the referring module's package
            context = (node.get("py:module") or "").rsplit(".", 1)[0]
            near = [name for name in found if context and name.startswith(context + ".")]
            found = near if len(near) == 1 else found
        if len(found) == 1:
            name = found[0]
            return domain.resolve_xref(env, node.get("refdoc"), app.builder,
                                       node.get("reftype"), name, node, contnode)
    return None


# -- docstring conventions of this library -----------------------------------------------------
# Attribute doc comments are prose (``#: which frame the decoder explains: "context" or ...``),
# not Google-style ``type: description``: napoleon must not read the words before a colon as a
# type. A data attribute without a doc comment shows nothing (not the docstring of ``dict``).
# ":param ...:" lists are often followed directly by a sentence ("Other arguments are those
# of ..."); reStructuredText needs a blank line there, which is inserted.


def _prose_attribute_docstring(self):
    lines = [self._lines.next(), *self._dedent(self._consume_to_end())]
    return self.__class__(lines, self._config).lines()


def _clean_docstring(app, what, name, obj, options, lines):
    if what in {"data", "attribute"} and lines:
        type_doc = (type(obj).__doc__ or "").strip().splitlines()
        if type_doc and lines[0].strip() == type_doc[0].strip():
            lines[:] = []
            return
    fixed = []
    state = "blank"  # what the previous line was: "blank", "field" (or its continuation), "prose"
    for line in lines:
        if re.match(r":[^:`]+:(\s|$)", line):  # a field (":param x:"), not a role
            if state == "prose":
                fixed.append("")
            state = "field"
        elif not line.strip():
            state = "blank"
        elif not line[0].isspace():
            if state == "field":
                fixed.append("")
            state = "prose"
        fixed.append(line)
    lines[:] = fixed


# -- every page is reachable ----------------------------------------------------------------------
# Pages under docs/ that docs/index.md does not list yet go into a "More" section of its table of
# contents, so a new page never fails the build as an orphan and is never left unreachable.


def _list_new_pages(app, docname, source):
    if docname != "docs/index":
        return
    text = source[0]
    listed = set()
    for block in re.findall(r"```\{toctree\}(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.strip()
            if line and not line.startswith(":"):
                listed.add(re.sub(r"^.*<(.+)>$", r"\1", line))
    docs = Path(app.srcdir) / "docs"
    pages = sorted(str(p.relative_to(docs).with_suffix("")) for p in docs.rglob("*.md")
                   if "_build" not in p.parts and p.name != "index.md"
                   and not p.relative_to(docs).parts[0].startswith("_"))
    new = [p for p in pages if p not in listed and not p.startswith("api/")]
    if new:
        source[0] = text + "\n```{toctree}\n:caption: More\n:maxdepth: 1\n\n" + \
            "\n".join(new) + "\n```\n"


def setup(app):
    from sphinx.ext.napoleon.docstring import GoogleDocstring

    GoogleDocstring._parse_attribute_docstring = _prose_attribute_docstring
    app.add_directive("bjepa-api", _api_directive())
    app.connect("autodoc-process-docstring", _clean_docstring, priority=400)
    app.connect("missing-reference", _resolve_by_suffix)
    app.connect("source-read", _list_new_pages)
    return {"parallel_read_safe": True}
