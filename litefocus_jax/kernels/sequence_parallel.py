"""Sequence parallelism for self-attention: one `shard_map` over a mesh's "seq" axis, K/V all-gathered.

One long clip can use several devices by splitting the latent time axis over a mesh axis "seq" (SCALE.md §2-3).
Convolutions, norms and cross-attention are left to XLA's partitioner (exact: halos, all-reduces); self-attention,
which needs keys from every device, runs here behind one `shard_map` boundary:

  q (B, N, H, D) tokens split over "seq" (and the batch over "data" when it divides) stay local, k and v are
  all-gathered (tiled) over "seq" only, never over "data", and the unchanged local kernel
  (`kernels.attention.attend` through `dot_product_attention`, or `kernels.attention.litefocus_rows`) runs on the local
  queries against all keys: 2 all-gathers per call, no all-to-all, logits at most (N / seq) x N per device.

LiteFocus rows: token n = t * F + f, so a time block is a contiguous token block and the local queries are whole
time frames. Each device runs the one-device row core, `kernels.attention.litefocus_rows`, on them: its queries
regroup into F rows of T / seq frames and the gathered keys into F rows of T frames; the K compensation tokens are
taken from the gathered K/V by their global index (no extra collective, one compile for every seed), and "exact"
mode keeps its per-row keep flags. The result equals the single-device `litefocus_attention` up to float rounding.

Routing: `sequence_parallel(mesh)` is a trace-time context. Self-attention in `models/attention_processor.py` reads
`current_mesh()` while it is traced; outside the context (or with no "seq" axis of size > 1) the single-device
program is unchanged. Enter it inside the function that `jax.jit` traces, so a cached trace never mixes the two.
"""

from __future__ import annotations

import contextlib
import threading
from functools import partial

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from litefocus_jax.kernels import attention as one_device
from litefocus_jax.kernels.attention import Duplicates, Implementation

SEQ, DATA = "seq", "data"
_STATE = threading.local()


def is_sequence_mesh(mesh) -> bool:
    """Whether `mesh` splits tokens: it has a "seq" axis of size > 1."""
    return mesh is not None and SEQ in mesh.axis_names and mesh.shape[SEQ] > 1


@contextlib.contextmanager
def sequence_parallel(mesh):
    """Within this context, traced self-attention shards its tokens over `mesh`'s "seq" axis (no-op for None or a
    mesh without a "seq" axis of size > 1)."""
    previous = getattr(_STATE, "mesh", None)
    _STATE.mesh = mesh if is_sequence_mesh(mesh) else None
    try:
        yield
    finally:
        _STATE.mesh = previous


def current_mesh():
    """The mesh set by the innermost `sequence_parallel`, or None."""
    return getattr(_STATE, "mesh", None)


def token_spec(mesh, batch: int) -> P:
    """PartitionSpec of a (B, N, ...) token array: tokens over "seq", the batch over "data" when it divides."""
    data = DATA if DATA in mesh.axis_names and batch % mesh.shape[DATA] == 0 else None
    return P(data, SEQ)


def _check_tokens(n_tokens: int, mesh, what: str, unit: int = 1):
    seq = mesh.shape[SEQ]
    if (n_tokens // unit) % seq:
        raise ValueError(
            f"sequence parallelism: {what} = {n_tokens // unit} does not divide into seq = {seq} equal blocks; "
            f"use a length whose latent frames are a multiple of the UNet's downsampling times {seq} "
            "(litefocus_jax.pipelines.audioldm2.parallel.valid_lengths), or a smaller seq."
        )


def _gather(x):
    return jax.lax.all_gather(x, SEQ, axis=1, tiled=True)


def attend(q, k, v, *, mesh, scale: float, implementation: Implementation = None):
    """Dense self-attention with tokens split over `mesh`'s "seq" axis.

    q, k, v: (B, N, H, D), N divisible by the "seq" size. Returns (B, N, H, D), sharded like q.
    """
    _check_tokens(q.shape[1], mesh, "the token count N")
    spec = token_spec(mesh, q.shape[0])

    def local(q, k, v):
        return one_device.dot_product_attention(q, _gather(k), _gather(v), scale=scale, implementation=implementation)

    return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(q, k, v)


def litefocus_attention(
    q,
    k,
    v,
    *,
    mesh,
    freq_bins: int,
    comp_index,
    duplicates: Duplicates = "official",
    same_frequency: bool = True,
    cross_frequency: bool = True,
    scale: float | None = None,
    implementation: Implementation = None,
):
    """`kernels.attention.litefocus_attention` with the time axis split over `mesh`'s "seq" axis.

    q, k, v: (B, T * F, H, D), token n = t * F + f, T divisible by the "seq" size; comp_index (K,) global token
    indices (replicated). Returns (B, T * F, H, D), sharded like q.
    """
    comp_index = one_device.check_litefocus_args(
        q,
        k,
        v,
        freq_bins=freq_bins,
        comp_index=comp_index,
        duplicates=duplicates,
        same_frequency=same_frequency,
        cross_frequency=cross_frequency,
        implementation=implementation,
    )
    _check_tokens(q.shape[1], mesh, "the time frames T", unit=freq_bins)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if not cross_frequency or comp_index is None:
        comp_index = jnp.zeros((0,), jnp.int32)  # shard_map needs an array; unused
    spec = token_spec(mesh, q.shape[0])
    rows = partial(
        one_device.litefocus_rows,
        freq_bins=freq_bins,
        duplicates=duplicates,
        same_frequency=same_frequency,
        cross_frequency=cross_frequency,
        scale=scale,
        implementation=implementation,
    )

    def local(q, k, v, comp_index):
        """Local queries (B, T/seq * F, H, D) against the gathered keys (B, T * F, H, D)."""
        return rows(q, _gather(k), _gather(v), comp_index=comp_index)

    return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec, P()), out_specs=spec, check_vma=False)(q, k, v, comp_index)
