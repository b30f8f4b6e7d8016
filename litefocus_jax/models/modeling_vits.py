"""The text encoder of transformers' `VitsModel` in Flax NNX: AudioLDM2 TTS's phoneme encoder (`text_encoder_2`).

AudioLDM2's speech checkpoints store a whole `VitsModel` as `text_encoder_2`, but the pipeline only runs
`text_encoder_2.text_encoder` and keeps its `last_hidden_state` (AUDIOLDM2_TTS.md §2, §3). This module is that
`VitsTextEncoder`, post-LN:

    x = embed_tokens(ids) * sqrt(H) * pm
    per layer:  x = layer_norm(x + attention(x)),  x = final_layer_norm(x + feed_forward(x, pm))
    last_hidden_state = x * pm                     (pm = padding mask, 1 on tokens)

The attention adds windowed relative-position terms (tables `emb_rel_k` / `emb_rel_v`, (1, 2w+1, head_dim),
shared by every head) to the logits and to the output; padded keys are masked. The feed-forward is two 1-D
convolutions over time with the padding mask applied to every conv input. Attribute names mirror the torch tree
(`encoder.layers.{i}.attention.q_proj`, ...), so a checkpoint maps with the prefix `text_encoder.` stripped and the
flow / decoder / duration-predictor / posterior-encoder tensors ignored.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from litefocus_jax.models.layers import kernel_init, layer_norm, linear
from litefocus_jax.utils.initializers import zeros_init
from litefocus_jax.weights.loading import convert_state, load_module, resolve_component
from litefocus_jax.weights.state import Path_, read_config

COMPONENT = "text_encoder_2"
WHAT = "VITS text encoder"

# Only `text_encoder.*` is used by AudioLDM2; the waveform generator parts of VitsModel are deliberately unused.
VITS_RENAME: tuple[tuple[str, str], ...] = ((r"^text_encoder\.", ""),)
VITS_IGNORE: tuple[str, ...] = (r"(flow|decoder|duration_predictor|posterior_encoder|embed_speaker)\..*",)

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


@dataclasses.dataclass(frozen=True)
class VitsTextConfig:
    """The text-encoder part of a transformers `VitsConfig` (its defaults; `save_pretrained` omits default keys).

    AudioLDM2 speech checkpoints: vocab_size 183 (the original 183-symbol phoneme table), hidden_size 192,
    6 layers, 2 heads, window 4, ffn 768 x kernel 3, relu, layer_norm_eps 1e-5.
    """

    vocab_size: int = 38
    hidden_size: int = 192
    num_hidden_layers: int = 6
    num_attention_heads: int = 2
    window_size: int | None = 4
    use_bias: bool = True
    ffn_dim: int = 768
    ffn_kernel_size: int = 3
    flow_size: int = 192
    layer_norm_eps: float = 1e-5
    hidden_act: str = "relu"

    @classmethod
    def from_hf(cls, config: Mapping[str, Any]) -> VitsTextConfig:
        if config.get("model_type", "vits") != "vits":
            raise ValueError(
                f"VITS config: model_type is {config.get('model_type')!r}, expected 'vits' (an AudioLDM2 speech "
                "checkpoint's text_encoder_2/ folder)."
            )
        values = {f.name: config[f.name] for f in dataclasses.fields(cls) if f.name in config}
        cfg = cls(**values)
        if cfg.hidden_act not in ACTIVATIONS:
            raise ValueError(f"VITS config: hidden_act={cfg.hidden_act!r} is not supported; use one of {sorted(ACTIVATIONS)}.")
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ValueError(
                f"VITS config: hidden_size={cfg.hidden_size} is not divisible by num_attention_heads={cfg.num_attention_heads}."
            )
        for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "ffn_dim", "ffn_kernel_size"):
            if int(getattr(cfg, key)) < 1:
                raise ValueError(f"VITS config: {key}={getattr(cfg, key)} must be a positive integer.")
        if cfg.window_size is not None and cfg.window_size < 1:
            raise ValueError(f"VITS config: window_size={cfg.window_size} must be None or >= 1.")
        return cfg

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def relative_index(length: int, window: int) -> np.ndarray:
    """One-hot (L, L, 2w+1) float32: entry [i, j, j - i + w] = 1 where |j - i| <= w (key j relative to query i).

    Torch's pad-and-skew of the relative tables (zero rows beyond the window) is this gather; as a constant it
    lets both relative terms be einsums (310 x 310 x 9 for the real checkpoints).
    """
    rel = np.arange(length)[None, :] - np.arange(length)[:, None] + window
    onehot = rel[..., None] == np.arange(2 * window + 1)
    return onehot.astype(np.float32)


class VitsAttention(nnx.Module):
    """Multi-head self-attention with windowed relative positions (transformers `VitsAttention`, eval)."""

    def __init__(self, cfg: VitsTextConfig, *, dtype, rngs: nnx.Rngs):
        h = cfg.hidden_size
        self.heads, self.head_dim, self.window = cfg.num_attention_heads, cfg.head_dim, cfg.window_size
        for name in ("k_proj", "v_proj", "q_proj", "out_proj"):
            setattr(self, name, linear(h, h, dtype=dtype, rngs=rngs, use_bias=cfg.use_bias))
        if self.window:
            shape = (1, 2 * self.window + 1, self.head_dim)
            self.emb_rel_k = nnx.Param(zeros_init(rngs.params(), shape, dtype))
            self.emb_rel_v = nnx.Param(zeros_init(rngs.params(), shape, dtype))

    def __call__(self, x: jax.Array, key_keep: jax.Array) -> jax.Array:
        """x (B, L, H); key_keep bool (B, L), True on tokens -> (B, L, H)."""
        b, n, _ = x.shape
        split = lambda a: a.reshape(b, n, self.heads, self.head_dim)  # noqa: E731
        q = split(self.q_proj(x)) * self.head_dim**-0.5  # the scaled q also meets the relative key table
        k, v = split(self.k_proj(x)), split(self.v_proj(x))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
        if self.window:
            rel = jnp.asarray(relative_index(n, self.window), q.dtype)
            q_rel = jnp.einsum("bqhd,rd->bhqr", q, self.emb_rel_k[...][0])
            logits = logits + jnp.einsum("bhqr,qkr->bhqk", q_rel, rel).astype(jnp.float32)
        logits = jnp.where(key_keep[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
        if self.window:
            p_rel = jnp.einsum("bhqk,qkr->bhqr", probs, rel)
            out = out + jnp.einsum("bhqr,rd->bqhd", p_rel, self.emb_rel_v[...][0])
        return self.out_proj(out.reshape(b, n, self.heads * self.head_dim))


def _conv1d(cin: int, cout: int, kernel: int, *, dtype, rngs: nnx.Rngs) -> nnx.Conv:
    """torch.nn.Conv1d(cin, cout, kernel) without padding, on NWC input (the caller pads)."""
    return nnx.Conv(
        cin,
        cout,
        (kernel,),
        padding="VALID",
        dtype=dtype,
        param_dtype=dtype,
        rngs=rngs,
        kernel_init=kernel_init,
        bias_init=zeros_init,
    )


class VitsFeedForward(nnx.Module):
    def __init__(self, cfg: VitsTextConfig, *, dtype, rngs: nnx.Rngs):
        k = cfg.ffn_kernel_size
        self.pad = ((k - 1) // 2, k // 2)  # torch pads time (left, right) before each conv
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.conv_1 = _conv1d(cfg.hidden_size, cfg.ffn_dim, k, dtype=dtype, rngs=rngs)
        self.conv_2 = _conv1d(cfg.ffn_dim, cfg.hidden_size, k, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, pm: jax.Array) -> jax.Array:
        """x (B, L, H), pm (B, L, 1) in x's dtype -> (B, L, H), zero on padded rows."""
        pad = lambda a: jnp.pad(a * pm, ((0, 0), self.pad, (0, 0)))  # noqa: E731
        h = self.act(self.conv_1(pad(x)))
        return self.conv_2(pad(h)) * pm


