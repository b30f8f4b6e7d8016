"""Block-wise exact attention: the logits of one block of queries at a time, never Nq x Nk.

The CPU path of every attention in the library (UNet self-attention, LiteFocus rows, the VAE mid block) and
the fallback of the accelerator entry point: memory O(block x Nk) instead of O(Nq x Nk), same softmax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

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
# Accelerators: every row and head per step, about 2**27 logits (512 MiB in fp32) per block. A budget, not a
# cache size: at 80 s dense (B=2, H=8, Nk=8000) that is 8 steps; at 320 s 126 steps of 254 queries.
# Untuned: no GPU or TPU has run it yet.
ACCELERATOR_BLOCK_LOGITS = 1 << 27
MIN_QUERY_CHUNK_ALL_HEADS = 16


def is_key_only(shape) -> bool:
    """True for a bias/mask shape broadcastable to (B, 1, 1, Nk): it varies only with batch and key."""
    return len(shape) == 4 and shape[1] == 1 and shape[2] == 1


def chunked_attention(q, k, v, *, bias=None, mask=None, scale=None, query_chunk: int | None = None, all_heads: bool = False):
    """Dense attention computed one block of queries at a time: exactly softmax attention, never Nq x Nk logits.

    Two layouts of the same computation:
    - `all_heads=False` (CPUs): one (batch, head) pair and about BLOCK_LOGITS logits per step. The block stays in
      cache, where the one-shot form streams B*H*Nq*Nk floats through memory several times; each step's matmuls
      are multithreaded.
    - `all_heads=True` (accelerators): every batch row and head in each step, blocks of about
      ACCELERATOR_BLOCK_LOGITS logits (a memory budget, not a cache size), so a handful of large steps keeps the
      device busy instead of hundreds of small launches.
    Under `jax.grad` every block is rematerialised: the backward pass never holds more than one block either.

    Args:
      q: (B, Nq, H, D); k, v: (B, Nk, H, D).
      bias: optional additive bias broadcastable to (B, 1, 1, Nk) (key padding; key-only).
      mask: optional boolean keep-mask broadcastable to (B, 1, 1, Nk).
      scale: logits scale; defaults to D ** -0.5.
      query_chunk: target queries per block (None: from the layout's logits budget); blocks are balanced so
        padding is under one query per block.
      all_heads: the accelerator layout (see above).

    Returns:
      (B, Nq, H, D) in the dtype of q.
    """
    for name, x in (("bias", bias), ("mask", mask)):
        if x is not None and not is_key_only(np.shape(x)):
            raise ValueError(
                f"chunked_attention takes a key-only {name} broadcastable to (B, 1, 1, Nk), got shape "
                f"{np.shape(x)}; use implementation='xla' for per-query masks."
            )
    if scale is None:
        scale = q.shape[-1] ** -0.5
    acc = jnp.promote_types(q.dtype, jnp.float32)  # logits and softmax in fp32 (or wider) for any input dtype
    b, nq, h, d = q.shape
    nk = k.shape[1]
    key_bias = None
    if bias is not None or mask is not None:
        key_bias = _key_bias(bias, mask, b, nk, acc)  # (B, Nk)
    # The scale goes on q (Nq x D values) rather than on every block of logits (Nq x Nk values).
    q = (q.astype(acc) * scale).astype(q.dtype)
    if all_heads:
        chunk = query_chunk or max(MIN_QUERY_CHUNK_ALL_HEADS, ACCELERATOR_BLOCK_LOGITS // (b * h * nk))
        return _all_heads(q, k, v, key_bias, chunk, acc)
    return _per_head(q, k, v, key_bias, query_chunk or max(MIN_QUERY_CHUNK, BLOCK_LOGITS // nk), acc)


def _per_head(q, k, v, key_bias, chunk: int, acc):
    b, nq, h, d = q.shape
    nk = k.shape[1]
    blocks = -(-nq // max(1, chunk))
    size = -(-nq // blocks)
    qh = jnp.pad(q, ((0, 0), (0, blocks * size - nq), (0, 0), (0, 0)))
    qh = qh.transpose(0, 2, 1, 3).reshape(b * h, blocks, size, d)
    kh, vh = (x.transpose(0, 2, 1, 3).reshape(b * h, nk, d) for x in (k, v))
    kb = None if key_bias is None else jnp.repeat(key_bias, h, axis=0)  # (B*H, Nk)

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

    out = jax.lax.map(head, (qh, kh, vh, kb))  # (B*H, blocks, size, D)
    out = out.reshape(b, h, blocks * size, d)[:, :, :nq]
    return out.transpose(0, 2, 1, 3)


def _all_heads(q, k, v, key_bias, chunk: int, acc):
    nq = q.shape[1]
    nq_blocks = -(-nq // max(1, chunk))
    size = -(-nq // nq_blocks)
    qb = jnp.pad(q, ((0, 0), (0, nq_blocks * size - nq), (0, 0), (0, 0)))
    qb = qb.reshape(q.shape[0], nq_blocks, size, *q.shape[2:]).swapaxes(0, 1)  # (blocks, B, size, H, D)

    @jax.checkpoint
    def block(q_):
        logits = jnp.einsum("bqhd,bkhd->bhqk", q_, k, preferred_element_type=acc)
        if key_bias is not None:
            logits = logits + key_bias[:, None, None, :]
        weights = jnp.exp(logits - logits.max(axis=-1, keepdims=True))
        out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v, preferred_element_type=acc)
        return (out / weights.sum(axis=-1).transpose(0, 2, 1)[..., None]).astype(q.dtype)

    out = jax.lax.map(block, qb)  # (blocks, B, size, H, D)
    return out.swapaxes(0, 1).reshape(q.shape[0], -1, *q.shape[2:])[:, :nq]


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
