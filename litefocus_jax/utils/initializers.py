"""Parameter initialisers that can be switched to shapes only, so a model's structure costs nothing to build.

Used by every model (random weights for tests and benchmarks) and by the weights layer (the target shapes a
checkpoint is validated against, without allocating the model).
"""

from __future__ import annotations

import contextlib
import math
import threading

import jax
import jax.numpy as jnp
import numpy as np

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
