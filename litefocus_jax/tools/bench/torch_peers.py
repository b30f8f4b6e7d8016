"""The PyTorch peers: bare SDPA / the released LiteFocus algorithm over SDPA on the attention scope's own q, k, v
and index, and the diffusers UNet (SDPA processors, or the released algorithm on level 1) alone or in the
diffusers-style sampling loop with VAE decode and vocoder. Eager: no compile step.
"""

from __future__ import annotations

import numpy as np

from litefocus_jax.schedulers.scheduling_utils import CVSSP_DDIM
from litefocus_jax.tools.bench.specs import (
    BATCH,
    GUIDANCE,
    MEL_LATENT_BINS,
    TIMESTEP,
    Impl,
    attention_inputs,
    model_configs,
    text_states,
)
from litefocus_jax.tools.bench.timing import save_output, stage_medians, staged, timed_runs, timing_fields


def _torch_setup(spec: dict):
    """-> (torch, device, dtype) with torch's intra-op threads set to XLA's CPU count."""
    from litefocus_jax.tools.torch_reference import require_torch

    torch, _, _ = require_torch()
    torch.set_num_threads(spec["threads"])
    device = "cpu"
    if spec["backend"] == "gpu":
        if not torch.cuda.is_available():
            raise RuntimeError("the JAX backend is a GPU but this torch has no CUDA; install a CUDA torch or use --no-torch.")
        device = "cuda"
        torch.cuda.reset_peak_memory_stats()
    return torch, device, getattr(torch, spec["dtype"])


def torch_run(torch, device, stages, spec: dict) -> dict:
    """Time the chained (name, fn(previous output)) stages eagerly: no compile step."""
    sync = (lambda x: (torch.cuda.synchronize(), x)[1]) if device == "cuda" else (lambda x: x)
    call, log = staged(stages, sync)
    with torch.inference_mode():
        out, first, runs = timed_runs(call, spec["repeats"], budget_s=spec.get("run_budget_s"))
    save_output(spec, out.float().cpu().numpy())
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    return dict(
        compile_s=None, **timing_fields(first, runs), stage_run_s=stage_medians(stages, log), memory=dict(device_peak_bytes=peak)
    )


def torch_attention(spec: dict) -> dict:
    from litefocus_jax.tools.torch_reference import released_litefocus_sdpa

    torch, device, dtype = _torch_setup(spec)
    impl, g = Impl(**spec["impl"]), spec["geometry"]
    q, k, v, idx = attention_inputs(g, spec["seed"])
    q, k, v = (torch.from_numpy(x.transpose(0, 2, 1, 3).copy()).to(device, dtype) for x in (q, k, v))  # (B, H, N, D)
    idx = torch.from_numpy(idx.astype(np.int64)).to(device)
    if impl.attention == "dense":
        call = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)  # noqa: E731
    else:
        call = lambda: released_litefocus_sdpa(q, k, v, idx, g["level1_freq"])  # noqa: E731
    return torch_run(torch, device, [("attention", lambda _: call().transpose(1, 2))], spec)


def _torch_unet_model(spec: dict, torch, device, dtype):
    """The diffusers UNet at the model geometry; LiteFocus levels get the released algorithm over SDPA with
    the released index draw (a fresh randperm at every call)."""
    from litefocus_jax.tools import torch_reference as tr

    impl, g = Impl(**spec["impl"]), spec["geometry"]
    unet = tr.build_unet(model_configs(spec["model"])["unet"], seed=spec["seed"], device=device, dtype=dtype)
    if impl.attention == "litefocus":
        provider = tr.randperm_provider(g["level1_tokens"], g["comp_tokens"], device)
        tr.install_released_litefocus(unet, {"1": provider}, {"1": g["level1_freq"]}, kernel="sdpa")
    return unet


def _torch_text(spec: dict, torch, device, dtype):
    gpt2, t5, mask = text_states(spec["geometry"], spec["seed"])
    return (
        torch.from_numpy(gpt2).to(device, dtype),
        torch.from_numpy(t5).to(device, dtype),
        torch.from_numpy(mask.astype(np.int64)).to(device),
    )


def torch_unet(spec: dict) -> dict:
    torch, device, dtype = _torch_setup(spec)
    unet = _torch_unet_model(spec, torch, device, dtype)
    shape = (BATCH, spec["geometry"]["latent_frames"], MEL_LATENT_BINS, 8)
    x = np.random.default_rng(spec["seed"]).standard_normal(shape, dtype=np.float32)
    x = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(device, dtype)  # NCHW (B, C, T, F)
    gpt2, t5, mask = _torch_text(spec, torch, device, dtype)

    def call(_):
        return unet(
            x, TIMESTEP, encoder_hidden_states=gpt2, encoder_hidden_states_1=t5, encoder_attention_mask_1=mask
        ).sample.permute(0, 2, 3, 1)

    return torch_run(torch, device, [("unet", call)], spec)


def torch_e2e(spec: dict) -> dict:
    from litefocus_jax.tools import torch_reference as tr

    torch, device, dtype = _torch_setup(spec)
    cfgs, seed = model_configs(spec["model"]), spec["seed"]
    unet = _torch_unet_model(spec, torch, device, dtype)
    vae = tr.build_vae(cfgs["vae"], seed=seed, device=device, dtype=dtype)
    vocoder = tr.build_vocoder(cfgs["vocoder"], seed=seed, device=device, dtype=dtype)
    scheduler = tr.make_scheduler(spec["scheduler"], CVSSP_DDIM)
    shape = (1, spec["geometry"]["latent_frames"], MEL_LATENT_BINS, 8)
    latents = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    latents = torch.from_numpy(latents.transpose(0, 3, 1, 2).copy()).to(device, dtype)
    gpt2, t5, mask = _torch_text(spec, torch, device, dtype)

    stages = [
        ("denoise", lambda _: tr.denoise(unet, scheduler, spec["steps"], latents, gpt2, t5, mask, GUIDANCE)),
        ("decode", lambda x: tr.decode(vae, vocoder, x)),
    ]
    return torch_run(torch, device, stages, spec)
