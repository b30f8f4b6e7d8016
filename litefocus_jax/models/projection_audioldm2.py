"""diffusers `AudioLDM2ProjectionModel` in Flax NNX: maps CLAP and T5 (or VITS) states into GPT2's width.

    out = [sos_embed, projection(clap), eos_embed, sos_embed_1, projection_1(t5)_1..L, eos_embed_1]  (B, L+5, D)
    mask = [1, clap_mask, 1, 1, t5_mask, 1]                                                         (B, L+5)

The four SOS/EOS vectors are learned parameters at NNX paths ('sos_embed',) etc., named as the torch
parameters. VITS (TTS) checkpoints add a learned positional embedding to the text states before
`projection_1` (`use_learned_position_embedding`).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from litefocus_jax.models.layers import linear, ones_init, zeros_init
from litefocus_jax.weights.loading import convert_state, load_module, resolve_component
from litefocus_jax.weights.state import Path_, read_config

CLASS_NAME = "AudioLDM2ProjectionModel"
COMPONENT = "projection_model"
WHAT = "AudioLDM2 projection model"

# Checkpoint tensors the model deliberately does not use: none.
PROJECTION_IGNORE: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class ProjectionConfig:
    """Built by `from_diffusers` from a `projection_model/config.json` dict.

    Attributes:
      text_encoder_dim: CLAP projection width (512).
      text_encoder_1_dim: T5 width (1024; VITS: 192).
      langauge_model_dim: GPT2 width (768). The misspelling is diffusers' config key.
      use_learned_position_embedding / max_seq_length: VITS variant only: a learned
        (1, text_encoder_1_dim, max_seq_length) embedding added to the second states.
    """

    text_encoder_dim: int
    text_encoder_1_dim: int
    langauge_model_dim: int
    use_learned_position_embedding: bool = False
    max_seq_length: int | None = None

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any]) -> ProjectionConfig:
        name = config.get("_class_name", CLASS_NAME)
        if name != CLASS_NAME:
            raise ValueError(
                f"projection config: _class_name is {name!r}, expected {CLASS_NAME!r} (the projection_model/ folder)."
            )
        if "language_model_dim" in config and "langauge_model_dim" not in config:
            raise ValueError("projection config: found 'language_model_dim'; diffusers spells the key 'langauge_model_dim'.")
        missing = [k for k in ("text_encoder_dim", "text_encoder_1_dim", "langauge_model_dim") if config.get(k) is None]
        if missing:
            raise ValueError(f"projection config: missing {missing} (e.g. 512, 1024, 768 for cvssp/audioldm2).")
        # diffusers tests `is not None`: any non-null value (even False) turns the embedding on
        learned = config.get("use_learned_position_embedding") is not None
        max_len = config.get("max_seq_length")
        if learned and not max_len:
            raise ValueError("projection config: use_learned_position_embedding is set but max_seq_length is missing.")
        cfg = cls(
            int(config["text_encoder_dim"]),
            int(config["text_encoder_1_dim"]),
            int(config["langauge_model_dim"]),
            learned,
            int(max_len) if learned else None,
        )
        if min(cfg.text_encoder_dim, cfg.text_encoder_1_dim, cfg.langauge_model_dim) < 1:
            raise ValueError(f"projection config: dimensions must be positive, got {cfg}.")
        return cfg


class AudioLDM2ProjectionModel(nnx.Module):
    """Build with `init_projection_model` / `load_projection_model`, or directly from a ProjectionConfig."""

    def __init__(self, config: ProjectionConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.dtype = dtype
        d = config.langauge_model_dim
        self.projection = linear(config.text_encoder_dim, d, dtype=dtype, rngs=rngs)
        self.projection_1 = linear(config.text_encoder_1_dim, d, dtype=dtype, rngs=rngs)
        # torch initialises these to ones; the checkpoint overwrites them
        self.sos_embed = nnx.Param(ones_init(rngs.params(), (d,), dtype))
        self.eos_embed = nnx.Param(ones_init(rngs.params(), (d,), dtype))
        self.sos_embed_1 = nnx.Param(ones_init(rngs.params(), (d,), dtype))
        self.eos_embed_1 = nnx.Param(ones_init(rngs.params(), (d,), dtype))
        if config.use_learned_position_embedding:
            self.learnable_positional_embedding = nnx.Param(
                zeros_init(rngs.params(), (1, config.text_encoder_1_dim, config.max_seq_length), dtype)
            )

    @staticmethod
    def _wrap(states, mask, sos, eos):
        b = states.shape[0]
        ends = lambda e: jnp.broadcast_to(e[...].astype(states.dtype), (b, 1, e.shape[-1]))  # noqa: E731
        states = jnp.concatenate([ends(sos), states, ends(eos)], axis=1)
        one = jnp.ones((b, 1), mask.dtype)
        return states, jnp.concatenate([one, mask, one], axis=1)

    def __call__(
        self,
        hidden_states: jax.Array,
        hidden_states_1: jax.Array,
        attention_mask: jax.Array | None = None,
        attention_mask_1: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Project and concatenate, as diffusers' forward.

        Args:
          hidden_states: (B, M, text_encoder_dim) CLAP states (the pipeline passes M = 1).
          hidden_states_1: (B, L, text_encoder_1_dim) T5 states (VITS: L must equal max_seq_length).
          attention_mask: (B, M) 0/1 or None; attention_mask_1: (B, L) 0/1 or None. A missing mask counts as
            all ones (diffusers crashes when exactly one is given; the pipeline always passes both).

        Returns:
          (states (B, M+L+4, langauge_model_dim) in the module dtype, mask (B, M+L+4)) — L+5 for M = 1. The mask
          takes the given masks' dtype (int32 when none is given).
        """
        cfg = self.config
        x, x1 = jnp.asarray(hidden_states), jnp.asarray(hidden_states_1)
        if x.ndim != 3 or x.shape[-1] != cfg.text_encoder_dim:
            raise ValueError(
                f"projection: hidden_states must be (B, M, {cfg.text_encoder_dim}) CLAP states, got {tuple(x.shape)}."
            )
        if x1.ndim != 3 or x1.shape[-1] != cfg.text_encoder_1_dim or x1.shape[0] != x.shape[0]:
            raise ValueError(
                f"projection: hidden_states_1 must be (B={x.shape[0]}, L, {cfg.text_encoder_1_dim}) T5 states, "
                f"got {tuple(x1.shape)}."
            )
        if cfg.use_learned_position_embedding and x1.shape[1] != cfg.max_seq_length:
            raise ValueError(
                f"projection: hidden_states_1 has length {x1.shape[1]} but the learned position embedding needs "
                f"max_seq_length={cfg.max_seq_length}; pad the VITS states to that length."
            )
        masks = []
        for name, m, ref in (("attention_mask", attention_mask, x), ("attention_mask_1", attention_mask_1, x1)):
            if m is not None:
                m = jnp.asarray(m)
                if tuple(m.shape) != tuple(ref.shape[:2]):
                    raise ValueError(f"projection: {name} must be (B, {ref.shape[1]}), got {tuple(m.shape)}.")
            masks.append(m)
        mdtype = next((m.dtype for m in masks if m is not None), jnp.int32)
        masks = [jnp.ones(ref.shape[:2], mdtype) if m is None else m.astype(mdtype) for m, ref in zip(masks, (x, x1))]

        h, m = self._wrap(self.projection(x.astype(self.dtype)), masks[0], self.sos_embed, self.eos_embed)
        x1 = x1.astype(self.dtype)
        if cfg.use_learned_position_embedding:
            x1 = x1 + jnp.swapaxes(self.learnable_positional_embedding[...], 1, 2)
        h1, m1 = self._wrap(self.projection_1(x1), masks[1], self.sos_embed_1, self.eos_embed_1)
        return jnp.concatenate([h, h1], axis=1), jnp.concatenate([m, m1], axis=1)


