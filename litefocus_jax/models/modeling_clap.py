"""The CLAP text branch (transformers `ClapModel.get_text_features`) in Flax NNX: AudioLDM2's `text_encoder`.

RoBERTa encoder (post-LN, exact GELU, LayerNorm eps 1e-12) -> pooler tanh(dense(h[:, 0])) ->
`text_projection` (linear1 -> ReLU -> linear2) -> L2 normalisation. The audio branch (HTSAT) is in
`modeling_clap_audio`, the whole `ClapModel` (both branches, used by the pipeline's CLAP re-ranking) in
`modeling_clap_model`; this module's `load_clap_text` reads the text branch out of either checkpoint form.

Attribute names mirror transformers' module tree, so a checkpoint key such as
`text_model.encoder.layer.3.attention.self.query.weight` is the NNX path
('text_model', 'encoder', 'layer', 3, 'attention', 'self', 'query', 'kernel').
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from litefocus_jax.models.layers import functional, kernel_init, layer_norm, linear
from litefocus_jax.weights.state import Path_, read_config

COMPONENT = "text_encoder"
WHAT = "CLAP text encoder"

# Buffers (arange / zeros) recomputed here.
CLAP_TEXT_BUFFERS: tuple[str, ...] = (r"text_model\.embeddings\.(position_ids|token_type_ids)",)
# Checkpoint tensors the text path deliberately does not use.
CLAP_TEXT_IGNORE: tuple[str, ...] = CLAP_TEXT_BUFFERS + (
    r"audio_model\..*",  # HTSAT audio tower: only for the pipeline's CLAP re-ranking of generated waveforms
    r"audio_projection\..*",  # its projection head, same reason
    r"logit_scale_[at]",  # contrastive temperatures: only for audio-text similarity logits
)
# What a converted whole ClapModel holds beyond the text branch (the audio tower, its head, the temperatures).
AUDIO_KEYS = ("audio_model.", "audio_projection.", "logit_scale_a", "logit_scale_t")

# transformers ACT2FN names this port implements.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),  # exact erf GELU (RoBERTa, CLAP)
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_fast": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


def activation_name(name: str, key: str) -> str:
    if name not in ACTIVATIONS:
        raise ValueError(f"CLAP config: {key}={name!r} is not supported; use one of {sorted(ACTIVATIONS)}.")
    return name


def embed(num: int, features: int, *, dtype, rngs: nnx.Rngs) -> nnx.Embed:
    """torch.nn.Embedding(num, features); the checkpoint's `weight` maps to `embedding` as is."""
    return nnx.Embed(num, features, dtype=dtype, param_dtype=dtype, embedding_init=kernel_init, rngs=rngs)


