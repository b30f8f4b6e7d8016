"""TPU attention: Pallas splash attention with key keep flags expressed as per-example kv segment ids.

One function, `tpu_attention`, serves every attention of the library on TPU: dense self-attention, the
LiteFocus rows of `attention.litefocus_attention` (batch B*F, Lq = T, Lk = S = T + K) in both duplicate
modes, key padding, and the VAE mid block (1 head, D = 512). None of them needs a logits-sized array:

- Splash (`jax.experimental.pallas.ops.tpu.splash_attention`) rather than the older Pallas
  `flash_attention`: splash takes an `interpret` argument (so CI runs the same kernel on CPU), per-example
  `SegmentIds` that `vmap` batches (the per-row kv ids LiteFocus "exact" mode needs), and it is what
  MaxDiffusion runs on TPUs for diffusion attention. `flash_attention` has no `interpret` argument, and its
  only other masking input (`ab`) is a (B, H, Lq, Lk) bias: exactly the array this module exists to avoid.
- Masking is only ever by kv segment ids: the query ids are all 1, a kept key has id 1, a dropped key (and
  block padding) id 0, so a query attends exactly to the kept keys of its own batch row. That is O(Lk) ints
  per row. The static splash mask is a full mask; a dynamic `jax.Array` mask would be (H, Lq, Lk) booleans.

Nothing here has run on a TPU (none was available): the numerics are proven on CPU in interpret mode and the
lowering by `jax.export` for platform "tpu" (tests/kernels/test_tpu_attention.py). Block sizes are untuned.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask

BlockSizes = splash.BlockSizes

# TPU vector registers are 8 x 128; splash needs kv blocks that are multiples of 128 and, with segment ids,
# its backward dkv kernel also needs q blocks that are multiples of 128. Every block here is one.
LANES = 128

# Upper bounds of the q and kv blocks per dtype: MaxDiffusion's `_select_flash_block_sizes` (block_q 1024 for
# bf16, 512 for fp32), i.e. its hardware-run default.
_MAX_BLOCK = {jnp.dtype(jnp.bfloat16): 1024, jnp.dtype(jnp.float32): 512}


def _vmem_estimate(block_q: int, block_kv: int, head_dim: int, itemsize: int) -> int:
    """Rough bytes of VMEM one forward grid step holds (double-buffered q, k, v, out tiles and segment ids,
    the f32 running max/sum/accumulator, the f32 logits and probabilities). Only used to scale blocks down
    for large D relative to a configuration known to run; not a model of Mosaic's allocator."""
    tiles = 2 * (block_q + 2 * block_kv) * head_dim * itemsize + 2 * block_q * head_dim * itemsize
    ids = 2 * block_q * LANES * 4 + 2 * 8 * block_kv * 4
    scratch = 2 * block_q * LANES * 4 + block_q * head_dim * 4
    logits = 2 * block_q * block_kv * 4
    return tiles + ids + scratch + logits


# The VMEM budget of a block pair: the estimate of MaxDiffusion's default (blocks 1024 x 1024, bf16, D = 128),
# which runs on TPUs. At D = 512 (VAE) this halves the blocks; at D <= 128 the dtype caps above bind.
_VMEM_BUDGET = _vmem_estimate(1024, 1024, 128, 2)
# Padding of a length to a block multiple that is accepted before trading block size for less padding.
_MAX_PADDING = 1 / 32


