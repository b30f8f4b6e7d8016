"""The real-size programs as lowered for TPU and CUDA from this CPU machine: no array near N x N.

The UNet call (bf16, classifier-free-guidance batch 2, cvssp/audioldm2 geometry, shape-only weights) dense and
with LiteFocus (both duplicate modes), and the VAE decode, at 320 s of audio, built by the documented
`litefocus-jax platform-check` tool. The largest tensor type of each program's StableHLO bounds the largest
array it holds in device memory (kernels/export_check.py). On this machine cuDNN is absent, so the plain CUDA
program takes the block-wise path; `test_unet_call_at_320s_on_cudnn` shows the cuDNN program with JAX's
trace-time check stubbed.

Figures reached (largest tensor, 320 s, bf16; printed with -s, quoted in the README's Platforms section):
UNet tpu 375 MiB (a GroupNorm activation, all modes); UNet cuda block path: dense 510 MiB (2x8x261x32000 f32
logits block), LiteFocus 503 MiB (16x8x143x7200); UNet cuda+cuDNN 375 MiB; VAE decode 2000 MiB (a GroupNorm
activation at mel resolution, 1x32000x64x32x8 f32), both platforms.
"""

from __future__ import annotations

import pytest

from litefocus_jax.kernels import cudnn
from litefocus_jax.kernels.export_check import export_for_platform, largest_tensor_bytes, tensors_reaching
from litefocus_jax.tools import platform_check as pc

SECONDS = 320  # level-1 self-attention: N = 4000 x 8 = 32000 tokens; LiteFocus rows T = 4000, S = 7200
LIMIT = 2 << 30  # 2 GiB
MAX_CHANNELS = 3072  # the UNet's widest activation (an up block's concatenation)


def _logits_like(text: str, size: int) -> list[str]:
    """Tensors with two dims longer than any channel count whose product reaches `size`: logits need two
    sequence-long dims (level 1 at 320 s: T = 4000, S = 7200, N = 32000), activations have one."""
    long_pairs = lambda shape: [a * b for i, a in enumerate(shape) for b in shape[i + 1 :] if min(a, b) > MAX_CHANNELS]
    return [str(t) for t in tensors_reaching(text, size) if max(long_pairs(t.shape), default=0) >= size]


@pytest.fixture(scope="module")
def unet():
    return pc.abstract_unet()


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
@pytest.mark.parametrize("attention", pc.ATTENTION)
def test_unet_call_at_320s_holds_no_logits_sized_array(unet, platform, attention):
    fn, args = pc.unet_call(unet, SECONDS, attention)
    text = export_for_platform(fn, *args, platforms=platform).mlir_module()
    nbytes, shape = largest_tensor_bytes(text)
    print(f"UNet {attention} {platform} {SECONDS} s bf16: largest tensor {shape} = {nbytes / 2**20:.0f} MiB")
    assert nbytes <= LIMIT, shape
    assert not _logits_like(text, 4000 * 7200 // 4), _logits_like(text, 4000 * 7200 // 4)[:3]
    if platform == "tpu":
        assert "tpu_custom_call" in text


@pytest.mark.parametrize("attention", ["dense", "exact"])
def test_unet_call_at_320s_on_cudnn(unet, attention):
    """The CUDA program as a GPU with cuDNN gets it: cuDNN's fused softmax, no bias even for exact rows."""
    fn, args = pc.unet_call(unet, SECONDS, attention)
    with cudnn.assume_cudnn():
        text = pc.lowered_text(fn, args, "cuda")
    nbytes, shape = largest_tensor_bytes(text)
    print(f"UNet {attention} cuda+cuDNN {SECONDS} s bf16: largest tensor {shape} = {nbytes / 2**20:.0f} MiB")
    assert "__cudnn$fmhaSoftmax" in text and "fmhaScaleBiasSoftmax" not in text
    assert nbytes <= LIMIT and not _logits_like(text, 4000 * 7200 // 4), shape


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_vae_decode_at_320s_holds_no_logits_sized_array(platform):
    fn, args = pc.vae_decode(SECONDS)
    text = export_for_platform(fn, *args, platforms=platform).mlir_module()
    nbytes, shape = largest_tensor_bytes(text)
    print(f"VAE decode {platform} {SECONDS} s bf16: largest tensor {shape} = {nbytes / 2**20:.0f} MiB")
    assert nbytes <= LIMIT, shape
    n = args[1].shape[1] * 16  # the mid block attends over all latent tokens: 128000 at 320 s
    assert not _logits_like(text, n * n // 16), _logits_like(text, n * n // 16)[:3]


def test_platform_check_command_reports_the_program(capsys):
    assert pc.main(["--platform", "tpu", "--seconds", "20", "--attention", "exact", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "unet exact at 20 s, float32, lowered for tpu: largest tensor" in out and "tpu_custom_call" in out
    with pytest.raises(SystemExit):
        pc.main(["--seconds", "-1"])
