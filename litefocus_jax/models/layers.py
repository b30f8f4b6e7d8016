"""Thin constructors for the layers every component uses, with explicit epsilons and exact variances.

Flax defaults differ from PyTorch (epsilon 1e-6, E[x^2]-E[x]^2 variance); every norm here states both.
"""

from __future__ import annotations

from flax import nnx

from litefocus_jax.utils.initializers import kernel_init, ones_init, zeros_init

_NORM_INIT = dict(scale_init=ones_init, bias_init=zeros_init)
_DENSE_INIT = dict(kernel_init=kernel_init, bias_init=zeros_init)


def group_norm(channels: int, groups: int, eps: float, *, dtype, rngs: nnx.Rngs) -> nnx.GroupNorm:
    """torch.nn.GroupNorm(groups, channels, eps) on channels-last input (contiguous channel groups)."""
    return nnx.GroupNorm(
        channels,
        num_groups=groups,
        epsilon=eps,
        use_fast_variance=False,
        dtype=dtype,
        param_dtype=dtype,
        rngs=rngs,
        **_NORM_INIT,
    )


def layer_norm(features: int, eps: float, *, dtype, rngs: nnx.Rngs, use_bias: bool = True) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        features,
        epsilon=eps,
        use_fast_variance=False,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=dtype,
        rngs=rngs,
        **_NORM_INIT,
    )


def linear(in_features: int, out_features: int, *, dtype, rngs: nnx.Rngs, use_bias: bool = True) -> nnx.Linear:
    return nnx.Linear(in_features, out_features, use_bias=use_bias, dtype=dtype, param_dtype=dtype, rngs=rngs, **_DENSE_INIT)


def conv2d(
    in_channels: int, out_channels: int, kernel: int, *, dtype, rngs: nnx.Rngs, stride: int = 1, padding: int | None = None
) -> nnx.Conv:
    """torch.nn.Conv2d(in, out, kernel, stride, padding) on NHWC input; padding defaults to (kernel-1)//2."""
    pad = (kernel - 1) // 2 if padding is None else padding
    return nnx.Conv(
        in_channels,
        out_channels,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        dtype=dtype,
        param_dtype=dtype,
        rngs=rngs,
        **_DENSE_INIT,
    )


def functional(module: nnx.Module, method: str = "__call__"):
    """A pure face for `jax.jit`/`lax.scan`: `(apply, params)`, `apply(params, *args, **kwargs)` calling `method`.

    `params` is a nested dict of arrays; the graph is closed over and `nnx.merge` runs inside whatever
    transformation traces `apply` (cheaper per call than `nnx.jit`, JAX_PRACTICES.md §1).
    """
    graphdef, state = nnx.split(module)

    def apply(params, *args, **kwargs):
        return getattr(nnx.merge(graphdef, params), method)(*args, **kwargs)

    return apply, nnx.to_pure_dict(state)