def tpu_attention(
    q, k, v, *, scale=None, kv_keep=None, interpret=False, block_sizes: BlockSizes | None = None, pad_head_dim=True
):
    """Multi-head attention through Pallas splash attention, masked only by per-example kv segment ids.

    Args:
      q: (B, Nq, H, D) queries.
      k, v: (B, Nk, H, D) keys and values; q, k, v share one dtype, bfloat16 or float32.
      scale: logits scale; defaults to D ** -0.5. Folded into q (splash has no scale argument).
      kv_keep: optional bool (B, Nk): True where batch row b may attend to key j. None keeps every key.
        It expresses key padding and LiteFocus "exact" mode, whose rows (the batch axis of the row form)
        each drop their own gathered keys. Every row must keep at least one key: a row with none gets a
        meaningless output and no error (the flags may be traced, so they are not checked).
      interpret: run the Pallas kernels in interpret mode (any backend; CPU needs it). False lowers them for
        TPU with Mosaic; on CPU that program still runs inside `pltpu.force_tpu_interpret_mode(True)`. A
        `pltpu.InterpretParams` (TPU-simulating interpreter) fails under the batch vmap for B > 1 (a jax bug,
        ACCELERATORS.md §2.4).
      block_sizes: splash `BlockSizes`; None picks them from the dtype, D and lengths (untuned, see
        `default_block_sizes`). For gradients they must include the backward blocks. Nq and Nk are padded to
        multiples of every q and kv block given.
      pad_head_dim: zero-pad D up to a multiple of 128 (the route MaxDiffusion runs on TPUs). Zero columns of
        q and k leave the logits unchanged and the zero columns of v are sliced off the output. Costs
        128 / D times the HBM bytes of q, k, v and output at D = 32 (4x; still linear in N) but no in-kernel
        vector work, since TPU vector ops pad to 128 lanes anyway. False passes D as is: Pallas accepts a
        block equal to the full array dimension, the export lowers, but whether Mosaic compiles D = 32 on a
        TPU and which is faster is unknown.

    Returns:
      (B, Nq, H, D) in the dtype of q. Differentiable (splash's own backward kernels).
    """
    if kv_keep is not None:
        kv_keep = jnp.asarray(kv_keep)
    _validate(q, k, v, kv_keep, block_sizes)
    batch, n_q, heads, head_dim = q.shape
    n_k = k.shape[1]
    if scale is None:
        scale = head_dim**-0.5
    padded_dim = _round_up(head_dim, LANES) if pad_head_dim else head_dim
    if block_sizes is None:
        block_sizes = default_block_sizes(n_q, n_k, padded_dim, q.dtype)
    len_q = _round_up(n_q, _lcm_of(block_sizes.block_q, block_sizes.block_q_dkv, block_sizes.block_q_dq))
    len_k = _round_up(n_k, _lcm_of(block_sizes.block_kv, block_sizes.block_kv_dkv, block_sizes.block_kv_dq))

    # In f32, so a bf16 q is rounded once (q * scale) and the scale itself is not first rounded to bf16,
    # which would bias every logit. The f32 product is elementwise between two casts: XLA fuses it, though
    # the exported text lists it as an f32 tensor of q's shape.
    q = (q.astype(jnp.float32) * scale).astype(k.dtype)

    def to_kernel_layout(x, length):
        # (B, N, H, D) -> (B, H, L, Dp): splash wants heads leading and the sequence next to D; the padded
        # queries attend normally (no fully masked rows) and their outputs are sliced off below.
        x = jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, padded_dim - head_dim)))
        return x.transpose(0, 2, 1, 3)

    q_k = to_kernel_layout(q, len_q)
    k_k, v_k = (to_kernel_layout(x, len_k) for x in (k, v))

    # The static mask is the same full mask for every head and batch row; splash deduplicates it, so its
    # block metadata is (1, Lq / block_q, Lk / block_kv) ints. All masking comes from the segment ids.
    mask = splash_mask.MultiHeadMask(tuple(splash_mask.FullMask((len_q, len_k)) for _ in range(heads)))
    kernel = splash.make_splash_mha(mask, block_sizes=block_sizes, head_shards=1, q_seq_shards=1, interpret=interpret)

    segment_ids, segment_axes = _segment_ids(kv_keep, batch, n_k, len_q, len_k)
    if segment_ids is None:
        out = jax.vmap(kernel)(q_k, k_k, v_k)
    else:
        out = jax.vmap(kernel, in_axes=(0, 0, 0, segment_axes))(q_k, k_k, v_k, segment_ids)
    return out[:, :, :n_q, :head_dim].transpose(0, 2, 1, 3)


