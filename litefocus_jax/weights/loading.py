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


def is_repo_id(path: str | os.PathLike) -> bool:
    """Could `path` be a Hub repo id ("org/name") rather than a local path? (It must not exist locally.)"""
    text = str(path)
    return not Path(text).exists() and text.count("/") == 1 and not text.startswith((".", "/", "~")) and "\\" not in text


def hub_snapshot(repo_id: str, allow_patterns: list[str] | None = None) -> Path:
    """A Hub repo's snapshot folder through huggingface_hub: downloaded when online, its local cache (HF_HOME) when
    offline (HF_HUB_OFFLINE=1); a FileNotFoundError saying what to do otherwise."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=allow_patterns))
    except Exception as e:  # offline and not cached, unknown repo, no access
        raise FileNotFoundError(
            f"{repo_id!r} is neither a local folder nor a Hub repo id found online or in the Hugging Face cache "
            f"({type(e).__name__}: {e}). Download it where you have internet (huggingface-cli download {repo_id} "
            "--local-dir DIR) and pass DIR."
        ) from e


def resolve_component(path: str | os.PathLike, name: str) -> Path:
    """A component folder: `path` itself if it holds config.json, else `path/name` (a snapshot root, or a Hub repo
    id: only its `name/` files are fetched)."""
    if is_repo_id(path):
        path = hub_snapshot(str(path), allow_patterns=[f"{name}/*"])
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
    """Read `folder`'s weights (torch safetensors or converted), validate them against `build()`, return the module.

    `prepare(source, converted) -> source` rewrites the tensors first (weight-norm folding, tied embeddings).
    """
    kind, file = find_weights(Path(folder))
    if file.suffix == ".bin":  # unpickling runs code: only the one-off conversion reads these
        raise ValueError(
            f"{folder}: its only weights are a PyTorch pickle ({file.name}), which is never unpickled at load time. "
            f"Convert it once (needs torch): litefocus-jax convert {folder} DST (or the whole snapshot), then load DST."
        )
    graphdef, targets = abstract_params(build)
    source = read_weights(file)
    if prepare is not None:
        source = prepare(source, kind == "converted")
    if kind == "converted":
        flat = map_converted_state(source, targets, what)
    else:
        flat = map_torch_state(source, targets, what=what, **rules)
    return nnx.merge(graphdef, cast_tree(flat, dtype))
