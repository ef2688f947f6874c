"""The package's layers (README's Architecture section): each layer imports only the layers below it.

Parsed from the source (every import statement, including those inside functions), so a new import that
crosses a layer fails here instead of quietly knocking a wall down.
"""
import ast
import os

import gpt2cy

ROOT = os.path.dirname(gpt2cy.__file__)
BASE = {"errors", "config", "tensors", "ids", "notices", "threads"}
# layer -> the layers it may import (besides itself and BASE); BASE modules import only BASE
ALLOWED = {
    "engine": set(),
    "formats": set(),
    "text": {"formats"},
    "hub": {"formats", "text"},
    "generation": {"text"},
    "model": {"engine", "formats", "text", "generation"},
    "loading": {"engine", "formats", "text", "generation", "hub", "model"},
    "testing": {"formats"},
    "serve": {"formats", "text", "generation", "hub", "model", "loading"},
    "evaluation": {"formats", "text", "generation", "hub", "model", "loading"},
}
TOP = {"__init__", "__main__", "cli"}          # the public face and the command line may import anything


def _layer_of(rel_parts):
    return rel_parts[0] if len(rel_parts) > 1 else os.path.splitext(rel_parts[0])[0]


def _sources():
    for root, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith((".py", ".pyx")):
                path = os.path.join(root, f)
                yield path, os.path.relpath(path, ROOT).split(os.sep)


def _imports(path, rel_parts):
    """The gpt2cy modules a file imports, as dotted names relative to the package."""
    with open(path, encoding="utf-8") as fh:
        src = fh.read()
    # Cython syntax (cdef, cimport) is not Python: keep just the import lines, which are
    lines = [ln.strip() for ln in src.splitlines() if ln.strip().startswith(("from ", "import "))]
    out = []
    for ln in lines:
        ln = ln.replace(" cimport ", " import ").split("#")[0].rstrip("\\( ")
        try:
            tree = ast.parse(ln if not ln.endswith(",") else ln[:-1])
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    pkg = rel_parts[:-1]
                    base = pkg[:len(pkg) - (node.level - 1)] if node.level > 1 else pkg
                    name = ".".join(base + ([node.module] if node.module else []))
                elif node.module and node.module.split(".")[0] == "gpt2cy":
                    name = node.module[len("gpt2cy."):] if "." in node.module else ""
                else:
                    continue
                if name:
                    out.append(name)
                else:   # `from . import x` / `from gpt2cy import x`
                    out.extend(a.name for a in node.names if a.name != "__version__")
            elif isinstance(node, ast.Import):
                out.extend(a.name[len("gpt2cy."):] for a in node.names if a.name.startswith("gpt2cy."))
    return out


def _violations():
    bad = []
    for path, rel in _sources():
        layer = _layer_of(rel)
        if layer in TOP:
            continue
        allowed = BASE | {layer} | (set() if layer in BASE else ALLOWED.get(layer, set()))
        for name in _imports(path, rel):
            target = name.split(".")[0]
            if target not in allowed:
                bad.append(f"{os.path.join(*rel)} ({layer}) imports gpt2cy.{name}")
    return bad


def test_every_module_is_in_a_layer():
    known = BASE | set(ALLOWED) | TOP
    assert sorted({_layer_of(rel) for _, rel in _sources()} - known) == []


def test_no_import_crosses_a_layer():
    assert _violations() == []


def test_the_checker_sees_a_crossing(tmp_path):
    # the checker itself must be able to fail: a formats module importing the hub is caught
    pkg = tmp_path / "gpt2cy"
    (pkg / "formats").mkdir(parents=True)
    (pkg / "formats" / "bad.py").write_text("from ..hub.models import resolve_model\n")
    (pkg / "engine").mkdir()
    (pkg / "engine" / "k.pyx").write_text("from ..formats cimport x\n")
    global ROOT
    old, ROOT = ROOT, str(pkg)
    try:
        got = _violations()
    finally:
        ROOT = old
    assert any("formats/bad.py" in v and "gpt2cy.hub.models" in v for v in got)
    assert any("engine/k.pyx" in v and "gpt2cy.formats" in v for v in got)