def _fill_positions(source: Mapping[str, np.ndarray], cfg: ProjectionConfig) -> Mapping[str, np.ndarray]:
    """A VITS projection checkpoint without `learnable_positional_embedding` (anhnct/audioldm2_ljspeech's file size
    suggests one) loads with zeros there, as diffusers' from_pretrained leaves the newly initialised parameter."""
    key = "learnable_positional_embedding"
    if not cfg.use_learned_position_embedding or key in source:
        return source
    warnings.warn(
        f"{WHAT}: the checkpoint has no {key!r}; using zeros (1, {cfg.text_encoder_1_dim}, {cfg.max_seq_length}), as diffusers does.",
        stacklevel=3,
    )
    return {**source, key: np.zeros((1, cfg.text_encoder_1_dim, cfg.max_seq_length), np.float32)}


def _projection_builder(cfg: ProjectionConfig, dtype, seed: int = 0):
    return lambda: AudioLDM2ProjectionModel(cfg, dtype=dtype, rngs=nnx.Rngs(seed))


def convert_projection_model_state(
    source: Mapping[str, np.ndarray], config: Mapping, *, converted: bool = False
) -> dict[Path_, np.ndarray]:
    """diffusers AudioLDM2ProjectionModel state dict -> flat {NNX path: numpy}, strictly validated."""
    cfg = ProjectionConfig.from_diffusers(config)
    source = _fill_positions(source, cfg)
    return convert_state(source, _projection_builder(cfg, jnp.float32), what=WHAT, converted=converted, ignore=PROJECTION_IGNORE)


def load_projection_model(path: str | os.PathLike, *, dtype=jnp.float32) -> AudioLDM2ProjectionModel:
    """Load AudioLDM2's `projection_model` from its folder, a snapshot root, or the converted form."""
    folder = resolve_component(path, COMPONENT)
    cfg = ProjectionConfig.from_diffusers(read_config(folder))
    return load_module(
        folder,
        _projection_builder(cfg, dtype),
        dtype=dtype,
        what=WHAT,
        ignore=PROJECTION_IGNORE,
        prepare=lambda source, converted: _fill_positions(source, cfg),
    )


def init_projection_model(config: Mapping, *, seed: int = 0, dtype=jnp.float32) -> AudioLDM2ProjectionModel:
    """The same module with random weights, from a diffusers projection config dict."""
    return _projection_builder(ProjectionConfig.from_diffusers(config), dtype, seed)()
