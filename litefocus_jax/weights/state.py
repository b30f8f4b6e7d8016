"""Weights: PyTorch (diffusers/transformers) state dicts -> NNX state, strictly validated, numpy only.

Conversion is a set of layout rules plus a short rename table per model:
  Linear (out, in) -> kernel (in, out); Conv2d OIHW -> HWIO; Conv1d (O, I, k) -> (k, I, O);
  norm weight -> scale; torch `a.0.b` -> NNX path ('a', 0, 'b') (nnx.List indices).
Every target parameter must be filled, every source tensor used or explicitly ignored, and shapes must
agree; any violation raises `ConversionError` naming the key and both shapes, before anything is written.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import jax
import numpy as np
from flax import nnx, traverse_util

from litefocus_jax.utils.initializers import abstract_init

FORMAT = "litefocus_jax"
CONVERTER_VERSION = "1"
CONVERTED_WEIGHTS = "litefocus_jax_model.safetensors"
TORCH_WEIGHTS = ("diffusion_pytorch_model.safetensors", "model.safetensors")
TORCH_BIN_WEIGHTS = ("diffusion_pytorch_model.bin", "pytorch_model.bin")

Path_ = tuple  # an NNX parameter path, e.g. ('down_blocks', 0, 'resnets', 1, 'conv1', 'kernel')
Layout = Callable[[np.ndarray], np.ndarray]


class ConversionError(ValueError):
    """A checkpoint does not fit the model: names every offending key with both shapes."""


def path_str(path: Path_) -> str:
    return ".".join(str(p) for p in path)


def parse_path(key: str) -> Path_:
    return tuple(int(p) if p.isdigit() else p for p in key.split("."))


# ---------------------------------------------------------------------------------------------- reading


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All tensors of a safetensors file as numpy (bf16 as ml_dtypes.bfloat16), plus its metadata."""
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="numpy") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as e:  # safetensors raises several types for truncated/garbled files
        raise ConversionError(f"cannot read {path}: not a valid safetensors file ({type(e).__name__}: {e}).") from e


