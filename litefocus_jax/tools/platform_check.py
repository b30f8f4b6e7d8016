"""Check a platform's program from any machine: lower the real-size UNet call or VAE decode for TPU or CUDA
with `jax.export` (no accelerator, no weights: parameter shapes only) and report its largest array.

    litefocus-jax platform-check --platform tpu --seconds 320 --attention exact
    python -m litefocus_jax.tools.platform_check --platform cuda --seconds 80 --component vae

The largest tensor type in the exported StableHLO bounds the largest array the program holds in device memory
(`kernels/export_check.py`); attention that materialised its logits would show as a tensor with two
sequence-long dims. On a machine without cuDNN the CUDA program takes the block-wise attention path; with
`--assume-cudnn` JAX's trace-time cuDNN check is stubbed so the cuDNN program is shown (lowered, not compiled).
"""

from __future__ import annotations

import argparse
import contextlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from litefocus_jax.kernels import cudnn
from litefocus_jax.kernels.export_check import largest_tensor_bytes, tensors
from litefocus_jax.litefocus.plan import (
    AUDIOLDM2_LATENT_FRAME_SECONDS,
    LiteFocusConfig,
    indices_for_step,
    make_comp_indices,
    make_plan,
)
from litefocus_jax.models.autoencoder_kl import AutoencoderKL, VAEConfig
from litefocus_jax.models.presets import AUDIOLDM2_VAE, unet_config
from litefocus_jax.models.unet_audioldm2 import AudioLDM2UNet2DConditionModel, UNetConfig
from litefocus_jax.utils.cli_args import positive_float
from litefocus_jax.utils.initializers import abstract_init

SDS = jax.ShapeDtypeStruct
ATTENTION = ("dense", "official", "exact")


def abstract_unet(preset: str = "audioldm2", dtype=jnp.bfloat16):
    """(config, apply, params) of the real-size UNet with `ShapeDtypeStruct` parameters (nothing allocated)."""
    cfg = UNetConfig.from_diffusers(unet_config(preset))
    with abstract_init():
        module = AudioLDM2UNet2DConditionModel(cfg, dtype=dtype, rngs=nnx.Rngs(0))
    return (cfg, *module.functional())


def unet_call(unet, seconds: float, attention: str, batch: int = 2, dtype=jnp.bfloat16):
    """(fn, args) of one UNet call at `seconds` of audio: CFG batch 2, GPT2 (8 x 768) and T5 (12 x 1024) states."""
    cfg, apply, params = unet
    frames = round(seconds / AUDIOLDM2_LATENT_FRAME_SECONDS)
    args = [params, SDS((batch, frames, 16, 8), dtype), SDS((batch, 8, 768), dtype), SDS((batch, 12, 1024), dtype)]
    args.append(SDS((batch, 12), jnp.int32))
    if attention == "dense":
        return (lambda p, x, g, t, m: apply(p, x, 501, g, t, None, m, litefocus=None)), args
    litefocus = LiteFocusConfig(duplicates=attention)
    comp = indices_for_step(make_comp_indices(make_plan(cfg, litefocus, args[1].shape), 1), 0)
    args.append({k: SDS(np.shape(v), jnp.int32) for k, v in comp.items()})
    return (lambda p, x, g, t, m, idx: apply(p, x, 501, g, t, None, m, comp_indices=idx, litefocus=litefocus)), args


def vae_decode(seconds: float, dtype=jnp.bfloat16):
    """(fn, args) of the VAE decode of one clip at `seconds` (the mid block attends over all T x 16 latents)."""
    with abstract_init():
        vae = AutoencoderKL(VAEConfig.from_diffusers(dict(AUDIOLDM2_VAE)), dtype=dtype, with_encoder=False, rngs=nnx.Rngs(0))
    apply, params = vae.functional("decode")
    return apply, [params, SDS((1, round(seconds / AUDIOLDM2_LATENT_FRAME_SECONDS), 16, 8), dtype)]


def lowered_text(fn, args, platform: str) -> str:
    """The StableHLO of `fn(*args)` lowered for `platform` ("tpu", "cuda", "cpu").

    Traced afresh each call (a new function object): jit's trace cache would otherwise reuse a program traced
    before `cudnn.assume_cudnn` changed which kernel the dispatch picks.
    """
    return jax.jit(lambda *a: fn(*a)).trace(*args).lower(lowering_platforms=(platform,)).as_text()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="litefocus-jax platform-check", description=__doc__.split("\n\n")[0])
    p.add_argument("--platform", choices=("tpu", "cuda", "cpu"), default="tpu")
    p.add_argument("--seconds", type=positive_float, default=320.0, help="audio length (default 320)")
    p.add_argument("--component", choices=("unet", "vae"), default="unet")
    p.add_argument("--attention", choices=ATTENTION, default="exact", help="UNet: dense or LiteFocus duplicates mode")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    p.add_argument("--assume-cudnn", action="store_true", help="CUDA: show the cuDNN program on a machine without cuDNN")
    p.add_argument("--top", type=int, default=5, help="how many of the largest tensors to list")
    args = p.parse_args(argv)
    dtype = getattr(jnp, args.dtype)
    if args.component == "unet":
        fn, fn_args = unet_call(abstract_unet(dtype=dtype), args.seconds, args.attention, dtype=dtype)
    else:
        fn, fn_args = vae_decode(args.seconds, dtype)
    with cudnn.assume_cudnn() if args.assume_cudnn else contextlib.nullcontext():
        text = lowered_text(fn, fn_args, args.platform)
    nbytes, shape = largest_tensor_bytes(text)
    what = f"{args.component}{'' if args.component == 'vae' else ' ' + args.attention}"
    print(
        f"{what} at {args.seconds:g} s, {args.dtype}, lowered for {args.platform}: largest tensor {shape} = {nbytes / 2**20:.0f} MiB"
    )
    for t in tensors(text)[: args.top]:
        print(f"  {t}  {t.nbytes / 2**20:.1f} MiB")
    kernels = [k for k in ("tpu_custom_call", "__cudnn$fmhaSoftmax", "fmhaScaleBiasSoftmax") if k in text]
    print(f"  attention kernels in the program: {', '.join(kernels) or 'XLA ops only (block-wise or one-shot)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
