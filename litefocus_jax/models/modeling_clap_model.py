"""The whole CLAP model (transformers `ClapModel`) in Flax NNX: AudioLDM2's `text_encoder/`, both branches.

`ClapModel` is the text branch (`modeling_clap.ClapTextWithProjection`, so calling it gives text features and it
serves as the pipeline's text encoder) plus the HTSAT audio branch (`modeling_clap_audio`), `audio_projection` and
the two learned logit scales. `get_text_features` / `get_audio_features` equal transformers' methods' `pooler_output`
(L2-normalised projections).

A `text_encoder/` converted by litefocus-jax 0.1 holds the text branch only; `load_clap` still loads it (generation
works) and `get_audio_features` then raises `MissingAudioBranchError`, which says to re-convert.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from litefocus_jax.models.modeling_clap import (
    CLAP_TEXT_BUFFERS,
    ClapProjectionLayer,
    ClapTextConfig,
    ClapTextWithProjection,
    l2_normalize,
)
from litefocus_jax.models.modeling_clap_audio import ClapAudioConfig, ClapAudioModel, check_audio_features
from litefocus_jax.weights.state import Path_, find_weights, read_config

COMPONENT = "text_encoder"
WHAT = "CLAP model"
LOGIT_SCALE_INIT = math.log(1 / 0.07)  # transformers' logit_scale_init_value, as a log

# Checkpoint tensors the whole model deliberately does not use: buffers recomputed here and a training counter.
CLAP_IGNORE: tuple[str, ...] = CLAP_TEXT_BUFFERS + (
    r"audio_model\.audio_encoder\.layers\.\d+\.blocks\.\d+\.attention\.self\.relative_position_index",
    r"audio_model\.audio_encoder\.batch_norm\.num_batches_tracked",
)
# torch BatchNorm running statistics -> nnx.BatchNorm's names
CLAP_RENAME: tuple[tuple[str, str], ...] = ((r"\.running_mean$", ".mean"), (r"\.running_var$", ".var"))


class MissingAudioBranchError(ValueError):
    """The loaded CLAP has no audio branch (a text_encoder converted by litefocus-jax 0.1)."""


class ClapModel(ClapTextWithProjection):
    """transformers `ClapModel` for inference.

    Call (= `get_text_features`): `(input_ids (B, S) int, attention_mask (B, S) or None) -> (B, projection_dim)` unit norm.
    `get_audio_features(input_features (B, Cin, T, F), is_longer=None) -> (B, projection_dim)` unit norm.
    Outputs are in the module dtype (normalisation computed in float32). `audio_model` is None for a text-only
    checkpoint (see `has_audio`).
    """

    def __init__(self, cfg: ClapTextConfig, audio: ClapAudioConfig | None, *, dtype=jnp.float32, rngs: nnx.Rngs, source=""):
        super().__init__(cfg, dtype=dtype, rngs=rngs)
        self.audio_config = audio
        self.source = str(source)  # where it was loaded from, for error messages
        if audio is None:
            self.audio_model = self.audio_projection = self.logit_scale_a = self.logit_scale_t = nnx.data(None)
        else:
            self.logit_scale_a = nnx.Param(jnp.full((), LOGIT_SCALE_INIT, dtype))
            self.logit_scale_t = nnx.Param(jnp.full((), LOGIT_SCALE_INIT, dtype))
            self.audio_model = ClapAudioModel(audio, dtype=dtype, rngs=rngs)
            self.audio_projection = ClapProjectionLayer(
                audio.hidden_size, audio.projection_dim, audio.projection_hidden_act, dtype=dtype, rngs=rngs
            )

    @property
    def has_audio(self) -> bool:
        return self.audio_model is not None

    def check_audio(self) -> None:
        """Raise `MissingAudioBranchError` (saying how to fix it) unless the audio branch is loaded."""
        if not self.has_audio:
            where = f" at {self.source}" if self.source else ""
            raise MissingAudioBranchError(
                f"{WHAT}{where} has only the CLAP text branch (a text_encoder converted by litefocus-jax 0.1, before the "
                "audio branch was ported), so it cannot compute audio features for CLAP scoring or re-ranking. Re-convert "
                "the snapshot from the diffusers original with this version (`litefocus-jax convert SRC DST`), or "
                "generate with rerank=False."
            )

    def get_text_features(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """`ClapModel.get_text_features(...).pooler_output`: (B, S) ids -> (B, projection_dim) unit-norm."""
        return self(input_ids, attention_mask)

    def get_audio_features(self, input_features: jax.Array, is_longer: jax.Array | None = None) -> jax.Array:
        """`ClapModel.get_audio_features(...).pooler_output`: log-mel (B, Cin, T, F) -> (B, projection_dim) unit-norm.

        `input_features` as `ClapFeatureExtractor` returns them (cvssp: (B, 1, 1001, 64)). `is_longer` (B, 1) is
        accepted for signature parity and, as in transformers' unfused model, not used.
        """
        self.check_audio()
        if not isinstance(input_features, jax.core.Tracer):
            input_features = jnp.asarray(input_features)
        check_audio_features(input_features, self.audio_config)
        if is_longer is not None and np.shape(is_longer)[0] != input_features.shape[0]:
            raise ValueError(f"{WHAT}: is_longer has {np.shape(is_longer)[0]} rows for {input_features.shape[0]} clips.")
        _, pooled = self.audio_model(input_features.astype(self.dtype))
        return l2_normalize(self.audio_projection(pooled)).astype(self.dtype)

    def logits_per_text(self, text_embeds: jax.Array, audio_embeds: jax.Array) -> jax.Array:
        """`ClapModel.forward(...).logits_per_text` from unit-norm embeddings: (B_text, B_audio) float32 cosine
        similarities times exp(logit_scale_t)."""
        self.check_audio()
        cos = jnp.asarray(text_embeds, jnp.float32) @ jnp.asarray(audio_embeds, jnp.float32).T
        return cos * jnp.exp(self.logit_scale_t[...].astype(jnp.float32))


# ---------------------------------------------------------------------------------------------- loading


def _builder(text: ClapTextConfig, audio: ClapAudioConfig | None, dtype, seed: int = 0, source="") -> Callable[[], ClapModel]:
    return lambda: ClapModel(text, audio, dtype=dtype, rngs=nnx.Rngs(seed), source=source)


def _has_audio_tensors(file: Path) -> bool:
    """Whether a converted file holds the audio branch (litefocus-jax >= 0.2) or only the text branch (0.1)."""
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(file), framework="numpy") as f:
            return any(k.startswith("audio_model.") for k in f.keys())
    except Exception:  # unreadable: let the loader report it properly
        return True


def convert_clap_state(source: Mapping[str, np.ndarray], config: Mapping, *, converted: bool = False) -> dict[Path_, np.ndarray]:
    """ClapModel state dict (or a converted one) -> flat {NNX path: numpy}, both branches; strict: every parameter
    filled, every tensor used except the recomputed buffers and the BatchNorm batch counter."""
    from litefocus_jax.weights.loading import convert_state

    build = _builder(ClapTextConfig.from_hf(config), ClapAudioConfig.from_hf(config), jnp.float32)
    return convert_state(source, build, what=WHAT, converted=converted, rename=CLAP_RENAME, ignore=CLAP_IGNORE)


def load_clap(path: str | os.PathLike, *, dtype=jnp.float32) -> ClapModel:
    """Load AudioLDM2's whole CLAP model (text and audio branches).

    Args:
      path: the `text_encoder/` folder of a diffusers AudioLDM2 snapshot (transformers ClapModel config.json +
        model.safetensors / pytorch_model.bin), the snapshot root, or the converted form.
      dtype: parameter and compute dtype (float32 default, or bfloat16); the float64 cvssp checkpoint is cast.

    Returns:
      `ClapModel` with `get_text_features(input_ids, attention_mask=None)` and
      `get_audio_features(input_features, is_longer=None)`. A folder converted by litefocus-jax 0.1 (text branch
      only) loads with `has_audio == False`; asking it for audio features raises `MissingAudioBranchError`.
    """
    from litefocus_jax.weights.loading import load_module, resolve_component

    folder = resolve_component(path, COMPONENT)
    config = read_config(folder)
    text = ClapTextConfig.from_hf(config)
    kind, file = find_weights(folder)
    audio = ClapAudioConfig.from_hf(config) if kind == "torch" or _has_audio_tensors(file) else None
    build = _builder(text, audio, dtype, source=folder)
    return load_module(folder, build, dtype=dtype, what=WHAT, rename=CLAP_RENAME, ignore=CLAP_IGNORE)


def init_clap(config: Mapping, *, seed: int = 0, dtype=jnp.float32) -> ClapModel:
    """The whole model with random weights, from a ClapModel config dict (tests, the tiny pipeline)."""
    return _builder(ClapTextConfig.from_hf(config), ClapAudioConfig.from_hf(config), dtype, seed)()
