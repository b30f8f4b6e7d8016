"""Thin constructors for the layers every component uses, with explicit epsilons and exact variances.

Flax defaults differ from PyTorch (epsilon 1e-6, E[x^2]-E[x]^2 variance); every norm here states both.
"""

from __future__ import annotations

import contextlib
import math
import threading

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

_STATE = threading.local()


@contextlib.contextmanager
def abstract_init():
    """Within this block, layers get `jax.ShapeDtypeStruct` parameters: a model's graph and shapes at no cost.

    (`nnx.eval_shape` traces every initialiser and took 20-45 s for the tiny UNet on the 2-core machine.)
    """
    previous = getattr(_STATE, "abstract", False)
    _STATE.abstract = True
    try:
        yield
    finally:
        _STATE.abstract = previous


def _initializer(fill):
    def init(key, shape, dtype=jnp.float32):
        if getattr(_STATE, "abstract", False):
            return jax.ShapeDtypeStruct(tuple(shape), dtype)
        return fill(key, tuple(shape), dtype)

    return init


def _host_normal(key, shape, dtype):
    # Drawn with numpy on the host: eager jax initialisers compile once per distinct shape (minutes per UNet).
    seed = np.asarray(jax.random.key_data(key)).ravel().tolist()
    fan_in = math.prod(shape[:-1]) or 1
    values = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32) / math.sqrt(fan_in)
    return jnp.asarray(values, dtype)


kernel_init = _initializer(_host_normal)
zeros_init = _initializer(lambda key, shape, dtype: jnp.zeros(shape, dtype))
ones_init = _initializer(lambda key, shape, dtype: jnp.ones(shape, dtype))
_NORM_INIT = dict(scale_init=ones_init, bias_init=zeros_init)
_DENSE_INIT = dict(kernel_init=kernel_init, bias_init=zeros_init)


def group_norm(channels: int, groups: int, eps: float, *, dtype, rngs: nnx.Rngs) -> nnx.GroupNorm:
    """torch.nn.GroupNorm(groups, channels, eps) on channels-last input (contiguous channel groups)."""
    return nnx.GroupNorm(
        channels, num_groups=groups, epsilon=eps, use_fast_variance=False, dtype=dtype, param_dtype=dtype, rngs=rngs,
        **_NORM_INIT,
    )


def layer_norm(features: int, eps: float, *, dtype, rngs: nnx.Rngs, use_bias: bool = True) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        features, epsilon=eps, use_fast_variance=False, use_bias=use_bias, dtype=dtype, param_dtype=dtype, rngs=rngs,
        **_NORM_INIT,
    )


def linear(in_features: int, out_features: int, *, dtype, rngs: nnx.Rngs, use_bias: bool = True) -> nnx.Linear:
    return nnx.Linear(
        in_features, out_features, use_bias=use_bias, dtype=dtype, param_dtype=dtype, rngs=rngs, **_DENSE_INIT
    )


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