def default_block_sizes(n_q: int, n_k: int, head_dim: int, dtype) -> BlockSizes:
    """Forward and backward splash blocks for lengths (n_q, n_k) at (padded) head dim `head_dim`.

    Untuned (no TPU was available). The cap is MaxDiffusion's per-dtype block (1024 bf16 / 512 fp32), lowered
    in steps of 128 while a block pair's rough VMEM estimate exceeds that of MaxDiffusion's own default at
    D = 128 (D = 512 gets caps 640 bf16 / 512 fp32). A length up to the cap is one block of its 128-padded
    size; a longer one takes the largest block in [cap / 2, cap] that pads it by at most ~3 %, else the one
    that pads it least. bf16 at D = 128: T = 1000 -> 1 x 1024, S = 1800 -> 3 x 640, T = 4000 -> 4 x 1024,
    S = 7200 -> 10 x 768, N = 32000 -> 32 x 1024. The backward kernels use the same blocks.
    """
    dtype = jnp.dtype(dtype)
    cap = _MAX_BLOCK[dtype]
    while cap > LANES and _vmem_estimate(cap, cap, head_dim, dtype.itemsize) > _VMEM_BUDGET:
        cap -= LANES
    block_q, block_kv = _pick_block(n_q, cap), _pick_block(n_k, cap)
    return BlockSizes(
        block_q=block_q,
        block_kv=block_kv,
        block_kv_compute=block_kv,
        block_q_dkv=block_q,
        block_kv_dkv=block_kv,
        block_kv_dkv_compute=block_kv,
        block_q_dq=block_q,
        block_kv_dq=block_kv,
    )


def _pick_block(n: int, cap: int) -> int:
    if _round_up(n, LANES) <= cap:
        return _round_up(n, LANES)
    candidates = range(cap, max(LANES, cap // 2) - 1, -LANES)
    # Fewer, larger grid steps unless that pads the length by more than ~3 %; then the least padding.
    for block in candidates:
        if _round_up(n, block) <= n * (1 + _MAX_PADDING):
            return block
    return min(candidates, key=lambda b: (_round_up(n, b), -b))


def _segment_ids(kv_keep, batch, n_k, len_q, len_k):
    """Splash `SegmentIds` and their vmap axes, or (None, None) when no key is masked."""
    if kv_keep is None and len_k == n_k:
        return None, None
    q_ids = jnp.ones((len_q,), jnp.int32)
    if kv_keep is None:
        kv_ids = (jnp.arange(len_k) < n_k).astype(jnp.int32)
        return splash.SegmentIds(q=q_ids, kv=kv_ids), splash.SegmentIds(q=None, kv=None)
    kv_ids = jnp.pad(jnp.asarray(kv_keep).astype(jnp.int32), ((0, 0), (0, len_k - n_k)))
    return splash.SegmentIds(q=q_ids, kv=kv_ids), splash.SegmentIds(q=None, kv=0)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _lcm_of(*blocks) -> int:
    return math.lcm(*(b for b in blocks if b is not None))


def _validate(q, k, v, kv_keep, block_sizes):
    shapes = [jnp.shape(x) for x in (q, k, v)]
    if any(len(s) != 4 for s in shapes):
        raise ValueError(f"tpu_attention expects q, k, v of shape (B, N, H, D), got shapes {shapes}.")
    (b, n_q, h, d), k_shape, v_shape = shapes
    if k_shape != v_shape:
        raise ValueError(f"tpu_attention: k and v must share one (B, Nk, H, D) shape, got {k_shape} and {v_shape}.")
    if (k_shape[0], k_shape[2], k_shape[3]) != (b, h, d):
        raise ValueError(f"tpu_attention: q {shapes[0]} and k {k_shape} must agree on batch, heads and head dim (B, _, H, D).")
    if min(n_q, k_shape[1], d, b, h) < 1:
        raise ValueError(f"tpu_attention: every dimension of q, k, v must be >= 1, got shapes {shapes}.")
    dtypes = {jnp.dtype(x.dtype) for x in (q, k, v)}
    if len(dtypes) != 1 or next(iter(dtypes)) not in _MAX_BLOCK:
        raise ValueError(
            f"tpu_attention: q, k, v must share one dtype, bfloat16 or float32, got {[str(x.dtype) for x in (q, k, v)]}; "
            "cast them first."
        )
    if kv_keep is not None:
        if jnp.shape(kv_keep) != (b, k_shape[1]):
            raise ValueError(
                f"tpu_attention: kv_keep must have shape (B, Nk) = {(b, k_shape[1])}, got {jnp.shape(kv_keep)}; "
                "it holds one keep flag per batch row and key."
            )
        if jnp.dtype(kv_keep.dtype) != jnp.dtype(bool):
            raise ValueError(f"tpu_attention: kv_keep must be boolean (True = attend), got dtype {kv_keep.dtype}.")
    if block_sizes is not None and not isinstance(block_sizes, BlockSizes):
        raise ValueError(
            f"tpu_attention: block_sizes must be a splash BlockSizes (litefocus_jax.kernels.tpu.BlockSizes) or None, "
            f"got {type(block_sizes).__name__}."
        )