class VitsEncoderLayer(nnx.Module):
    def __init__(self, cfg: VitsTextConfig, *, dtype, rngs: nnx.Rngs):
        eps = cfg.layer_norm_eps
        self.attention = VitsAttention(cfg, dtype=dtype, rngs=rngs)
        self.layer_norm = layer_norm(cfg.hidden_size, eps, dtype=dtype, rngs=rngs)
        self.feed_forward = VitsFeedForward(cfg, dtype=dtype, rngs=rngs)
        self.final_layer_norm = layer_norm(cfg.hidden_size, eps, dtype=dtype, rngs=rngs)

    def __call__(self, x, key_keep, pm):
        x = self.layer_norm(x + self.attention(x, key_keep))
        return self.final_layer_norm(x + self.feed_forward(x, pm))


class VitsEncoder(nnx.Module):
    def __init__(self, cfg: VitsTextConfig, *, dtype, rngs: nnx.Rngs):
        self.layers = nnx.List([VitsEncoderLayer(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.num_hidden_layers)])


class VitsTextEncoder(nnx.Module):
    """transformers `VitsTextEncoder` (eval). Build with `init_vits_text_encoder` / `load_vits_text_encoder`."""

    def __init__(self, config: VitsTextConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.dtype = dtype
        self.embed_tokens = nnx.Embed(
            config.vocab_size, config.hidden_size, dtype=dtype, param_dtype=dtype, embedding_init=kernel_init, rngs=rngs
        )
        self.encoder = VitsEncoder(config, dtype=dtype, rngs=rngs)
        self.project = _conv1d(config.hidden_size, 2 * config.flow_size, 1, dtype=dtype, rngs=rngs)

    def _check(self, input_ids, attention_mask):
        if input_ids.ndim != 2:
            raise ValueError(f"VITS text encoder: input_ids must be (B, L) token ids, got shape {tuple(input_ids.shape)}.")
        if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(
                f"VITS text encoder: attention_mask must be (B, L) = {tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}."
            )

    def hidden_states(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """`text_encoder(ids, attention_mask=mask, padding_mask=mask[..., None]).last_hidden_state`.

        Args:
          input_ids: int (B, L) phoneme ids (< vocab_size).
          attention_mask: (B, L) 1 on tokens, 0 on padding (masks keys and zeroes rows); None = all ones.

        Returns:
          (B, L, hidden_size) in the module dtype; rows where the mask is 0 are exactly 0.
        """
        input_ids = jnp.asarray(input_ids)
        mask = None if attention_mask is None else jnp.asarray(attention_mask)
        self._check(input_ids, mask)
        keep = jnp.ones(input_ids.shape, bool) if mask is None else mask != 0
        pm = keep[..., None].astype(self.dtype)
        x = self.embed_tokens(input_ids) * jnp.asarray(math.sqrt(self.config.hidden_size), self.dtype)
        x = x * pm
        for layer in self.encoder.layers:
            x = layer(x, keep, pm)
        return x * pm

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """Same as `hidden_states` (AudioLDM2 uses only the last hidden state)."""
        return self.hidden_states(input_ids, attention_mask)

    def prior(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """(prior_means, prior_log_variances), each (B, L, flow_size): the `project` head (unused by AudioLDM2)."""
        x = self.hidden_states(input_ids, attention_mask)
        keep = jnp.ones(x.shape[:2], x.dtype) if attention_mask is None else (jnp.asarray(attention_mask) != 0).astype(x.dtype)
        stats = self.project(x) * keep[..., None]
        return stats[..., : self.config.flow_size], stats[..., self.config.flow_size :]


# ---------------------------------------------------------------------------------------------- loading


def _builder(cfg: VitsTextConfig, dtype, seed: int = 0):
    return lambda: VitsTextEncoder(cfg, dtype=dtype, rngs=nnx.Rngs(seed))


_RULES = dict(rename=VITS_RENAME, ignore=VITS_IGNORE)


def convert_vits_text_encoder_state(
    source: Mapping[str, np.ndarray], config: Mapping, *, converted: bool = False
) -> dict[Path_, np.ndarray]:
    """VitsModel (or VitsTextEncoder) state dict -> flat {NNX path: numpy} of the text encoder, strictly validated."""
    cfg = VitsTextConfig.from_hf(config)
    return convert_state(source, _builder(cfg, jnp.float32), what=WHAT, converted=converted, **_RULES)


def load_vits_text_encoder(path: str | os.PathLike, *, dtype=jnp.float32) -> VitsTextEncoder:
    """Load the text encoder of a speech snapshot's `text_encoder_2/` (a VitsModel), a snapshot root, or the
    converted form (which holds the text encoder only)."""
    folder = resolve_component(path, COMPONENT)
    cfg = VitsTextConfig.from_hf(read_config(folder))
    return load_module(folder, _builder(cfg, dtype), dtype=dtype, what=WHAT, **_RULES)


def init_vits_text_encoder(config: Mapping, *, seed: int = 0, dtype=jnp.float32) -> VitsTextEncoder:
    """The same module with random weights, from a transformers VITS config dict."""
    return _builder(VitsTextConfig.from_hf(config), dtype, seed)()
