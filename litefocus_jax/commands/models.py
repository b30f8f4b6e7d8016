"""What `--model` names for every command: a snapshot folder, a Hub id, or `tiny`.

`tiny` is the demo's random-weight pipeline, built in-process (no download), so any command can be tried on a
fresh machine; everything produced with it must say that its weights are random.
"""

from __future__ import annotations

import os
from pathlib import Path

TINY = "tiny"
# what every output made with TINY says (summary lines; manifests carry "weights": "random")
WEIGHTS_NOTE = "RANDOM WEIGHTS: the built-in tiny model is untrained, its audio is noise"


def is_tiny(model: str | os.PathLike) -> bool:
    """True when `model` names the built-in random tiny pipeline (and no folder of that name exists)."""
    return str(model) == TINY and not Path(model).exists()


def check_model(model: str | os.PathLike) -> Path | str:
    """Resolve `--model` before anything loads: the snapshot root, or TINY.

    Raises FileNotFoundError / ValueError with a message naming what is wrong (missing folder, incomplete
    snapshot, Hub id unreachable offline).
    """
    if is_tiny(model):
        return TINY
    from litefocus_jax.pipelines.audioldm2.conversion import check_snapshot, resolve_snapshot

    root = resolve_snapshot(model)
    check_snapshot(root)
    return root


def load_pipeline(resolved: Path | str, *, dtype="float32", scheduler: str = "ddim"):
    """The AudioLDM2Pipeline for what `check_model` returned; dtype "float32" or "bfloat16"."""
    import jax.numpy as jnp

    from litefocus_jax.pipelines.audioldm2.pipeline_audioldm2 import AudioLDM2Pipeline
    from litefocus_jax.pipelines.audioldm2.tiny import build_tiny_pipeline

    dtype = getattr(jnp, dtype) if isinstance(dtype, str) else dtype
    if resolved == TINY:
        return build_tiny_pipeline(dtype=dtype, scheduler=scheduler)
    return AudioLDM2Pipeline.from_pretrained(resolved, dtype=dtype, scheduler=scheduler)