def read_torch_bin(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A legacy `*.bin` pickle (the AudioLDM2 speech checkpoints ship only these), read with
    `torch.load(weights_only=True)`, which refuses arbitrary objects; only conversion calls it, and only it needs torch."""
    try:
        import torch
    except ImportError as e:
        raise ConversionError(
            f"{path} is a PyTorch pickle and torch is not installed: converting it needs torch (CPU is enough: "
            "pip install torch --index-url https://download.pytorch.org/whl/cpu), or use a snapshot that has "
            "*.safetensors weights (every cvssp/audioldm2 snapshot does)."
        ) from e
    try:
        state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConversionError(f"cannot read {path}: {type(e).__name__}: {e}") from e
    return {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy() for k, v in state.items()}


def find_weights(folder: Path) -> tuple[str, Path]:
    """('converted' | 'torch', file) of a component folder; a clear error when none is there."""
    if (folder / CONVERTED_WEIGHTS).is_file():
        return "converted", folder / CONVERTED_WEIGHTS
    for name in TORCH_WEIGHTS + TORCH_BIN_WEIGHTS:
        if (folder / name).is_file():
            return "torch", folder / name
    raise FileNotFoundError(
        f"{folder}: no weights found; expected one of {(CONVERTED_WEIGHTS,) + TORCH_WEIGHTS + TORCH_BIN_WEIGHTS}."
    )


def read_weights(file: Path) -> dict[str, np.ndarray]:
    if file.suffix == ".bin":
        return read_torch_bin(file)
    tensors, meta = read_safetensors(file)
    if file.name == CONVERTED_WEIGHTS and meta.get("format") != FORMAT:
        raise ConversionError(f"{file}: metadata format is {meta.get('format')!r}, expected {FORMAT!r}.")
    return tensors


def read_config(folder: Path) -> dict:
    file = folder / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{folder}: config.json is missing; point at a diffusers component folder (e.g. unet/).")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: invalid JSON ({e}).") from e


# ---------------------------------------------------------------------------------------------- mapping


def default_layout(name: str, ndim: int) -> Layout:
    if name == "kernel" and ndim == 2:
        return lambda w: w.T
    if name == "kernel" and ndim == 4:
        return lambda w: w.transpose(2, 3, 1, 0)
    if name == "kernel" and ndim == 3:
        return lambda w: w.transpose(2, 1, 0)
    return lambda w: w


def abstract_params(build: Callable[[], nnx.Module]) -> tuple[nnx.GraphDef, dict[Path_, jax.ShapeDtypeStruct]]:
    """The graph and flat {path: ShapeDtypeStruct} of a model, without allocating or initialising it."""
    with abstract_init():
        graphdef, state = nnx.split(build())
    return graphdef, traverse_util.flatten_dict(nnx.to_pure_dict(state))


def map_torch_state(
    source: Mapping[str, np.ndarray],
    targets: Mapping[Path_, jax.ShapeDtypeStruct],
    *,
    rename: Iterable[tuple[str, str]] = (),
    ignore: Iterable[str] = (),
    layouts: Mapping[str, Layout] | None = None,
    what: str = "model",
) -> dict[Path_, np.ndarray]:
    """Map a torch state dict onto NNX target paths; strict (see module docstring).

    Args:
      source: torch key -> array.
      targets: NNX path -> expected shape (from `abstract_params`).
      rename: (regex, replacement) applied in order to each torch key before the generic rules.
      ignore: regexes (fullmatch) of torch keys that are deliberately unused (buffers, other branches).
      layouts: torch key regex -> layout function, overriding the generic layout (e.g. ConvTranspose).
      what: the model's name for error messages.
    """
    rename, ignore = list(rename), [re.compile(p) for p in ignore]
    layouts = {re.compile(k): v for k, v in (layouts or {}).items()}
    out: dict[Path_, np.ndarray] = {}
    errors, mismatched = [], set()
    for key, value in source.items():
        if any(p.fullmatch(key) for p in ignore):
            continue
        name = key
        for pattern, repl in rename:
            name = re.sub(pattern, repl, name)
        path = parse_path(name)
        if path[-1] == "weight":
            path = next((path[:-1] + (n,) for n in ("kernel", "scale", "embedding") if path[:-1] + (n,) in targets), path)
        if path not in targets:
            errors.append(f"unexpected tensor {key!r} {tuple(value.shape)}: {what} has no parameter {path_str(path)!r}")
            continue
        layout = next((f for p, f in layouts.items() if p.fullmatch(key)), None) or default_layout(path[-1], value.ndim)
        array = layout(np.asarray(value))
        want = tuple(targets[path].shape)
        if tuple(array.shape) != want:
            errors.append(
                f"tensor {key!r}: checkpoint shape {tuple(value.shape)} (as NNX {tuple(array.shape)}) != "
                f"{what} shape {want} of {path_str(path)!r}"
            )
            mismatched.add(path)
            continue
        if path in out:
            errors.append(f"tensor {key!r}: {path_str(path)!r} is filled twice")
        out[path] = array
    for path, spec in targets.items():
        if path not in out and path not in mismatched:
            torch_key = path_str(path[:-1] + ("weight",)) if path[-1] in ("kernel", "scale", "embedding") else path_str(path)
            errors.append(f"missing tensor for {what} parameter {path_str(path)!r} {tuple(spec.shape)} (torch key {torch_key!r})")
    if errors:
        shown = "\n  ".join(errors[:25])
        more = f"\n  ... and {len(errors) - 25} more" if len(errors) > 25 else ""
        raise ConversionError(f"{what}: the checkpoint does not fit ({len(errors)} problem(s)):\n  {shown}{more}")
    return out


def map_converted_state(source: Mapping[str, np.ndarray], targets: Mapping[Path_, jax.ShapeDtypeStruct], what: str):
    """A converted file: keys are already NNX paths; same strictness, identity layout."""
    return map_torch_state(source, targets, layouts={".*": lambda w: w}, what=what)


def cast_tree(flat: Mapping[Path_, np.ndarray], dtype) -> dict:
    """Flat numpy -> nested dict of device arrays in `dtype` (integer buffers keep theirs)."""
    import jax.numpy as jnp

    def cast(a):
        a = np.asarray(a)
        return jnp.asarray(a, dtype) if np.issubdtype(a.dtype, np.floating) or a.dtype.name == "bfloat16" else jnp.asarray(a)

    return traverse_util.unflatten_dict({k: cast(v) for k, v in flat.items()})


# ---------------------------------------------------------------------------------------------- writing


def save_converted(folder: Path, flat: Mapping[Path_, np.ndarray], config: dict, *, component: str, source: str, dtype) -> None:
    """Write config.json + litefocus_jax_model.safetensors into `folder` (which must not exist yet)."""
    import ml_dtypes
    from safetensors.numpy import save_file

    np_dtype = np.dtype(ml_dtypes.bfloat16) if str(dtype) in ("bfloat16", "bf16") else np.dtype(dtype)
    # np.require keeps 0-d tensors (logit scales) 0-d; np.ascontiguousarray would make them (1,)
    tensors = {path_str(p): np.require(np.asarray(v).astype(np_dtype), requirements="C") for p, v in flat.items()}
    folder.mkdir(parents=True)
    meta = {
        "format": FORMAT,
        "converter_version": CONVERTER_VERSION,
        "component": component,
        "source": source,
        "dtype": np_dtype.name,
    }
    save_file(tensors, os.fspath(folder / CONVERTED_WEIGHTS), metadata=meta)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    umask = os.umask(0)
    os.umask(umask)
    for file in folder.iterdir():  # safetensors creates 0600 files; give them the usual permissions
        file.chmod(0o666 & ~umask)
