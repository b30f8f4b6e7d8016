"""bf16 end to end: the tiny pipeline in bfloat16 against the same pipeline in float32.

Every stage runs in the pipeline dtype (text encoders, GPT2, the denoising scan with the UNet, VAE, vocoder);
schedulers update latents in float32 whatever the dtype, as diffusers does. The bound is set from the error
measured when this test was written (see ERR_REACHED), with room for platform-to-platform rounding, not widened
to pass.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import litefocus_jax as lj
from litefocus_jax.pipelines.audioldm2.tiny import build_tiny_pipeline

# Relative L2 error of the waveform, bf16 vs fp32, 2.56 s, 3 DDIM steps, guidance 3.5, reached on the 2-core CPU: dense
# 4.5e-2, LiteFocus exact 4.6e-2 (without guidance about half: guidance multiplies the error of cond - uncond
# by 3.5). A bf16 rounding is 2**-9 = 2e-3; the stages compound it.
ERR_BOUND = 0.1


@pytest.fixture(scope="module")
def pipes():
    return build_tiny_pipeline(dtype=jnp.float32), build_tiny_pipeline(dtype=jnp.bfloat16)


@pytest.mark.parametrize("litefocus", [None, lj.LiteFocusConfig(duplicates="exact")], ids=["dense", "litefocus"])
def test_bf16_pipeline_close_to_fp32(pipes, litefocus):
    kw = dict(audio_length_in_s=2.56, num_inference_steps=3, seed=0, litefocus=litefocus)
    ref = pipes[0]("a dog barks in the rain", **kw).audios
    out = pipes[1]("a dog barks in the rain", **kw).audios
    assert out.dtype == np.float32 and out.shape == ref.shape and np.isfinite(out).all()
    err = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    print(f"bf16 vs fp32 waveform, {'dense' if litefocus is None else 'LiteFocus exact'}: relative L2 {err:.2e}")
    assert err < ERR_BOUND, err
