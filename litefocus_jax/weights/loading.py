"""Loading any component: find its folder, read its weights (torch or converted), validate, build the module."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from flax import nnx

from litefocus_jax.weights.state import (
    Path_,
    abstract_params,
    cast_tree,
    find_weights,
    map_converted_state,
    map_torch_state,
    read_weights,
)


def resolve_component(path: str | os.PathLike, name: str) -> Path:
    """A component folder: `path` itself if it holds config.json, else `path/name` (a snapshot root)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist; pass a diffusers snapshot folder, its {name}/ subfolder, or a converted folder."
        )
    if (path / "config.json").is_file():
        return path
    if (path / name / "config.json").is_file():
        return path / name
    raise FileNotFoundError(f"{path}: neither {path}/config.json nor {path}/{name}/config.json exists.")


def convert_state(
    source: Mapping[str, np.ndarray], build, *, what: str, converted: bool = False, **rules
) -> dict[Path_, np.ndarray]:
    """Map a torch (or converted) state dict onto the model `build()` would make; strict (see weights.py).

    `rules` are `map_torch_state`'s rename / ignore / layouts for this model.
    """
    _, targets = abstract_params(build)
    if converted:
        return map_converted_state(source, targets, what)
    return map_torch_state(source, targets, what=what, **rules)


def load_module(folder: Path, build, *, dtype, what: str, prepare=None, **rules) -> nnx.Module:
    """Read `folder`'s weights (torch or converted), validate them against `build()`, return the module.

    `prepare(source, converted) -> source` rewrites the tensors first (weight-norm folding, tied embeddings).
    """
    kind, file = find_weights(Path(folder))
    graphdef, targets = abstract_params(build)
    source = read_weights(file)
    if prepare is not None:
        source = prepare(source, kind == "converted")
    if kind == "converted":
        flat = map_converted_state(source, targets, what)
    else:
        flat = map_torch_state(source, targets, what=what, **rules)
    return nnx.merge(graphdef, cast_tree(flat, dtype))