@dataclasses.dataclass(frozen=True)
class ClapTextConfig:
    """The CLAP text branch geometry (transformers `ClapTextConfig`), built by `from_hf` from a ClapModel config.

    Attributes:
      vocab_size: RoBERTa vocabulary (50265).
      hidden_size: width (768).
      num_hidden_layers / num_attention_heads / intermediate_size: 12 / 12 / 3072.
      hidden_act: encoder FFN activation ("gelu" = exact erf GELU).
      max_position_embeddings: 514 (positions start at pad_token_id + 1, so at most 512 tokens).
      type_vocab_size: 1 (token type 0 everywhere).
      layer_norm_eps: 1e-12 (every LayerNorm).
      pad_token_id: 1; also the RoBERTa position padding index.
      projection_dim / projection_hidden_act: text_projection width and inner activation (512, "relu");
        taken from the *top-level* ClapConfig keys, which transformers copies over the text config's.
    """

    vocab_size: int = 50265
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 1
    projection_dim: int = 512
    projection_hidden_act: str = "relu"

    @classmethod
    def from_hf(cls, config: Mapping[str, Any]) -> ClapTextConfig:
        """Validate a transformers ClapModel `config.json` dict (model_type "clap"); absent keys take
        transformers' defaults. Keys that do not change the text computation (dropouts, initialiser,
        generation and audio settings) are ignored."""
        model_type = config.get("model_type")
        if model_type != "clap":
            hint = " (that is a T5 config: use load_t5_encoder for text_encoder_2/)" if model_type == "t5" else ""
            raise ValueError(
                f"CLAP config: model_type is {model_type!r}, expected 'clap'{hint}; point load_clap_text at the "
                "AudioLDM2 text_encoder/ folder (a transformers ClapModel)."
            )
        text = config.get("text_config") or {}
        if not isinstance(text, Mapping):
            raise ValueError(f"CLAP config: text_config must be a dict, got {type(text).__name__}.")
        if text.get("model_type", "clap_text_model") != "clap_text_model":
            raise ValueError(f"CLAP config: text_config.model_type is {text['model_type']!r}, expected 'clap_text_model'.")
        for key, want in (("position_embedding_type", "absolute"), ("is_decoder", False), ("add_cross_attention", False)):
            if key in text and text[key] != want:
                raise ValueError(f"CLAP config: text_config.{key}={text[key]!r} is not supported (CLAP uses {want!r}).")
        d = cls()
        get = lambda key: text.get(key, getattr(d, key))  # noqa: E731
        pad = get("pad_token_id")
        if pad is None:
            raise ValueError("CLAP config: text_config.pad_token_id is null; RoBERTa positions need it (CLAP uses 1).")
        cfg = cls(
            vocab_size=int(get("vocab_size")),
            hidden_size=int(get("hidden_size")),
            num_hidden_layers=int(get("num_hidden_layers")),
            num_attention_heads=int(get("num_attention_heads")),
            intermediate_size=int(get("intermediate_size")),
            hidden_act=activation_name(get("hidden_act"), "text_config.hidden_act"),
            max_position_embeddings=int(get("max_position_embeddings")),
            type_vocab_size=int(get("type_vocab_size")),
            layer_norm_eps=float(get("layer_norm_eps")),
            pad_token_id=int(pad),
            # ClapConfig.__post_init__ overwrites the text config's projection settings with the top-level ones.
            projection_dim=int(config.get("projection_dim", d.projection_dim)),
            projection_hidden_act=activation_name(
                config.get("projection_hidden_act", d.projection_hidden_act), "projection_hidden_act"
            ),
        )
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ValueError(
                f"CLAP config: hidden_size {cfg.hidden_size} is not divisible by num_attention_heads {cfg.num_attention_heads}."
            )
        if not 0 <= cfg.pad_token_id < min(cfg.vocab_size, cfg.max_position_embeddings):
            raise ValueError(f"CLAP config: pad_token_id {cfg.pad_token_id} is outside the vocabulary / position table.")
        if cfg.type_vocab_size < 1:
            raise ValueError("CLAP config: type_vocab_size must be >= 1 (token type 0 is used).")
        return cfg

    @property
    def max_tokens(self) -> int:
        """Longest input: RoBERTa positions run pad+1 .. pad+S and must stay inside the position table."""
        return self.max_position_embeddings - self.pad_token_id - 1


# ---------------------------------------------------------------------------------------------- modules


