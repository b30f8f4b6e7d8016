"""Multi-head attention (diffusers `Attention` with `AttnProcessor2_0`) with an optional LiteFocus path."""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from litefocus_jax.kernels import sequence_parallel
from litefocus_jax.kernels.attention import dot_product_attention, litefocus_attention
from litefocus_jax.litefocus.plan import LevelPlan, LiteFocusConfig
from litefocus_jax.models.layers import linear


@dataclasses.dataclass
class LiteFocusCalls:
    """Trace-time cursor over the compensation rows of one UNet level, consumed in call order.

    Attributes:
      config: the LiteFocus configuration.
      plan: the level's plan (call count, T, F, K).
      indices: int32 (calls, K) compensation indices for this UNet call, or None when cross_frequency is off.
    """

    config: LiteFocusConfig
    plan: LevelPlan
    indices: jax.Array | None
    cursor: int = 0

    def attend(self, q, k, v, *, grid: tuple[int, int], scale: float, implementation, mesh=None):
        """LiteFocus attention of (B, N, H, D) q/k/v on a (T, F) token grid with the next index row.

        With `mesh` (a "seq" axis) the time axis is split over it (`kernels/sequence_parallel.py`).
        """
        if grid != (self.plan.time, self.plan.freq_bins):
            raise ValueError(
                f"LiteFocus level {self.plan.level!r} was planned for a {self.plan.time}x{self.plan.freq_bins} "
                f"token grid but sees {grid[0]}x{grid[1]}: build the plan from this sample's shape."
            )
        if self.cursor >= self.plan.calls:
            raise ValueError(f"LiteFocus level {self.plan.level!r}: more sparse calls than the {self.plan.calls} planned.")
        row = None if self.indices is None else self.indices[self.cursor]
        self.cursor += 1
        cfg = self.config
        kernel = litefocus_attention if mesh is None else partial(sequence_parallel.litefocus_attention, mesh=mesh)
        return kernel(
            q,
            k,
            v,
            freq_bins=grid[1],
            comp_index=row,
            duplicates=cfg.duplicates,
            same_frequency=cfg.same_frequency,
            cross_frequency=cfg.cross_frequency,
            scale=scale,
            implementation=implementation,
        )


def query_probs(q: jax.Array, k: jax.Array, queries: tuple[int, ...], scale: float) -> jax.Array:
    """Dense softmax(q k^T * scale) of the chosen query tokens over all keys, in float32.

    q (B, N, H, D), k (B, M, H, D), queries Q token indices -> (B, H, Q, M). Costs Q x M, never N x M.
    """
    sel = q[:, jnp.asarray(queries, jnp.int32)].astype(jnp.float32)
    logits = jnp.einsum("bqhd,bkhd->bhqk", sel, k.astype(jnp.float32)) * scale
    return jax.nn.softmax(logits, axis=-1)


class Attention(nnx.Module):
    """to_q/to_k/to_v (no bias), heads as contiguous channel chunks, scale head_dim**-0.5, to_out.0 (bias).

    `capture_queries`: None, or a tuple of query token indices. When set (before tracing; it is static) a
    self-attention call also sows the dense probabilities of those queries, `query_probs` (B, H, Q, N), as
    `nnx.Intermediate` "attention_probs" (collect them with `nnx.capture`), whatever path computes the
    output (dense or LiteFocus). See litefocus_jax/analysis.py.
    """

    def __init__(
        self,
        query_dim: int,
        heads: int,
        dim_head: int,
        cross_attention_dim: int | None = None,
        *,
        dtype,
        rngs,
        implementation: str | None = None,
    ):
        inner = heads * dim_head
        kv_dim = cross_attention_dim or query_dim
        self.heads = heads
        self.scale = dim_head**-0.5
        self.implementation = implementation
        self.capture_queries: tuple[int, ...] | None = None
        self.to_q = linear(query_dim, inner, use_bias=False, dtype=dtype, rngs=rngs)
        self.to_k = linear(kv_dim, inner, use_bias=False, dtype=dtype, rngs=rngs)
        self.to_v = linear(kv_dim, inner, use_bias=False, dtype=dtype, rngs=rngs)
        self.to_out = nnx.List([linear(inner, query_dim, dtype=dtype, rngs=rngs)])

    def _heads(self, x: jax.Array) -> jax.Array:
        return x.reshape(*x.shape[:2], self.heads, -1)

    def __call__(
        self,
        x: jax.Array,
        context: jax.Array | None = None,
        bias: jax.Array | None = None,
        *,
        grid: tuple[int, int] | None = None,
        sparse: LiteFocusCalls | None = None,
    ) -> jax.Array:
        """x (B, N, C); context (B, M, C_ctx) or None for self-attention; bias additive (B, 1, 1, M).

        With `sparse` (self-attention only) the N = T*F tokens on `grid` = (T, F) attend LiteFocus-style. Traced
        inside `kernels.sequence_parallel.sequence_parallel(mesh)`, self-attention splits its tokens over "seq".
        """
        kv = x if context is None else context
        q, k, v = self._heads(self.to_q(x)), self._heads(self.to_k(kv)), self._heads(self.to_v(kv))
        if self.capture_queries is not None and context is None:
            self.sow(nnx.Intermediate, "attention_probs", query_probs(q, k, self.capture_queries, self.scale))
        mesh = sequence_parallel.current_mesh() if context is None else None
        if sparse is not None and context is None:
            out = sparse.attend(q, k, v, grid=grid, scale=self.scale, implementation=self.implementation, mesh=mesh)
        elif mesh is not None and bias is None:
            out = sequence_parallel.attend(q, k, v, mesh=mesh, scale=self.scale, implementation=self.implementation)
        else:
            out = dot_product_attention(q, k, v, bias=bias, scale=self.scale, implementation=self.implementation)
        return self.to_out[0](out.reshape(*out.shape[:2], -1))
