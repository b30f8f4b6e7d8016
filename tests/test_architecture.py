"""The package's shape: folders are layers, imports point down, no import cycle, files stay short.

Read from the source (ast), so a function-level import counts as much as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "litefocus_jax"

# Lowest first. A module may import its own layer (no cycle) or a lower one, never a higher one.
LAYERS = {
    "utils": 0,
    "kernels": 1,
    "litefocus": 2,
    "weights": 2,
    "features": 2,
    "models": 3,
    "schedulers": 3,
    "pipelines": 4,
    "tools": 5,
    "research": 5,
    "evaluation": 5,
    "commands": 6,
}
# The package root re-exports the public API (`import litefocus_jax as lj`) and maps the 0.1 module paths;
# `python -m litefocus_jax` is the command line. They sit above everything.
TOP = {"litefocus_jax", "litefocus_jax._legacy", "litefocus_jax.__main__"}
MAX_LINES = 500  # the house rule: a file that grows past this has started a second concern; split it


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str) -> set[str]:
    """Every litefocus_jax module that `path` imports (absolute or relative, at any depth)."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "litefocus_jax"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "litefocus_jax":
                continue
            for alias in node.names:  # `from litefocus_jax.tools import demo` imports a module
                out.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {m for m in out if m in MODULES}


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {name: _imports(path, name) for name, path in MODULES.items()}


def _layer(name: str):
    if name in TOP:
        return None
    return name.split(".")[1]


def test_every_folder_is_a_known_layer():
    folders = {_layer(n) for n in MODULES if _layer(n) is not None}
    assert folders <= set(LAYERS), f"folders without a layer in LAYERS (add them, with their rank): {folders - set(LAYERS)}"


def test_imports_point_down():
    bad = []
    for name, deps in GRAPH.items():
        if name in TOP:
            continue
        for dep in deps:
            if dep not in TOP and LAYERS[_layer(dep)] > LAYERS[_layer(name)]:
                bad.append(f"{name} ({_layer(name)}) imports {dep} ({_layer(dep)})")
            if dep in TOP and dep != "litefocus_jax":
                bad.append(f"{name} imports {dep}")
    assert not bad, "lower layers import higher ones:\n" + "\n".join(sorted(bad))


def test_no_module_imports_the_package_root_from_inside():
    """`import litefocus_jax` inside the package would make every module depend on the whole API."""
    assert not [n for n, deps in GRAPH.items() if n not in TOP and "litefocus_jax" in deps]


def _cycle() -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for dep in sorted(GRAPH[node]):
            # a package's own __init__ importing its submodules is not a cycle back into the package
            if dep == node.rpartition(".")[0] and MODULES[dep].name == "__init__.py":
                continue
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(GRAPH):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle():
    cycle = _cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle():
    """The checker itself: a planted cycle is reported."""
    saved = {k: set(v) for k, v in GRAPH.items()}
    try:
        GRAPH["litefocus_jax.kernels.chunked"].add("litefocus_jax.kernels.attention")
        assert _cycle() is not None
    finally:
        GRAPH.clear()
        GRAPH.update(saved)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_files_stay_short(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name]} has {lines} lines; split it by concern"


def test_old_module_paths_still_import_with_a_warning():
    import importlib

    import litefocus_jax._legacy as legacy

    for old, targets in legacy.MOVED.items():
        with pytest.warns(DeprecationWarning, match=f"litefocus_jax.{old} moved"):
            module = importlib.reload(importlib.import_module(f"litefocus_jax.{old}"))
        for target in targets:
            assert f"litefocus_jax.{target}" in MODULES, f"_legacy.MOVED[{old!r}] names a missing module {target}"
        assert dir(module), old


def test_old_paths_give_the_same_objects():
    import warnings

    import litefocus_jax as lj
    from litefocus_jax.kernels.chunked import chunked_attention
    from litefocus_jax.pipelines.audioldm2.tiny import build_tiny_pipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from litefocus_jax.attention import chunked_attention as old_chunked
        from litefocus_jax.cli import build_tiny_pipeline as old_tiny
        from litefocus_jax.loading import load_unet as old_load_unet
        from litefocus_jax.pipeline_audioldm2 import save_wav as old_save_wav
    assert old_chunked is chunked_attention and old_tiny is build_tiny_pipeline
    assert old_load_unet is lj.load_unet and old_save_wav is lj.save_wav
