"""The package's import layers, read from the source with ``ast`` (lazy imports inside functions included).

Layer order, lowest first; a unit may import only units of a lower layer (inside the core,
its modules import each other):

    0 core        errors, io, outputs, schema, validation, budget, device_runner, vocabulary
                  (+ the package root)
    1 data        datasets, formats, preparation
    2 embedding   compressed embedding layers
    3 models      CTR / top-K models
    4 train       trainer, checkpoint, tuning
    5 search      searchers, the byte accountant, the fixed-parts planner (never export)
    5 export      lowering, ONNX export, verify, profile, report
    6 evaluate    model.onnx on a split (onnxruntime; a raw artefact through its id model)
    6 arm64       emulated-ARM parity of artefacts
    7 pipeline    compress, fit-and-retry, auto, fleet, summary, search run folders
    8 quickstart  the demo flow
    9 cli         click commands (thin)
   10 __main__    ``python -m ondevice``

The device side (``export/`` at the repository root, a link to the runner ondevice ships)
imports no torch.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ondevice"
CORE = ("errors", "io", "outputs", "schema", "validation", "budget", "device_runner", "vocabulary")
LAYERS = {
    "core": 0, "data": 1, "embedding": 2, "models": 3, "train": 4, "search": 5, "export": 5, "evaluate": 6,
    "arm64": 6, "pipeline": 7, "quickstart": 8, "cli": 9, "__main__": 10,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every ``ondevice...`` module ``path`` imports, at the top or inside a function."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.add(module)
            out.update(f"{module}.{a.name}" for a in node.names)  # ``from ondevice import compress``
    return {m for m in out if m == "ondevice" or m.startswith("ondevice.")}


def _unit(module: str) -> str | None:
    """The layer unit of a module name (``ondevice.search.base`` -> ``search``); ``None``: not a module."""
    parts = module.split(".")
    if len(parts) == 1:
        return "core"
    head = parts[1]
    if head == "__main__":
        return head
    if head in CORE or head.startswith("_"):  # _resources: data the core ships
        return "core" if (PACKAGE / head).exists() or (PACKAGE / f"{head}.py").exists() else None
    if (PACKAGE / head).is_dir() or (PACKAGE / f"{head}.py").is_file():
        return head
    return None  # ``from ondevice import __version__``: a name, not a module


def _edges() -> dict[tuple[str, str], list[str]]:
    """(importer unit, imported unit) -> the files that make that edge."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "_resources" in path.parts:
            continue
        src = _unit(_module_name(path))
        assert src is not None, path
        for module in _imports(path):
            dst = _unit(module)
            if dst is not None and dst != src:
                edges.setdefault((src, dst), []).append(str(path.relative_to(REPO)))
    return edges


EDGES = _edges()


def test_every_unit_has_a_layer() -> None:
    units = {u for edge in EDGES for u in edge}
    assert units <= set(LAYERS), f"give these a layer in tests/test_layering.py: {sorted(units - set(LAYERS))}"
    assert {"search", "pipeline", "export", "train", "cli"} <= units  # the walk found the package


def test_no_import_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = {}
    for src, dst in EDGES:
        graph.setdefault(src, set()).add(dst)

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                todo.extend(graph.get(node, ()))
        return False

    cycles = sorted(f"{a} -> {b} -> ... -> {a} ({EDGES[(a, b)][0]})" for a, b in EDGES if reaches(b, a))
    assert not cycles, cycles


def test_imports_go_down_the_layers() -> None:
    upward = sorted(f"{src} (layer {LAYERS[src]}) imports {dst} (layer {LAYERS[dst]}): {', '.join(files[:3])}"
                    for (src, dst), files in EDGES.items() if LAYERS[dst] >= LAYERS[src])
    assert not upward, upward


@pytest.mark.parametrize("below", ["search", "export", "train", "models", "embedding", "data"])
def test_lower_packages_never_import_the_pipeline_or_the_cli(below: str) -> None:
    for above in ("pipeline", "cli"):
        assert (below, above) not in EDGES, f"{below} imports {above}: {EDGES.get((below, above))}"


def test_searchers_never_import_the_exporter() -> None:
    assert ("search", "export") not in EDGES, EDGES.get(("search", "export"))
    assert ("search", "arm64") not in EDGES, EDGES.get(("search", "arm64"))


def test_the_walk_sees_lazy_imports() -> None:
    """A function-level import counts (the cycle issue 14 removed was hidden in such imports)."""
    found = _imports(PACKAGE / "pipeline" / "measure.py")
    assert "ondevice.export.onnx_export" in found  # imported inside measure_file_bytes


def test_device_side_imports_no_torch() -> None:
    files = sorted((REPO / "export").rglob("*.py"))
    assert files, "export/ (the device side) holds the runner"
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        heavy = sorted(m for m in names if m.split(".")[0] in ("torch", "ondevice"))
        assert not heavy, f"{path.relative_to(REPO)} imports {heavy}; the device side runs without them"
