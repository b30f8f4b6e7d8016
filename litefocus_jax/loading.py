"""Build and load models: `load_unet`, `init_unet`, and the shared component-folder logic."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from litefocus_jax.litefocus import LiteFocusConfig
from litefocus_jax.models.unet_audioldm2 import AudioLDM2UNet2DConditionModel, UNetConfig
from litefocus_jax.weights import (
    Path_,
    abstract_params,
    cast_tree,
    find_weights,
    map_converted_state,
    map_torch_state,
    read_config,
    read_weights,
)

# Tensors of a diffusers UNet checkpoint that the model deliberately does not use: none.
UNET_IGNORE: tuple[str, ...] = ()


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


def _unet_builder(cfg: UNetConfig, dtype, litefocus, seed=0, attention_implementation=None):
    return lambda: AudioLDM2UNet2DConditionModel(
        cfg, dtype=dtype, litefocus=litefocus, rngs=nnx.Rngs(seed), attention_implementation=attention_implementation
    )


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


def convert_unet_state(source: Mapping[str, np.ndarray], config: Mapping, *, converted: bool = False) -> dict[Path_, np.ndarray]:
    """Diffusers UNet state dict (or a converted one) -> flat {NNX path: numpy}, strictly validated."""
    cfg = UNetConfig.from_diffusers(config)
    return convert_state(source, _unet_builder(cfg, jnp.float32, None), what="AudioLDM2 UNet", converted=converted, ignore=UNET_IGNORE)


def load_unet(
    path: str | os.PathLike,
    *,
    dtype=jnp.float32,
    litefocus: LiteFocusConfig | None = None,
    attention_implementation: str | None = None,
) -> AudioLDM2UNet2DConditionModel:
    """Load the AudioLDM2 UNet.

    Args:
      path: a diffusers `unet/` folder (config.json + diffusion_pytorch_model.safetensors), a snapshot root
        holding one, or the converted form written by `convert/convert_audioldm2.py`.
      dtype: parameter and compute dtype (jnp.float32 or jnp.bfloat16).
      litefocus: LiteFocusConfig to make the chosen self-attentions sparse; None = dense.
      attention_implementation: passed to `jax.nn.dot_product_attention` (None, "xla", "cudnn").

    Returns:
      The module: `unet(sample (B,T,F,C), timestep, encoder_hidden_states, encoder_hidden_states_1=None,
      encoder_attention_mask=None, encoder_attention_mask_1=None)` -> eps (B,T,F,C).
    """
    folder = resolve_component(path, "unet")
    cfg = UNetConfig.from_diffusers(read_config(folder))
    build = _unet_builder(cfg, dtype, litefocus, 0, attention_implementation)
    return load_module(folder, build, dtype=dtype, what="AudioLDM2 UNet", ignore=UNET_IGNORE)


def init_unet(
    config: Mapping,
    *,
    seed: int = 0,
    dtype=jnp.float32,
    litefocus: LiteFocusConfig | None = None,
    attention_implementation: str | None = None,
) -> AudioLDM2UNet2DConditionModel:
    """The same module with random weights, from a diffusers UNet config dict (benchmarks, tests)."""
    cfg = UNetConfig.from_diffusers(config)
    return _unet_builder(cfg, dtype, litefocus, seed, attention_implementation)()
