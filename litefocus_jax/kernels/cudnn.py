"""cuDNN fused attention on NVIDIA GPUs, with per-row key masks expressed as sequence lengths.

cuDNN takes a mask only as an additive bias whose trailing dims are the full (Nq, Nk): for LiteFocus exact
rows that is (B*F, 1, T, S), 57.6 MB at 80 s and 922 MB at 320 s. Softmax attention is invariant under any
permutation of the keys, so instead each batch row's keys are reordered to put the kept ones first (a stable
sort of the drop flags) and cuDNN's padding mask (`key_value_seq_lengths`) hides the rest: no bias tensor at
all, and the kernel becomes the plain `fmhaSoftmax` (../shared/reference/ACCELERATORS.md §3.2).
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp

DTYPES = (jnp.bfloat16, jnp.float16)
MAX_HEAD_DIM = 256  # 128 before Hopper; the wrapper checks the device's compute capability itself


def supports(dtype, head_dim: int) -> bool:
    """Whether cuDNN flash attention takes these inputs at all (fp16/bf16, D a multiple of 8, D <= 256)."""
    return jnp.dtype(dtype) in [jnp.dtype(d) for d in DTYPES] and head_dim % 8 == 0 and head_dim <= MAX_HEAD_DIM


@functools.cache
def available() -> bool:
    """True when a cuDNN that JAX's fused attention accepts is loaded (JAX checks this at trace time).

    False on CPU-only machines: there a program lowered for CUDA takes the block-wise path instead, so
    exporting for "cuda" from a CPU machine does not show the cuDNN call (the GPU itself will).
    """
    from jax._src.cudnn import fused_attention_stablehlo as fa

    try:
        fa.check_cudnn_version()
    except (RuntimeError, ImportError):
        return False
    return True


@contextlib.contextmanager
def assume_cudnn():
    """Within this block JAX's trace-time cuDNN checks pass on any machine, so a program lowered for CUDA calls
    cuDNN (ACCELERATORS.md §3.4): for inspecting that program from a CPU machine (`litefocus-jax platform-check
    --assume-cudnn`, the tests). It lowers; nothing can run it here."""
    from jax._src.cudnn import fused_attention_stablehlo as fa

    saved = fa.check_cudnn_version, fa.check_compute_capability
    fa.check_cudnn_version, fa.check_compute_capability = (lambda: 91000), (lambda capability: True)
    available.cache_clear()
    try:
        yield
    finally:
        fa.check_cudnn_version, fa.check_compute_capability = saved
        available.cache_clear()


def keys_kept_first(k, v, kv_keep):
    """Reorder each batch row's keys so the kept ones come first, and count them.

    Args:
      k, v: (B, Nk, H, D).
      kv_keep: bool (B, Nk), True = attend to this key.

    Returns:
      (k', v', lengths): k', v' (B, Nk, H, D) permuted per row, lengths int32 (B,) = kept keys per row.
    """
    order = jnp.argsort(~kv_keep, axis=1, stable=True)  # kept (False) before dropped (True), order kept
    take = lambda x: jnp.take_along_axis(x, order[:, :, None, None], axis=1)
    return take(k), take(v), kv_keep.sum(axis=1, dtype=jnp.int32)


def cudnn_attention(q, k, v, *, scale: float, kv_keep=None, implementation: str = "cudnn"):
    """Exact attention through cuDNN. q (B, Nq, H, D), k/v (B, Nk, H, D), kv_keep bool (B, Nk) or None.

    `implementation="xla"` runs the same reformulation (reorder + lengths) through XLA: how the tests check
    it on machines without a GPU. Returns (B, Nq, H, D) in q's dtype. Every row must keep at least one key (cuDNN's padding mask leaves a row
    with length 0 undefined); the LiteFocus rows and key padding always do.
    """
    if implementation == "cudnn" and not supports(q.dtype, q.shape[-1]):
        raise ValueError(
            f"cuDNN attention takes bf16/fp16 with head_dim a multiple of 8 and <= {MAX_HEAD_DIM}, got {q.dtype} and "
            f"D={q.shape[-1]}; cast to bfloat16, or use implementation=None (picks the block-wise path for these)."
        )
    lengths = None
    if kv_keep is not None:
        k, v, lengths = keys_kept_first(k, v, kv_keep)
    return jax.nn.dot_product_attention(q, k, v, scale=scale, key_value_seq_lengths=lengths, implementation=implementation)