class ClapTextEmbeddings(nnx.Module):
    """word + token_type(0) + RoBERTa position embeddings -> LayerNorm."""

    def __init__(self, cfg: ClapTextConfig, *, dtype, rngs: nnx.Rngs):
        self.pad_token_id = cfg.pad_token_id
        self.word_embeddings = embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype, rngs=rngs)
        self.position_embeddings = embed(cfg.max_position_embeddings, cfg.hidden_size, dtype=dtype, rngs=rngs)
        self.token_type_embeddings = embed(cfg.type_vocab_size, cfg.hidden_size, dtype=dtype, rngs=rngs)
        self.LayerNorm = layer_norm(cfg.hidden_size, cfg.layer_norm_eps, dtype=dtype, rngs=rngs)

    def __call__(self, input_ids: jax.Array) -> jax.Array:
        """(B, S) int -> (B, S, D)."""
        # RoBERTa (fairseq make_positions): non-pad tokens count pad+1, pad+2, ... in order; pads keep pad.
        keep = (input_ids != self.pad_token_id).astype(jnp.int32)
        positions = jnp.cumsum(keep, axis=1) * keep + self.pad_token_id
        # transformers gathers token types from an all-zero buffer: type 0 for every token.
        token_type = self.token_type_embeddings.embedding[0]
        h = self.word_embeddings(input_ids) + token_type  # same summation order as transformers
        h = h + self.position_embeddings(positions)
        return self.LayerNorm(h)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, keep: jax.Array, scale: float) -> jax.Array:
    """Softmax attention, heads already split: q/k/v (B, S, N, Dh), keep (B, 1, 1, S) bool -> (B, S, N, Dh).

    Scores are masked with the dtype's finite minimum (masked keys get weight exactly 0, and an all-padding
    row stays finite) and the softmax runs in float32, as transformers' eager path does.
    """
    scores = jnp.einsum("bqnd,bknd->bnqk", q, k) * jnp.asarray(scale, q.dtype)
    scores = jnp.where(keep, scores, jnp.finfo(scores.dtype).min)
    probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.einsum("bnqk,bknd->bqnd", probs, v)


