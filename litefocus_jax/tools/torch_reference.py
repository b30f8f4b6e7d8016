"""PyTorch peers of the JAX kernels: the released LiteFocus algorithm and the diffusers/transformers models.

Used by the parity tests (the numerical reference) and by `litefocus_jax.tools.bench` (the PyTorch timing peers).
The library never needs torch: this module imports without it, and each function that needs torch,
diffusers or transformers imports it when called, failing with an ImportError that names the install
command.

- `released_litefocus_torch`: a transcription in torch of the released algorithm as described in
  ../shared/reference/LITEFOCUS.md §2 (explicit per-row and compensation scores, one joint softmax),
  layout (B, heads, N, D), with the compensation index passed in instead of drawn by `torch.randperm`.
  Written from that description, not copied from any repository.
- `released_litefocus_sdpa`: the same algorithm (duplicates counted twice) in the row form of LITEFOCUS.md
  §4 over `torch.nn.functional.scaled_dot_product_attention`: the fair PyTorch timing peer.
- `ReleasedLiteFocusAttnProcessor`: a diffusers attention processor running either form for
  self-attention and stock `AttnProcessor2_0` behaviour for cross-attention.
- `install_released_litefocus`, `build_unet`, `build_vae`, `build_vocoder`, `make_scheduler`, `denoise`,
  `decode`: random-weight diffusers models and the diffusers-style sampling loop of the benchmark's
  end-to-end scope.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

INSTALL_HINT = 'pip install "litefocus-jax[test]"'


def require_torch():
    """Import and return torch, diffusers and transformers, or raise an ImportError naming the fix."""
    try:
        import diffusers
        import torch
        import transformers
    except ImportError as e:
        raise ImportError(
            f"litefocus_jax.tools.torch_reference needs torch, diffusers and transformers ({e}); install them with "
            f"{INSTALL_HINT}."
        ) from e
    return torch, diffusers, transformers


# ------------------------------------------------------------------------------------------ kernels


def released_litefocus_torch(query, key, value, indices, f_n, scale, same_frequency=True, cross_frequency=True):
    """Released LiteFocus attention (duplicates counted twice), torch, layout (B, heads, N, D).

    indices: (K,) LongTensor, the compensation subset that the released code draws with torch.randperm.
    Returns (B, heads, N, D).
    """
    torch, _, _ = require_torch()
    b, h, n, d = query.shape
    t_n = n // f_n
    scores, values = [], []
    if same_frequency:
        q5 = query.view(b, h, t_n, f_n, d)
        k5 = key.view(b, h, t_n, f_n, d)
        scores.append(torch.einsum("bhtfd,bhsfd->bhtfs", q5, k5) * scale)  # (b, h, T, F, T)
        values.append(("row", value.view(b, h, t_n, f_n, d)))
    if cross_frequency:
        k_c, v_c = key[:, :, indices], value[:, :, indices]  # (b, h, K, d)
        scores.append(torch.einsum("bhnd,bhkd->bhnk", query, k_c).view(b, h, t_n, f_n, -1) * scale)
        values.append(("cmp", v_c))
    probs = torch.cat(scores, dim=-1).softmax(dim=-1)
    sizes = [s.shape[-1] for s in scores]
    out = torch.zeros(b, h, t_n, f_n, d, dtype=query.dtype, device=query.device)
    for p, (kind, val) in zip(torch.split(probs, sizes, dim=-1), values):
        if kind == "row":
            out = out + torch.einsum("bhtfs,bhsfd->bhtfd", p, val)
        else:
            out = out + torch.einsum("bhtfk,bhkd->bhtfd", p, val)
    return out.reshape(b, h, n, d)


def released_litefocus_sdpa(query, key, value, indices, f_n, scale=None, same_frequency=True, cross_frequency=True):
    """The released algorithm (duplicates counted twice) as one SDPA call over frequency rows.

    query, key, value: (B, heads, N, D) with token n = t * f_n + f; indices: (K,) LongTensor.
    Returns (B, heads, N, D). Row attention has batch B*F, T queries and T + K keys (the row's own keys,
    then the K gathered ones): the joint softmax of the released code with no N x N score matrix.
    """
    torch, _, _ = require_torch()
    sdpa = torch.nn.functional.scaled_dot_product_attention
    b, h, n, d = query.shape
    t = n // f_n
    if not same_frequency:  # every query sees the same K keys
        return sdpa(query, key[:, :, indices], value[:, :, indices], scale=scale)

    def rows(x):  # (B, h, T*F, D) -> (B*F, h, T, D); row b*F + f holds tokens t*F + f of item b
        return x.view(b, h, t, f_n, d).permute(0, 3, 1, 2, 4).reshape(b * f_n, h, t, d)

    def with_compensation(x):  # rows of x followed by the gathered keys, shared by the F rows of an item
        if not cross_frequency:
            return rows(x)
        gathered = x[:, :, indices]
        shared = gathered.unsqueeze(1).expand(b, f_n, h, gathered.shape[2], d).reshape(b * f_n, h, -1, d)
        return torch.cat([rows(x), shared], dim=2)

    out = sdpa(rows(query), with_compensation(key), with_compensation(value), scale=scale)
    return out.view(b, f_n, h, t, d).permute(0, 2, 3, 1, 4).reshape(b, h, n, d)


KERNELS = {"einsum": released_litefocus_torch, "sdpa": released_litefocus_sdpa}


class ReleasedLiteFocusAttnProcessor:
    """diffusers processor: released LiteFocus for self-attention, stock SDPA for cross-attention.

    Args:
      index_provider: zero-argument callable returning the next (K,) LongTensor compensation index, called
        once per sparse self-attention call, in call order (so a test can replay the JAX side's indices).
      f_n: number of frequency rows F (the released code hard-codes 8).
      same_frequency, cross_frequency: the released toggles.
      kernel: "einsum" (`released_litefocus_torch`, the transcription) or "sdpa" (`released_litefocus_sdpa`).
    """

    def __init__(self, index_provider: Callable, f_n=8, same_frequency=True, cross_frequency=True, kernel="einsum"):
        require_torch()
        from diffusers.models.attention_processor import AttnProcessor2_0

        if kernel not in KERNELS:
            raise ValueError(f"ReleasedLiteFocusAttnProcessor: kernel={kernel!r}; use one of {sorted(KERNELS)}.")
        self.index_provider = index_provider
        self.f_n = f_n
        self.same_frequency = same_frequency
        self.cross_frequency = cross_frequency
        self.kernel = KERNELS[kernel]
        self._dense = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if encoder_hidden_states is not None:
            return self._dense(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        if attention_mask is not None:
            raise ValueError("ReleasedLiteFocusAttnProcessor: the sparse self-attention path takes no mask.")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, n, _ = hidden_states.shape
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (x.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        indices = self.index_provider() if self.cross_frequency else None
        out = self.kernel(query, key, value, indices, self.f_n, attn.scale, self.same_frequency, self.cross_frequency)
        out = out.transpose(1, 2).reshape(batch, n, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def randperm_provider(n: int, k: int, device="cpu") -> Callable:
    """The released code's index draw: a fresh `torch.randperm(n)[:k]` at every call."""
    torch, _, _ = require_torch()
    return lambda: torch.randperm(n, device=device)[:k]


def install_released_litefocus(unet, providers: Mapping, freq_bins: Mapping, kernel="einsum", **toggles):
    """Give every self-attention of the chosen levels of a diffusers AudioLDM2 UNet the released algorithm.

    providers: {level key ("1", "mid", ...): index provider}; freq_bins: {level key: F}. A level int l means
    down_blocks[l] and its mirror up_blocks[-1-l]. toggles: same_frequency, cross_frequency. Returns unet.
    """
    require_torch()
    from diffusers.models.attention_processor import Attention

    n = len(unet.down_blocks)
    for key, provider in providers.items():
        level = key if key == "mid" else int(key)
        blocks = [unet.mid_block] if level == "mid" else [unet.down_blocks[level], unet.up_blocks[n - 1 - level]]
        proc = ReleasedLiteFocusAttnProcessor(provider, f_n=freq_bins[key], kernel=kernel, **toggles)
        for block in blocks:
            for module in block.modules():
                if isinstance(module, Attention) and not module.is_cross_attention:
                    module.set_processor(proc)
    return unet


# ------------------------------------------------------------------------------------------ models


def _diffusers_kwargs(config: Mapping) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _seeded(build, seed: int, device, dtype):
    torch, _, _ = require_torch()
    torch.manual_seed(seed)
    model = build().eval().to(device=device)
    if dtype is not None and dtype != next(model.parameters()).dtype:  # diffusers warns on any dtype cast
        model = model.to(dtype=dtype)
    return model


def build_unet(config: Mapping, *, seed=0, device="cpu", dtype=None):
    """A random-weight diffusers `AudioLDM2UNet2DConditionModel` from a diffusers config dict, stock SDPA
    attention (`AttnProcessor2_0`) everywhere."""
    require_torch()
    from diffusers import AudioLDM2UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet = _seeded(lambda: AudioLDM2UNet2DConditionModel(**_diffusers_kwargs(config)), seed, device, dtype)
    unet.set_attn_processor(AttnProcessor2_0())
    return unet


def build_vae(config: Mapping, *, seed=0, device="cpu", dtype=None):
    """A random-weight diffusers `AutoencoderKL` from a diffusers config dict."""
    require_torch()
    from diffusers import AutoencoderKL

    return _seeded(lambda: AutoencoderKL(**_diffusers_kwargs(config)), seed, device, dtype)


def build_vocoder(config: Mapping, *, seed=0, device="cpu", dtype=None):
    """A random-weight transformers `SpeechT5HifiGan` from a vocoder config dict."""
    require_torch()
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    return _seeded(lambda: SpeechT5HifiGan(SpeechT5HifiGanConfig(**_diffusers_kwargs(config))), seed, device, dtype)


def make_scheduler(name: str, config: Mapping):
    """diffusers `DDIMScheduler` ("ddim") or `DPMSolverMultistepScheduler` ("dpmsolver++") from a DDIM config,
    as `litefocus_jax.schedulers.make_scheduler` builds them."""
    require_torch()
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    kinds = {"ddim": DDIMScheduler, "dpmsolver++": DPMSolverMultistepScheduler}
    if name not in kinds:
        raise ValueError(f"scheduler {name!r} is not supported; use one of {sorted(kinds)}.")
    return kinds[name].from_config(dict(config))


def denoise(unet, scheduler, steps: int, latents, gpt2, t5, t5_mask, guidance=3.5):
    """The diffusers AudioLDM2 sampling loop with classifier-free guidance by batch doubling.

    latents: (1, C, T, F) initial noise; gpt2: (2, 8, D) and t5 (2, L, D1) / t5_mask (2, L): the
    [unconditional; conditional] text states. Returns the final latents (1, C, T, F).
    """
    torch, _, _ = require_torch()
    scheduler.set_timesteps(steps, device=latents.device)
    x = latents * scheduler.init_noise_sigma
    with torch.inference_mode():
        for t in scheduler.timesteps:
            x_in = scheduler.scale_model_input(torch.cat([x, x]), t)
            eps = unet(x_in, t, encoder_hidden_states=gpt2, encoder_hidden_states_1=t5, encoder_attention_mask_1=t5_mask).sample
            uncond, cond = eps.chunk(2)
            x = scheduler.step(uncond + guidance * (cond - uncond), t, x).prev_sample
    return x


def decode(vae, vocoder, latents):
    """Latents (1, C, T, F) -> waveform (1, samples): VAE decode to a log-mel, then the vocoder."""
    torch, _, _ = require_torch()
    with torch.inference_mode():
        mel = vae.decode(latents / vae.config.scaling_factor).sample  # (1, 1, 4T, mel bins)
        return vocoder(mel.squeeze(1))
