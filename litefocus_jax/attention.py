"""Attention kernels: dense multi-head attention and LiteFocus sparse attention.

Pure functions, no Flax modules. Layout throughout is (batch, tokens, heads, head_dim), the layout of
`jax.nn.dot_product_attention`.

LiteFocus (Tan et al., Interspeech 2024, arXiv 2407.10468) lets query i attend to its own frequency row
S_i = {j : j mod F == i mod F} plus one shared random key subset C ("cross-frequency compensation"). It is
computed here in the row-batched form of ../shared/reference/LITEFOCUS.md §4: regroup the N = T*F tokens
into F rows of T tokens (a reshape, no gather), append the K gathered compensation keys to every row, and
run one dense attention with batch B*F, query length T and key length S = T + K. That is exact (one joint
softmax over [row keys | gathered keys]), costs (1/F + K/N) of dense attention and never forms an N x N
array.
"""

from __future__ import annotations

import numbers
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

Implementation = Literal["xla", "cudnn", "chunked"] | None
Duplicates = Literal["official", "exact"]

_DUPLICATE_MODES = ("official", "exact")
_IMPLEMENTATIONS = (None, "xla", "cudnn", "chunked")

# On CPU, XLA's one-shot attention writes the whole (B, H, Nq, Nk) logits array to memory and reads it back
# for max, exp, sum and the second matmul: memory traffic, not arithmetic, sets its time (about 8x slower
# than torch's CPU flash kernel at N=8000). The chunked form keeps one block of logits in cache and was
# faster at every self-attention size measured (N = 256 to 8000, 1.3-4.5x); with a handful of keys
# (cross-attention on 8-12 text tokens) the blocks are too small to pay for the loop, so `implementation=None`
# takes it from this key length on.
CHUNKED_MIN_KEYS = 128
# Queries per block: about BLOCK_LOGITS logits (8 MiB in fp32) per block, and at least MIN_QUERY_CHUNK
# queries. Measured on 2 cores: smaller blocks pay a fixed cost per loop step (LiteFocus rows at N=8000,
# T=1000 x 1800 keys: 0.286 s in blocks of 250 queries, 0.260 s as one block); larger ones leave the cache.
BLOCK_LOGITS = 1 << 21
MIN_QUERY_CHUNK = 256


def num_compensation_tokens(n_tokens: int, ratio: float) -> int:
    """Number K of shared compensation keys for `n_tokens` tokens at `ratio`.

    Mirrors the released code's `int(time_n * f_n * sparse_ratio)` (Python float math, truncation), so K
    matches it exactly, e.g. (8000, 0.1) -> 800.
    """
    if n_tokens < 0 or ratio < 0:
        raise ValueError(f"num_compensation_tokens needs n_tokens >= 0 and ratio >= 0, got {n_tokens=}, {ratio=}.")
    return int(n_tokens * ratio)


def dot_product_attention(q, k, v, *, bias=None, mask=None, scale=None, implementation: Implementation = None):
    """Dense multi-head attention.

    Args:
      q: (B, Nq, H, D) queries.
      k: (B, Nk, H, D) keys.
      v: (B, Nk, H, D) values.
      bias: optional additive logits bias broadcastable to (B, H, Nq, Nk), e.g. (B, 1, 1, Nk) for key padding.
      mask: optional boolean keep-mask (True = attend) broadcastable to (B, H, Nq, Nk).
      scale: logits scale; defaults to D ** -0.5.
      implementation: None (the fastest known for the backend and size: "chunked" on CPU from 128 keys
        with at most a key-only bias/mask, else JAX's choice), "xla" (one-shot, materialises the logits),
        "cudnn" (fused flash attention on NVIDIA: fp16/bf16 only, and a bias or mask must carry the full
        (Nq, Nk) trailing dims) or "chunked" (`chunked_attention`: the logits of one head and one block of
        queries at a time).

    Returns:
      (B, Nq, H, D) in the dtype of q.
    """
    if implementation not in _IMPLEMENTATIONS:
        raise ValueError(f"implementation={implementation!r} is not supported; use one of {_IMPLEMENTATIONS}.")
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if implementation is None and _prefer_chunked(q, k, bias, mask):
        implementation = "chunked"
    if implementation == "chunked":
        return chunked_attention(q, k, v, bias=bias, mask=mask, scale=scale)
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale, implementation=implementation)