class ClapTextSelfAttention(nnx.Module):
    def __init__(self, cfg: ClapTextConfig, *, dtype, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.query = linear(d, d, dtype=dtype, rngs=rngs)
        self.key = linear(d, d, dtype=dtype, rngs=rngs)
        self.value = linear(d, d, dtype=dtype, rngs=rngs)

    def __call__(self, h: jax.Array, keep: jax.Array) -> jax.Array:
        b, s, d = h.shape
        split = lambda x: x.reshape(b, s, self.heads, d // self.heads)  # noqa: E731  contiguous head chunks
        out = attention(split(self.query(h)), split(self.key(h)), split(self.value(h)), keep, (d // self.heads) ** -0.5)
        return out.reshape(b, s, d)


class ClapTextSelfOutput(nnx.Module):
    """LayerNorm(dense(x) + residual) (post-LN)."""

    def __init__(self, d_in: int, cfg: ClapTextConfig, *, dtype, rngs: nnx.Rngs):
        self.dense = linear(d_in, cfg.hidden_size, dtype=dtype, rngs=rngs)
        self.LayerNorm = layer_norm(cfg.hidden_size, cfg.layer_norm_eps, dtype=dtype, rngs=rngs)

    def __call__(self, h: jax.Array, residual: jax.Array) -> jax.Array:
        return self.LayerNorm(self.dense(h) + residual)


class ClapTextAttention(nnx.Module):
    def __init__(self, cfg: ClapTextConfig, *, dtype, rngs: nnx.Rngs):
        self.self = ClapTextSelfAttention(cfg, dtype=dtype, rngs=rngs)
        self.output = ClapTextSelfOutput(cfg.hidden_size, cfg, dtype=dtype, rngs=rngs)

    def __call__(self, h: jax.Array, keep: jax.Array) -> jax.Array:
        return self.output(self.self(h, keep), h)


class ClapTextIntermediate(nnx.Module):
    def __init__(self, cfg: ClapTextConfig, *, dtype, rngs: nnx.Rngs):
        self.act = cfg.hidden_act
        self.dense = linear(cfg.hidden_size, cfg.intermediate_size, dtype=dtype, rngs=rngs)

    def __call__(self, h: jax.Array) -> jax.Array:
        return ACTIVATIONS[self.act](self.dense(h))


class ClapTextLayer(nnx.Module):
    def __init__(self, cfg: ClapTextConfig, *, dtype, rngs: nnx.Rngs):
        self.attention = ClapTextAttention(cfg, dtype=dtype, rngs=rngs)
        self.intermediate = ClapTextIntermediate(cfg, dtype=dtype, rngs=rngs)
        self.output = ClapTextSelfOutput(cfg.intermediate_size, cfg, dtype=dtype, rngs=rngs)

    def __call__(self, h: jax.Array, keep: jax.Array) -> jax.Array:
        h = self.attention(h, keep)
        return self.output(self.intermediate(h), h)


class ClapTextEncoder(nnx.Module):
    def __init__(self, cfg: ClapTextConfig, *, dtype, rngs: nnx.Rngs):
        self.layer = nnx.List([ClapTextLayer(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.num_hidden_layers)])

    def __call__(self, h: jax.Array, keep: jax.Array) -> jax.Array:
        for layer in self.layer:
            h = layer(h, keep)
        return h


class ClapTextPooler(nnx.Module):
    def __init__(self, cfg: ClapTextConfig, *, dtype, rngs: nnx.Rngs):
        self.dense = linear(cfg.hidden_size, cfg.hidden_size, dtype=dtype, rngs=rngs)

    def __call__(self, h: jax.Array) -> jax.Array:
        return jnp.tanh(self.dense(h[:, 0]))


class ClapTextModel(nnx.Module):
    """RoBERTa: (B, S) ids + mask -> pooled (B, D)."""

    def __init__(self, cfg: ClapTextConfig, *, dtype, rngs: nnx.Rngs):
        self.embeddings = ClapTextEmbeddings(cfg, dtype=dtype, rngs=rngs)
        self.encoder = ClapTextEncoder(cfg, dtype=dtype, rngs=rngs)
        self.pooler = ClapTextPooler(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        keep = (attention_mask != 0)[:, None, None, :]
        return self.pooler(self.encoder(self.embeddings(input_ids), keep))


class ClapProjectionLayer(nnx.Module):
    """linear1 (hidden -> projection_dim) -> activation -> linear2: `text_projection` and `audio_projection`."""

    def __init__(self, hidden_size: int, projection_dim: int, act: str, *, dtype, rngs: nnx.Rngs):
        self.act = act
        self.linear1 = linear(hidden_size, projection_dim, dtype=dtype, rngs=rngs)
        self.linear2 = linear(projection_dim, projection_dim, dtype=dtype, rngs=rngs)

    def __call__(self, h: jax.Array) -> jax.Array:
        return self.linear2(ACTIVATIONS[self.act](self.linear1(h)))


def l2_normalize(features: jax.Array) -> jax.Array:
    """F.normalize(x, dim=-1) in float32: x / max(||x||, 1e-12)."""
    features = features.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(jnp.square(features), axis=-1, keepdims=True))
    return features / jnp.maximum(norm, 1e-12)


def check_token_ids(input_ids, attention_mask, vocab_size: int, what: str, max_tokens: int | None = None):
    """Shape checks (static, fine under jit); value range checks only for concrete (non-traced) ids."""
    if input_ids.ndim != 2:
        raise ValueError(f"{what}: input_ids must be (B, S) token ids, got shape {tuple(input_ids.shape)}.")
    if not jnp.issubdtype(input_ids.dtype, jnp.integer):
        raise ValueError(f"{what}: input_ids must be integers, got {input_ids.dtype}.")
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(
            f"{what}: attention_mask {tuple(attention_mask.shape)} must have the shape of input_ids {tuple(input_ids.shape)}."
        )
    if max_tokens is not None and input_ids.shape[1] > max_tokens:
        raise ValueError(f"{what}: {input_ids.shape[1]} tokens exceed the model's maximum of {max_tokens}; truncate.")
    if not isinstance(input_ids, jax.core.Tracer) and input_ids.size:
        ids = np.asarray(input_ids)
        if ids.min() < 0 or ids.max() >= vocab_size:
            raise ValueError(f"{what}: token ids must lie in [0, {vocab_size}), got [{ids.min()}, {ids.max()}]; wrong tokenizer?")


class ClapTextWithProjection(nnx.Module):
    """`ClapModel.get_text_features(...).pooler_output`: unit-norm text embeddings.

    Call: `clap(input_ids (B, S) int, attention_mask (B, S) 0/1 or None) -> (B, projection_dim)` in the module
    dtype, L2-normalised (computed in float32). AudioLDM2 feeds (1, 512) max-length-padded Roberta tokens.
    """

    def __init__(self, cfg: ClapTextConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = cfg
        self.dtype = dtype
        self.text_model = ClapTextModel(cfg, dtype=dtype, rngs=rngs)
        self.text_projection = ClapProjectionLayer(
            cfg.hidden_size, cfg.projection_dim, cfg.projection_hidden_act, dtype=dtype, rngs=rngs
        )

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        input_ids = jnp.asarray(input_ids) if not isinstance(input_ids, jax.core.Tracer) else input_ids
        check_token_ids(input_ids, attention_mask, self.config.vocab_size, WHAT, self.config.max_tokens)
        mask = jnp.ones(input_ids.shape, jnp.int32) if attention_mask is None else jnp.asarray(attention_mask)
        return l2_normalize(self.text_projection(self.text_model(input_ids, mask))).astype(self.dtype)

    def functional(self) -> tuple[Callable[..., jax.Array], dict]:
        """A pure face for `jax.jit`: `(apply, params)` with `apply(params, input_ids, attention_mask)`.

        The graph is closed over; `nnx.merge` runs inside whatever transformation traces `apply`.
        """
        return functional(self)


# ---------------------------------------------------------------------------------------------- loading


def _builder(cfg: ClapTextConfig, dtype, seed: int = 0):
    return lambda: ClapTextWithProjection(cfg, dtype=dtype, rngs=nnx.Rngs(seed))


def convert_clap_text_state(
    source: Mapping[str, np.ndarray], config: Mapping, *, converted: bool = False
) -> dict[Path_, np.ndarray]:
    """ClapModel state dict (or a converted one) -> flat {NNX path: numpy}; strict, audio branch ignored."""
    from litefocus_jax.weights.loading import convert_state

    cfg = ClapTextConfig.from_hf(config)
    return convert_state(source, _builder(cfg, jnp.float32), what=WHAT, converted=converted, ignore=CLAP_TEXT_IGNORE)


def load_clap_text(path: str | os.PathLike, *, dtype=jnp.float32) -> ClapTextWithProjection:
    """Load AudioLDM2's CLAP text encoder.

    Args:
      path: the `text_encoder/` folder of a diffusers AudioLDM2 snapshot (transformers ClapModel config.json +
        model.safetensors / pytorch_model.bin), the snapshot root, or the converted form.
      dtype: parameter and compute dtype (float32 default, or bfloat16). The cvssp checkpoint is stored in
        float64; it is cast on load.

    Returns:
      `ClapTextWithProjection`: `clap(input_ids (B, S), attention_mask (B, S)) -> (B, projection_dim)` unit-norm.
    """
    from litefocus_jax.weights.loading import load_module, resolve_component

    folder = resolve_component(path, COMPONENT)
    cfg = ClapTextConfig.from_hf(read_config(folder))

    def text_only(source, converted):  # a converted whole ClapModel (this release) also holds the audio branch
        return {k: v for k, v in source.items() if not k.startswith(AUDIO_KEYS)} if converted else source

    return load_module(folder, _builder(cfg, dtype), dtype=dtype, what=WHAT, prepare=text_only, ignore=CLAP_TEXT_IGNORE)


def init_clap_text(config: Mapping, *, seed: int = 0, dtype=jnp.float32) -> ClapTextWithProjection:
    """The same module with random weights, from a ClapModel config dict (tests, benchmarks)."""
    return _builder(ClapTextConfig.from_hf(config), dtype, seed)()
