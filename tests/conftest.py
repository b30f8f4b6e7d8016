"""Shared fixtures: tiny random-weight diffusers models saved with save_pretrained (a Hub snapshot's layout).

torch and diffusers are the numerical reference and are imported unconditionally: a missing reference
fails the parity tests, it never skips them.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "")
# One persistent XLA cache per test session, shared by the xdist workers and the subprocesses tests start (they
# inherit the environment): a program the tiny pipeline compiles in one process is loaded, not recompiled, in the
# next. It changes test time only; a fresh folder per session, removed at its end.
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="litefocus-jax-tests-xla-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
import jax

jax.config.update("jax_default_matmul_precision", "highest")

import diffusers  # noqa: E402,F401
import pytest  # noqa: E402
import torch  # noqa: E402,F401  (fail loudly at collection if the reference is missing)
from tiny_models import TINY_UNET_CONFIGS, save_tiny_unet  # noqa: E402


@pytest.fixture(scope="session")
def tiny_unet_dirs(tmp_path_factory):
    """{name: folder} of saved tiny diffusers UNets (base-like, large-like, tts-like)."""
    root = tmp_path_factory.mktemp("unets")
    return {name: save_tiny_unet(name, root / name) for name in TINY_UNET_CONFIGS}