def _prefer_chunked(q, k, bias, mask) -> bool:
    return (
        jax.default_backend() == "cpu"
        and k.shape[1] >= CHUNKED_MIN_KEYS
        and all(x is None or _is_key_only(np.shape(x)) for x in (bias, mask))
    )


def _is_key_only(shape) -> bool:
    """True for a bias/mask shape broadcastable to (B, 1, 1, Nk): it varies only with batch and key."""
    return len(shape) == 4 and shape[1] == 1 and shape[2] == 1


def chunked_attention(q, k, v, *, bias=None, mask=None, scale=None, query_chunk: int | None = None):
    """Dense attention computed one (batch, head) pair and one block of queries at a time.

    Exactly the softmax attention of `dot_product_attention`; only the evaluation order differs. Each step
    forms a (query_chunk, Nk) logits block, which stays in cache, where the one-shot form streams B*H*Nq*Nk
    floats through memory several times. The blocks run in sequence (`lax.map`), each block's matmuls
    multithreaded: the right shape for CPUs. On GPU prefer "cudnn" or "xla". Under `jax.grad` every block is
    rematerialised, so the backward pass never holds more than one block of logits either.

    Args:
      q: (B, Nq, H, D); k, v: (B, Nk, H, D).
      bias: optional additive bias broadcastable to (B, 1, 1, Nk) (key padding; key-only).
      mask: optional boolean keep-mask broadcastable to (B, 1, 1, Nk).
      scale: logits scale; defaults to D ** -0.5.
      query_chunk: target queries per block (None: max(MIN_QUERY_CHUNK, BLOCK_LOGITS // Nk)); blocks are
        balanced so padding is under one query per block.

    Returns:
      (B, Nq, H, D) in the dtype of q.
    """
    for name, x in (("bias", bias), ("mask", mask)):
        if x is not None and not _is_key_only(np.shape(x)):
            raise ValueError(
                f"chunked_attention takes a key-only {name} broadcastable to (B, 1, 1, Nk), got shape "
                f"{np.shape(x)}; use implementation='xla' for per-query masks."
            )
    if scale is None:
        scale = q.shape[-1] ** -0.5
    acc = jnp.promote_types(q.dtype, jnp.float32)  # logits and softmax in fp32 (or wider) for any input dtype
    b, nq, h, d = q.shape
    nk = k.shape[1]
    if query_chunk is None:
        query_chunk = max(MIN_QUERY_CHUNK, BLOCK_LOGITS // nk)
    blocks = -(-nq // max(1, query_chunk))
    size = -(-nq // blocks)
    # The scale goes on q (Nq x D values) rather than on every block of logits (Nq x Nk values).
    qh = jnp.pad((q.astype(acc) * scale).astype(q.dtype), ((0, 0), (0, blocks * size - nq), (0, 0), (0, 0)))
    qh = qh.transpose(0, 2, 1, 3).reshape(b * h, blocks, size, d)
    kh, vh = (x.transpose(0, 2, 1, 3).reshape(b * h, nk, d) for x in (k, v))
    key_bias = None
    if bias is not None or mask is not None:
        key_bias = jnp.repeat(_key_bias(bias, mask, b, nk, acc), h, axis=0)  # (B*H, Nk)

    def head(args):
        q_blocks, k_, v_, kb_ = args

        @jax.checkpoint
        def block(q_):
            logits = jnp.dot(q_, k_.T, preferred_element_type=acc)
            if kb_ is not None:
                logits = logits + kb_
            weights = jnp.exp(logits - logits.max(axis=-1, keepdims=True))
            out = jnp.dot(weights.astype(v_.dtype), v_, preferred_element_type=acc)
            return (out / weights.sum(axis=-1, keepdims=True)).astype(q.dtype)

        return jax.lax.map(block, q_blocks)

    out = jax.lax.map(head, (qh, kh, vh, key_bias))  # (B*H, blocks, size, D)
    out = out.reshape(b, h, blocks * size, d)[:, :, :nq]
    return out.transpose(0, 2, 1, 3)


def _key_bias(bias, mask, batch, nk, dtype):
    """Combine a key-only additive bias and keep-mask into one (B, Nk) bias (masked keys: large negative,
    the value `jax.nn.dot_product_attention` uses, so fully masked rows behave alike)."""
    out = jnp.zeros((batch, nk), dtype)
    if bias is not None:
        out = out + jnp.broadcast_to(jnp.asarray(bias, dtype), (batch, 1, 1, nk))[:, 0, 0]
    if mask is not None:
        keep = jnp.broadcast_to(jnp.asarray(mask, bool), (batch, 1, 1, nk))[:, 0, 0]
        out = jnp.where(keep, out, -0.7 * jnp.finfo(jnp.float32).max)
    return out


def litefocus_attention(
    q,
    k,
    v,
    *,
    freq_bins: int,
    comp_index,
    duplicates: Duplicates = "official",
    same_frequency: bool = True,
    cross_frequency: bool = True,
    scale: float | None = None,
    implementation: Implementation = None,
):
    """LiteFocus sparse self-attention in its exact row-batched form.

    Args:
      q, k, v: (B, N, H, D); token n = t * freq_bins + f (time-major, frequency fastest), N = T * freq_bins.
      freq_bins: F, the number of frequency rows (a static Python int).
      comp_index: (K,) integer array of distinct token indices in [0, N): the shared cross-frequency
        compensation subset C. Data (may be traced); K is static through its shape. Ignored, and may be
        None, when cross_frequency is False. An out-of-range index yields NaN outputs.
      duplicates: "official": a gathered key that also lies in the query's own row counts twice (the
        released code's semantics). "exact": the true union S_i ∪ C; such keys are masked out of the
        gathered part of that row.
      same_frequency: attend to the query's own frequency row.
      cross_frequency: attend to the gathered compensation keys.
      scale: logits scale; defaults to D ** -0.5.
      implementation: passed to `jax.nn.dot_product_attention` (None, "xla", "cudnn").

    Returns:
      (B, N, H, D) in the dtype of q.
    """
    if cross_frequency and comp_index is not None:
        comp_index = jnp.asarray(comp_index)
    _validate(q, k, v, freq_bins, comp_index, duplicates, same_frequency, cross_frequency, implementation)
    if scale is None:
        scale = q.shape[-1] ** -0.5

    def attend(q_, k_, v_, mask=None):
        return dot_product_attention(q_, k_, v_, mask=mask, scale=scale, implementation=implementation)

    if not same_frequency:
        # Every query sees the same K keys, so neither regrouping nor duplicate handling is needed.
        return attend(q, _gather_tokens(k, comp_index), _gather_tokens(v, comp_index))

    batch = q.shape[0]
    q_rows, k_rows, v_rows = (_to_rows(x, freq_bins) for x in (q, k, v))
    if not cross_frequency:
        return _from_rows(attend(q_rows, k_rows, v_rows), batch, freq_bins)

    k_all = _append_compensation(k_rows, _gather_tokens(k, comp_index), batch)
    v_all = _append_compensation(v_rows, _gather_tokens(v, comp_index), batch)
    mask = None
    if duplicates == "exact":
        t = q_rows.shape[1]
        mask = _exact_keep_mask(comp_index, batch, freq_bins, t, full_query_dim=implementation == "cudnn")
    return _from_rows(attend(q_rows, k_all, v_all, mask), batch, freq_bins)


def _to_rows(x, freq_bins):
    """(B, T*F, H, D) -> (B*F, T, H, D); row b*F + f holds tokens t*F + f of batch item b."""
    b, n, h, d = x.shape
    x = x.reshape(b, n // freq_bins, freq_bins, h, d).transpose(0, 2, 1, 3, 4)
    return x.reshape(b * freq_bins, n // freq_bins, h, d)


def _from_rows(x, batch, freq_bins):
    """Inverse of `_to_rows`: (B*F, T, H, D) -> (B, T*F, H, D)."""
    _, t, h, d = x.shape
    x = x.reshape(batch, freq_bins, t, h, d).transpose(0, 2, 1, 3, 4)
    return x.reshape(batch, t * freq_bins, h, d)


def _gather_tokens(x, comp_index):
    """(B, N, H, D) -> (B, K, H, D).

    mode="fill" makes an out-of-range index produce NaNs instead of being silently clamped to a wrong key.
    """
    return jnp.take(x, comp_index, axis=1, mode="fill")


def _append_compensation(rows, gathered, batch):
    """Rows (B*F, T, H, D) and gathered (B, K, H, D) -> (B*F, T + K, H, D), gathered keys after the row's."""
    bf, _, h, d = rows.shape
    k = gathered.shape[1]
    shared = jnp.broadcast_to(gathered[:, None], (batch, bf // batch, k, h, d))
    return jnp.concatenate([rows, shared.reshape(bf, k, h, d)], axis=1)


def _exact_keep_mask(comp_index, batch, freq_bins, t, full_query_dim=False):
    """Boolean keep-mask that drops, in row f, the gathered keys with index % F == f.

    Shape (B*F, 1, 1, T + K): it depends only on the row (the batch axis of the row-batched attention) and
    the key, so XLA broadcasts it over heads and queries. cuDNN only takes a bias with full (T, S) trailing
    dims, so `full_query_dim` gives (B*F, 1, T, T + K): still 1/H of the logits, far from N x N.
    """
    k = comp_index.shape[0]
    rows = jnp.arange(freq_bins, dtype=comp_index.dtype)
    keep_gathered = (comp_index % freq_bins)[None, :] != rows[:, None]  # (F, K)
    keep = jnp.concatenate([jnp.ones((freq_bins, t), dtype=bool), keep_gathered], axis=1)
    keep = jnp.broadcast_to(keep[None], (batch, freq_bins, t + k)).reshape(batch * freq_bins, 1, 1, t + k)
    if full_query_dim:
        keep = jnp.broadcast_to(keep, (batch * freq_bins, 1, t, t + k))
    return keep


def _validate(q, k, v, freq_bins, comp_index, duplicates, same_frequency, cross_frequency, implementation):
    """Eager argument checks whose messages say what was wrong and how to fix it."""
    if not (same_frequency or cross_frequency):
        raise ValueError(
            "litefocus_attention: same_frequency=False and cross_frequency=False leave every query without "
            "keys; enable at least one of them (or skip the attention call)."
        )
    if duplicates not in _DUPLICATE_MODES:
        raise ValueError(
            f"litefocus_attention: duplicates={duplicates!r} is not supported; use 'official' (keys both in "
            "the row and in the compensation set count twice, as released) or 'exact' (true union)."
        )
    if implementation not in _IMPLEMENTATIONS:
        raise ValueError(
            f"litefocus_attention: implementation={implementation!r} is not supported; use one of "
            f"{_IMPLEMENTATIONS}."
        )
    _validate_qkv(q, k, v)
    _validate_freq_bins(freq_bins, q.shape[1])
    if cross_frequency:
        _validate_comp_index(comp_index, same_frequency)


def _validate_qkv(q, k, v):
    shapes = [np.shape(x) for x in (q, k, v)]
    if any(len(s) != 4 for s in shapes):
        raise ValueError(f"litefocus_attention expects q, k, v of shape (B, N, H, D), got shapes {shapes}.")
    if not shapes[0] == shapes[1] == shapes[2]:
        raise ValueError(
            f"litefocus_attention is self-attention: q, k and v must share one (B, N, H, D) shape, got {shapes}."
        )


def _validate_freq_bins(freq_bins, n_tokens):
    if not isinstance(freq_bins, numbers.Integral) or isinstance(freq_bins, bool) or freq_bins < 1:
        raise ValueError(
            f"litefocus_attention: freq_bins must be a positive Python int (the number F of frequency rows), "
            f"got {freq_bins!r}."
        )
    if n_tokens % freq_bins:
        raise ValueError(
            f"litefocus_attention: N={n_tokens} tokens is not divisible by freq_bins={freq_bins}; tokens must "
            "be a full (T, F) grid flattened time-major, so pass the activation's frequency width as freq_bins."
        )


def _validate_comp_index(comp_index, same_frequency):
    if comp_index is None:
        raise ValueError(
            "litefocus_attention: cross_frequency=True needs comp_index, a (K,) int array of compensation "
            "token indices; pass one or set cross_frequency=False."
        )
    shape = np.shape(comp_index)
    if len(shape) != 1:
        raise ValueError(
            f"litefocus_attention: comp_index must be 1-D with shape (K,), got shape {shape}; pass the index "
            "of one call, e.g. schedule[step, call]."
        )
    if not jnp.issubdtype(comp_index.dtype, jnp.integer):
        raise ValueError(
            f"litefocus_attention: comp_index must have an integer dtype, got {comp_index.dtype}; "
            "cast it with .astype(jnp.int32)."
        )
    if not same_frequency and shape[0] == 0:
        raise ValueError(
            "litefocus_attention: same_frequency=False with an empty comp_index (K=0) leaves every query "
            "without keys; use K >= 1 compensation tokens."
        )
