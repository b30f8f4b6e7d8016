"""The T5 encoder (transformers `T5EncoderModel`) in Flax NNX: AudioLDM2's `text_encoder_2` (Flan-T5-large).

Pre-norm blocks with T5 RMSNorm (no mean, no bias, statistics in float32, eps 1e-6); attention without
1/sqrt(d) scaling plus a learned bidirectional relative-position bias that lives in block 0 only and is
shared by every block; gated-GELU (gelu_new = tanh approximation) feed-forward, or the original T5 ReLU
one. Embeddings are not scaled. Run in float32 or bfloat16: T5 overflows float16.

Attribute names mirror transformers' module tree (`shared`, `encoder.block.{i}.layer.{0,1}...`), so a
checkpoint key maps to the NNX path of the same dotted name ('weight' -> 'kernel' | 'scale' | 'embedding').
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

from litefocus_jax.models.layers import functional, linear, ones_init
from litefocus_jax.models.modeling_clap import ACTIVATIONS, check_token_ids, embed
from litefocus_jax.weights.state import ConversionError, Path_, read_config

COMPONENT = "text_encoder_2"
WHAT = "T5 encoder"

# Checkpoint tensors the encoder deliberately does not use (transformers' T5EncoderModel drops the same).
T5_IGNORE: tuple[str, ...] = (
    r"decoder\..*",  # a full T5ForConditionalGeneration checkpoint: AudioLDM2 uses only the encoder
    r"lm_head\.weight",  # its output head, same reason
)
TIED_EMBEDDING = "encoder.embed_tokens.weight"  # tied duplicate of `shared.weight` (some .bin files keep both)


@dataclasses.dataclass(frozen=True)
class T5EncoderConfig:
    """The T5 encoder geometry (transformers `T5Config`), built by `from_hf` from a `config.json` dict.

    Attributes:
      vocab_size: 32128 for Flan-T5.
      d_model / d_kv / d_ff / num_heads / num_layers: 1024 / 64 / 2816 / 16 / 24 for Flan-T5-large.
      relative_attention_num_buckets / relative_attention_max_distance: 32 / 128.
      layer_norm_epsilon: RMSNorm epsilon (1e-6).
      dense_act_fn: FFN activation ("gelu_new" for gated-gelu, "relu" for the original T5).
      is_gated_act: gated FFN (wi_0, wi_1, wo) instead of (wi, wo).
    """

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    dense_act_fn: str = "relu"
    is_gated_act: bool = False

    @classmethod
    def from_hf(cls, config: Mapping[str, Any]) -> T5EncoderConfig:
        """Validate a transformers T5 `config.json` dict; absent keys take transformers' T5Config defaults.

        `feed_forward_proj` ("relu", "gated-gelu", "gated-<act>") sets the activation and gating as in
        transformers; explicit `dense_act_fn` / `is_gated_act` keys override it, as they do there.
        Keys that do not change the encoder computation (dropouts, decoder, generation settings) are ignored.
        """
        model_type = config.get("model_type")
        if model_type != "t5":
            hint = " (that is a CLAP config: use load_clap_text for text_encoder/)" if model_type == "clap" else ""
            raise ValueError(
                f"T5 config: model_type is {model_type!r}, expected 't5'{hint}; point load_t5_encoder at the "
                "AudioLDM2 text_encoder_2/ folder (a transformers T5EncoderModel)."
            )
        if config.get("is_decoder", False):
            raise ValueError("T5 config: is_decoder=true describes a decoder stack; only the encoder is supported.")
        d = cls()
        get = lambda key: config.get(key, getattr(d, key))  # noqa: E731
        proj = config.get("feed_forward_proj", "relu")
        parts = str(proj).split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise ValueError(f"T5 config: feed_forward_proj={proj!r} must be '<act>' or 'gated-<act>' (e.g. 'gated-gelu').")
        act = "gelu_new" if proj == "gated-gelu" else parts[-1]
        act = config.get("dense_act_fn", act)
        if act not in ACTIVATIONS:
            raise ValueError(
                f"T5 config: activation {act!r} (from feed_forward_proj/dense_act_fn) is not one of {sorted(ACTIVATIONS)}."
            )
        cfg = cls(
            vocab_size=int(get("vocab_size")),
            d_model=int(get("d_model")),
            d_kv=int(get("d_kv")),
            d_ff=int(get("d_ff")),
            num_layers=int(get("num_layers")),
            num_heads=int(get("num_heads")),
            relative_attention_num_buckets=int(get("relative_attention_num_buckets")),
            relative_attention_max_distance=int(get("relative_attention_max_distance")),
            layer_norm_epsilon=float(get("layer_norm_epsilon")),
            dense_act_fn=act,
            is_gated_act=bool(config.get("is_gated_act", parts[0] == "gated")),
        )
        buckets, distance = cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance
        if buckets < 4 or distance <= buckets // 4:
            raise ValueError(
                f"T5 config: relative_attention_num_buckets={cfg.relative_attention_num_buckets} / max_distance="
                f"{cfg.relative_attention_max_distance} do not give a valid bucketing (T5 uses 32 / 128)."
            )
        return cfg


def relative_position_buckets(query_length: int, key_length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """Bidirectional T5 buckets (query_length, key_length) int32, computed on the host (lengths are static).

    Half the buckets encode the sign; within each half, |distance| < num_buckets/4 gets its own bucket and
    larger distances are log-spaced up to max_distance. The float32 arithmetic mirrors transformers'
    `_relative_position_bucket` so boundary cases (distance 16, 32, 64 for 32/128) round identically.
    """
    relative = np.arange(key_length)[None, :] - np.arange(query_length)[:, None]  # memory - context
    half = num_buckets // 2
    buckets = (relative > 0).astype(np.int64) * half
    distance = np.abs(relative)
    max_exact = half // 2
    scaled = np.log(np.maximum(distance, 1).astype(np.float32) / np.float32(max_exact))
    scaled = scaled / np.float32(math.log(max_distance / max_exact)) * np.float32(half - max_exact)
    large = np.minimum(max_exact + scaled.astype(np.int64), half - 1)
    return (buckets + np.where(distance < max_exact, distance, large)).astype(np.int32)


class T5LayerNorm(nnx.Module):
    """T5 RMSNorm: x * rsqrt(mean(x^2) + eps) in float32, cast to the parameter dtype, times `scale`."""

    def __init__(self, features: int, eps: float, *, dtype, rngs: nnx.Rngs):
        self.eps = eps
        self.scale = nnx.Param(ones_init(rngs.params(), (features,), dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        scale = self.scale[...]
        return scale * (x32 * jax.lax.rsqrt(variance + self.eps)).astype(scale.dtype)


class T5Attention(nnx.Module):
    """Unscaled multi-head self-attention; block 0 also owns `relative_attention_bias` (buckets, heads)."""

    def __init__(self, cfg: T5EncoderConfig, has_relative_attention_bias: bool, *, dtype, rngs: nnx.Rngs):
        self.cfg = cfg
        inner = cfg.num_heads * cfg.d_kv
        self.q = linear(cfg.d_model, inner, dtype=dtype, rngs=rngs, use_bias=False)
        self.k = linear(cfg.d_model, inner, dtype=dtype, rngs=rngs, use_bias=False)
        self.v = linear(cfg.d_model, inner, dtype=dtype, rngs=rngs, use_bias=False)
        self.o = linear(inner, cfg.d_model, dtype=dtype, rngs=rngs, use_bias=False)
        if has_relative_attention_bias:
            self.relative_attention_bias = embed(cfg.relative_attention_num_buckets, cfg.num_heads, dtype=dtype, rngs=rngs)

    def compute_bias(self, length: int) -> jax.Array:
        """(1, heads, L, L) position bias for a sequence of static length L."""
        buckets = relative_position_buckets(
            length, length, self.cfg.relative_attention_num_buckets, self.cfg.relative_attention_max_distance
        )
        return self.relative_attention_bias(jnp.asarray(buckets)).transpose(2, 0, 1)[None]

    def __call__(self, h: jax.Array, bias: jax.Array) -> jax.Array:
        """h (B, L, d_model); bias (B, heads, L, L) = position bias with masked keys at finfo.min."""
        b, n, _ = h.shape
        heads, dk = self.cfg.num_heads, self.cfg.d_kv
        split = lambda x: x.reshape(b, n, heads, dk)  # noqa: E731
        q, k, v = split(self.q(h)), split(self.k(h)), split(self.v(h))
        scores = jnp.einsum("bqnd,bknd->bnqk", q, k) + bias  # no 1/sqrt(d_kv): folded into T5's init
        probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
        out = jnp.einsum("bnqk,bknd->bqnd", probs, v).reshape(b, n, heads * dk)
        return self.o(out)


class T5LayerSelfAttention(nnx.Module):
    def __init__(self, cfg: T5EncoderConfig, has_relative_attention_bias: bool, *, dtype, rngs: nnx.Rngs):
        self.SelfAttention = T5Attention(cfg, has_relative_attention_bias, dtype=dtype, rngs=rngs)
        self.layer_norm = T5LayerNorm(cfg.d_model, cfg.layer_norm_epsilon, dtype=dtype, rngs=rngs)

    def __call__(self, h: jax.Array, bias: jax.Array) -> jax.Array:
        return h + self.SelfAttention(self.layer_norm(h), bias)


class T5DenseGatedActDense(nnx.Module):
    """act(wi_0 x) * wi_1 x -> wo (gated-gelu: act = gelu_new)."""

    def __init__(self, cfg: T5EncoderConfig, *, dtype, rngs: nnx.Rngs):
        self.act = cfg.dense_act_fn
        self.wi_0 = linear(cfg.d_model, cfg.d_ff, dtype=dtype, rngs=rngs, use_bias=False)
        self.wi_1 = linear(cfg.d_model, cfg.d_ff, dtype=dtype, rngs=rngs, use_bias=False)
        self.wo = linear(cfg.d_ff, cfg.d_model, dtype=dtype, rngs=rngs, use_bias=False)

    def __call__(self, h: jax.Array) -> jax.Array:
        return self.wo(ACTIVATIONS[self.act](self.wi_0(h)) * self.wi_1(h))


class T5DenseActDense(nnx.Module):
    """act(wi x) -> wo (original T5: act = relu)."""

    def __init__(self, cfg: T5EncoderConfig, *, dtype, rngs: nnx.Rngs):
        self.act = cfg.dense_act_fn
        self.wi = linear(cfg.d_model, cfg.d_ff, dtype=dtype, rngs=rngs, use_bias=False)
        self.wo = linear(cfg.d_ff, cfg.d_model, dtype=dtype, rngs=rngs, use_bias=False)

    def __call__(self, h: jax.Array) -> jax.Array:
        return self.wo(ACTIVATIONS[self.act](self.wi(h)))


class T5LayerFF(nnx.Module):
    def __init__(self, cfg: T5EncoderConfig, *, dtype, rngs: nnx.Rngs):
        ff = T5DenseGatedActDense if cfg.is_gated_act else T5DenseActDense
        self.DenseReluDense = ff(cfg, dtype=dtype, rngs=rngs)
        self.layer_norm = T5LayerNorm(cfg.d_model, cfg.layer_norm_epsilon, dtype=dtype, rngs=rngs)

    def __call__(self, h: jax.Array) -> jax.Array:
        return h + self.DenseReluDense(self.layer_norm(h))


class T5Block(nnx.Module):
    def __init__(self, cfg: T5EncoderConfig, has_relative_attention_bias: bool, *, dtype, rngs: nnx.Rngs):
        self.layer = nnx.List(
            [
                T5LayerSelfAttention(cfg, has_relative_attention_bias, dtype=dtype, rngs=rngs),
                T5LayerFF(cfg, dtype=dtype, rngs=rngs),
            ]
        )

    def __call__(self, h: jax.Array, bias: jax.Array) -> jax.Array:
        return self.layer[1](self.layer[0](h, bias))


class T5Stack(nnx.Module):
    """The encoder blocks + final RMSNorm (the token embedding is the model's `shared`)."""

    def __init__(self, cfg: T5EncoderConfig, *, dtype, rngs: nnx.Rngs):
        self.block = nnx.List([T5Block(cfg, i == 0, dtype=dtype, rngs=rngs) for i in range(cfg.num_layers)])
        self.final_layer_norm = T5LayerNorm(cfg.d_model, cfg.layer_norm_epsilon, dtype=dtype, rngs=rngs)

    def __call__(self, h: jax.Array, attention_mask: jax.Array) -> jax.Array:
        # Block 0's bias is computed once and reused by every block; masked keys get the dtype's minimum
        # (transformers' SDPA path: where(mask, position_bias, finfo.min)).
        position_bias = self.block[0].layer[0].SelfAttention.compute_bias(h.shape[1])
        keep = (attention_mask != 0)[:, None, None, :]
        bias = jnp.where(keep, position_bias, jnp.finfo(position_bias.dtype).min)
        for block in self.block:
            h = block(h, bias)
        return self.final_layer_norm(h)


class T5EncoderModel(nnx.Module):
    """`T5EncoderModel(input_ids, attention_mask).last_hidden_state`.

    Call: `t5(input_ids (B, L) int, attention_mask (B, L) 0/1 or None) -> (B, L, d_model)` in the module dtype.
    """

    def __init__(self, cfg: T5EncoderConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        if jnp.dtype(dtype) == jnp.float16:
            raise ValueError("T5 encoder: float16 overflows in T5's feed-forward; use float32 or bfloat16.")
        self.config = cfg
        self.dtype = dtype
        self.shared = embed(cfg.vocab_size, cfg.d_model, dtype=dtype, rngs=rngs)
        self.encoder = T5Stack(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        input_ids = jnp.asarray(input_ids) if not isinstance(input_ids, jax.core.Tracer) else input_ids
        check_token_ids(input_ids, attention_mask, self.config.vocab_size, WHAT)
        mask = jnp.ones(input_ids.shape, jnp.int32) if attention_mask is None else jnp.asarray(attention_mask)
        return self.encoder(self.shared(input_ids), mask)

    def functional(self) -> tuple[Callable[..., jax.Array], dict]:
        """A pure face for `jax.jit`: `(apply, params)` with `apply(params, input_ids, attention_mask)`."""
        return functional(self)


# ---------------------------------------------------------------------------------------------- loading


def _builder(cfg: T5EncoderConfig, dtype, seed: int = 0):
    return lambda: T5EncoderModel(cfg, dtype=dtype, rngs=nnx.Rngs(seed))


def untie_embedding(source: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Accept `shared.weight`, `encoder.embed_tokens.weight`, or both (then they must be identical)."""
    source = dict(source)
    if TIED_EMBEDDING not in source:
        return source
    tied = source.pop(TIED_EMBEDDING)
    if "shared.weight" not in source:
        source["shared.weight"] = tied
    elif source["shared.weight"].shape != tied.shape or not np.array_equal(source["shared.weight"], tied):
        raise ConversionError(
            f"{WHAT}: {TIED_EMBEDDING!r} {tuple(tied.shape)} differs from 'shared.weight' "
            f"{tuple(source['shared.weight'].shape)}; T5EncoderModel ties them, so the checkpoint is inconsistent."
        )
    return source


def _map(source, targets, converted: bool):
    from litefocus_jax.weights.state import map_converted_state, map_torch_state

    if converted:
        return map_converted_state(source, targets, WHAT)
    return map_torch_state(untie_embedding(source), targets, ignore=T5_IGNORE, what=WHAT)


def convert_t5_encoder_state(
    source: Mapping[str, np.ndarray], config: Mapping, *, converted: bool = False
) -> dict[Path_, np.ndarray]:
    """T5EncoderModel state dict (or a converted one) -> flat {NNX path: numpy}, strictly validated."""
    from litefocus_jax.weights.state import abstract_params

    _, targets = abstract_params(_builder(T5EncoderConfig.from_hf(config), jnp.float32))
    return _map(source, targets, converted)


def load_t5_encoder(path: str | os.PathLike, *, dtype=jnp.float32) -> T5EncoderModel:
    """Load AudioLDM2's Flan-T5 encoder.

    Args:
      path: the `text_encoder_2/` folder of a diffusers AudioLDM2 snapshot (transformers T5EncoderModel
        config.json + model.safetensors / pytorch_model.bin), the snapshot root, or the converted form.
      dtype: jnp.float32 (default) or jnp.bfloat16; float16 is refused (T5 overflows).

    Returns:
      `T5EncoderModel`: `t5(input_ids (B, L), attention_mask (B, L)) -> last_hidden_state (B, L, d_model)`.
    """
    from litefocus_jax.weights.loading import load_module, resolve_component

    folder = resolve_component(path, COMPONENT)
    cfg = T5EncoderConfig.from_hf(read_config(folder))
    return load_module(
        folder,
        _builder(cfg, dtype),
        dtype=dtype,
        what=WHAT,
        ignore=T5_IGNORE,
        prepare=lambda source, converted: source if converted else untie_embedding(source),
    )


def init_t5_encoder(config: Mapping, *, seed: int = 0, dtype=jnp.float32) -> T5EncoderModel:
    """The same module with random weights, from a T5 config dict (tests, benchmarks)."""
    return _builder(T5EncoderConfig.from_hf(config), dtype, seed)()
