"""Text in, waveform out: AudioLDM2 in JAX (diffusers `pipelines/audioldm2/pipeline_audioldm2.py`).

Three jitted stages: text encoding (CLAP + Flan-T5 + projection + GPT2 generation), the whole denoising
loop as one `lax.scan` (classifier-free guidance by batch doubling, LiteFocus indices as scanned data),
and VAE decode + vocoder. Modules are split once into (graphdef, params); `nnx.merge` runs inside jit.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from litefocus_jax.features.feature_extraction_clap import ClapFeatureExtractor
from litefocus_jax.litefocus.plan import LiteFocusConfig, make_comp_indices, make_plan
from litefocus_jax.models.modeling_gpt2 import generate_language_model
from litefocus_jax.pipelines.audioldm2 import parallel, speech
from litefocus_jax.pipelines.audioldm2 import rerank as clap_rerank
from litefocus_jax.pipelines.audioldm2.conversion import check_snapshot, read_snapshot, resolve_snapshot
from litefocus_jax.pipelines.audioldm2.items import ItemBatches, shardings
from litefocus_jax.pipelines.audioldm2.progress import StepHook, emit_step, run_hooked
from litefocus_jax.schedulers.factory import make_scheduler

SCHEDULERS = ("ddim", "dpmsolver++")


@dataclasses.dataclass
class AudioLDM2PipelineOutput:
    """audios: float32 (batch * num_waveforms_per_prompt, samples); sampling_rate: Hz.

    With CLAP re-ranking (see `AudioLDM2Pipeline.__call__`), `clap_scores` (batch * num_waveforms_per_prompt,) float32
    is each waveform's cosine similarity with its prompt and `candidate_indices` which of its prompt's candidates
    (0 = first generated) it is; both None without re-ranking.
    """

    audios: np.ndarray
    sampling_rate: int
    latents: np.ndarray | None = None  # final latents, channels-last (B, T, F, C)
    clap_scores: np.ndarray | None = None
    candidate_indices: np.ndarray | None = None


def _split(module):
    graphdef, state = nnx.split(module)
    return graphdef, nnx.to_pure_dict(state)


def guided_eps(unet, x, t, idx, t5, t5_mask, generated, guidance, *, cfg: bool, litefocus):
    """The guided noise prediction (B, T, F, C) for latents x (B, T, F, C) at timestep t.

    `unet` is the UNet module or any callable with its signature; with `cfg` the batch is doubled
    (unconditional first) and combined with `guidance`; `idx` is the step's LiteFocus index rows.
    """
    x_in = jnp.concatenate([x, x]) if cfg else x
    eps = unet(x_in, t, generated, t5, None, t5_mask, comp_indices=idx if litefocus else None, litefocus=litefocus)
    if cfg:
        uncond, cond = jnp.split(eps, 2)
        eps = uncond + guidance * (cond - uncond)
    return eps


class AudioLDM2Pipeline(ItemBatches):
    """AudioLDM2 text-to-audio. Build with `from_pretrained`; call with a prompt (see `__call__`)."""

    def __init__(
        self,
        *,
        tokenizer,
        tokenizer_2,
        text_encoder,
        text_encoder_2,
        projection_model,
        language_model,
        unet,
        vae,
        vocoder,
        scheduler_config: dict,
        scheduler: str = "ddim",
        dtype=jnp.float32,
        feature_extractor: ClapFeatureExtractor | None = None,
    ):
        if scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {scheduler!r}.")
        self.tokenizer, self.tokenizer_2 = tokenizer, tokenizer_2
        self.feature_extractor = feature_extractor or ClapFeatureExtractor()  # CLAP re-ranking; default: cvssp's
        self.unet_config = unet.config
        self.vae_scaling_factor = float(vae.config.scaling_factor)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.sampling_rate = int(vocoder.config.sampling_rate)
        self.mel_bins = int(vocoder.config.model_in_dim)
        self.vocoder_upsample_factor = float(np.prod(vocoder.config.upsample_rates)) / self.sampling_rate
        unet.latent_frame_seconds = self.vae_scale_factor * self.vocoder_upsample_factor
        self.max_new_tokens = int(getattr(language_model.config, "max_new_tokens", 8) or 8)
        self.speech = speech.is_speech_model(text_encoder_2)  # a TTS snapshot: takes `transcription` (speech.py)
        self.scheduler_config, self.scheduler = dict(scheduler_config), scheduler
        self.dtype = dtype
        self.modules = {
            "text_encoder": _split(text_encoder),
            "text_encoder_2": _split(text_encoder_2),
            "projection_model": _split(projection_model),
            "language_model": _split(language_model),
            "unet": _split(unet),
            "vae": _split(vae),
            "vocoder": _split(vocoder),
        }
        self._unet = unet
        self._jitted: dict = {}
        self._step_hook = StepHook()  # per-step progress and callbacks (progress.py)
        self._executables: dict = {}  # AOT-compiled stages of generate_items, by (key, argument shapes)
        self._replicated_params: dict = {}  # params placed on a mesh, by (mesh, component names)
        self.compile_seconds, self.compile_count = 0.0, 0  # ahead-of-time compiles of generate_items
        if self.mel_bins % self.vae_scale_factor:
            raise ValueError(
                f"vocoder model_in_dim {self.mel_bins} is not divisible by the VAE scale factor {self.vae_scale_factor}."
            )

    # ------------------------------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | os.PathLike,
        *,
        dtype=jnp.float32,
        scheduler: str | None = None,
        attention_implementation: str | None = None,
    ) -> AudioLDM2Pipeline:
        """Load a diffusers AudioLDM2 snapshot, its converted form, or a Hub repo id (when online).

        Args:
          path_or_repo_id: snapshot root (model_index.json + component folders) or e.g. "cvssp/audioldm2".
          dtype: jnp.float32 or jnp.bfloat16 for every model (never float16: T5 overflows).
          scheduler: "ddim" (the snapshot's own DDIM config) or "dpmsolver++" (2M multistep on the same betas).
          attention_implementation: for the UNet's attention (None, "xla", "cudnn").
        """
        scheduler = scheduler or "ddim"
        if scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {scheduler!r}.")
        if jnp.dtype(dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
            raise ValueError(f"dtype must be float32 or bfloat16, got {jnp.dtype(dtype).name} (T5 overflows in float16).")
        root = resolve_snapshot(path_or_repo_id)
        check_snapshot(root)
        components = read_snapshot(root, dtype=dtype, attention_implementation=attention_implementation)
        return cls(**components, scheduler=scheduler, dtype=dtype)

    # ------------------------------------------------------------------------------------------ inputs

    def latent_frames(self, audio_length_in_s: float) -> tuple[int, int]:
        """(latent time frames, original waveform samples) exactly as diffusers computes them."""
        height = int(audio_length_in_s / self.vocoder_upsample_factor)
        samples = int(audio_length_in_s * self.sampling_rate)
        if height % self.vae_scale_factor:
            height = int(np.ceil(height / self.vae_scale_factor)) * self.vae_scale_factor
        return height // self.vae_scale_factor, samples

    def _check_call(
        self, prompt, negative_prompt, audio_length_in_s, num_inference_steps, guidance_scale, num_waveforms_per_prompt, latents
    ):
        if isinstance(prompt, str):
            prompts = [prompt]
        elif isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
            prompts = list(prompt)
        else:
            raise ValueError(f"prompt must be a str or a non-empty list of str, got {prompt!r}.")
        if negative_prompt is not None:
            if isinstance(prompt, str) != isinstance(negative_prompt, str):
                raise ValueError("negative_prompt must have the same type as prompt (str with str, list with list).")
            if not isinstance(negative_prompt, str) and len(negative_prompt) != len(prompts):
                raise ValueError(
                    f"negative_prompt has {len(negative_prompt)} entries but prompt has {len(prompts)}; give one per prompt."
                )
        min_length = self.vocoder_upsample_factor * self.vae_scale_factor
        if audio_length_in_s is None:
            audio_length_in_s = (self.unet_config.sample_size or 256) * min_length
        if not isinstance(audio_length_in_s, (int, float)) or math.isnan(audio_length_in_s) or audio_length_in_s < min_length:
            raise ValueError(
                f"audio_length_in_s must be a number >= {min_length:g} s (one latent frame), got {audio_length_in_s!r}."
            )
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an int >= 1, got {num_inference_steps!r}.")
        if not isinstance(num_waveforms_per_prompt, int) or num_waveforms_per_prompt < 1:
            raise ValueError(f"num_waveforms_per_prompt must be an int >= 1, got {num_waveforms_per_prompt!r}.")
        if not isinstance(guidance_scale, (int, float)) or math.isnan(guidance_scale):
            raise ValueError(f"guidance_scale must be a number, got {guidance_scale!r}.")
        frames, samples = self.latent_frames(float(audio_length_in_s))
        shape = (
            len(prompts) * num_waveforms_per_prompt,
            frames,
            self.mel_bins // self.vae_scale_factor,
            self.unet_config.in_channels,
        )
        if latents is not None and tuple(np.shape(latents)) != shape:
            raise ValueError(
                f"latents must be channels-last {shape} (batch * num_candidates, T, F, C) for "
                f"{audio_length_in_s} s, got {tuple(np.shape(latents))}."
            )
        if negative_prompt is None:
            negatives = [""] * len(prompts)
        else:
            negatives = [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt)
        return prompts, negatives, shape, samples

    # ------------------------------------------------------------------------------------------ stages

    def _tokens(self, prompts, negatives, cfg: bool):
        tok, tok2 = self.tokenizer, self.tokenizer_2
        clap = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="np")
        t5 = tok2(prompts, padding=True, max_length=tok2.model_max_length, truncation=True, return_tensors="np")
        out = {"pos": (clap.input_ids, clap.attention_mask, t5.input_ids, t5.attention_mask)}
        if cfg:
            length = t5.input_ids.shape[1]  # the negative T5 branch is padded to the positive length
            nclap = tok(negatives, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="np")
            nt5 = tok2(negatives, padding="max_length", max_length=length, truncation=True, return_tensors="np")
            out["neg"] = (nclap.input_ids, nclap.attention_mask, nt5.input_ids, nt5.attention_mask)
        return out

    def _encode_fn(self):
        if "encode" not in self._jitted:
            m = self.modules
            max_new = self.max_new_tokens

            def encode(params, clap_ids, clap_mask, t5_ids, t5_mask):
                clap = nnx.merge(m["text_encoder"][0], params["text_encoder"])(clap_ids, clap_mask)[:, None, :]
                t5 = nnx.merge(m["text_encoder_2"][0], params["text_encoder_2"])(t5_ids, t5_mask)
                proj = nnx.merge(m["projection_model"][0], params["projection_model"])
                states, mask = proj(clap, t5, jnp.ones(clap.shape[:2], jnp.int32), t5_mask)
                gpt2 = nnx.merge(m["language_model"][0], params["language_model"])
                generated = generate_language_model(gpt2, states, mask, max_new)
                return t5, generated

            self._jitted["encode"] = jax.jit(encode)
        return self._jitted["encode"]

    def _comp_schedule(self, litefocus, latent_shape: tuple, num_steps: int):
        """latent_shape (T, F, C) -> (litefocus, or None when the length rule keeps it dense; {level: int32 (steps, calls, K)}).

        The dict always has a leaf with a leading step axis, because the denoising scan slices it per step.
        """
        if litefocus is not None and not isinstance(litefocus, LiteFocusConfig):
            raise ValueError(f"litefocus must be a LiteFocusConfig or None, got {type(litefocus).__name__}.")
        plan = make_plan(self.unet_config, litefocus, tuple(latent_shape[:2]), self._unet.latent_frame_seconds)
        if plan is None or not plan.active:
            return None, {"_": jnp.zeros((num_steps, 0), jnp.int32)}
        comp = {k: jnp.asarray(v) for k, v in make_comp_indices(plan, num_steps).items()}
        return litefocus, comp or {"_": jnp.zeros((num_steps, 0), jnp.int32)}

    def _params(self, *names):
        return {n: self.modules[n][1] for n in names}

    def encode_prompt(self, prompts, negatives, num_waveforms_per_prompt: int, cfg: bool):
        """-> (t5 states (B', L, D1), t5 mask (B', L), GPT2 states (B', 8, D)); B' = [negatives;] positives x nw."""
        params = self._params("text_encoder", "text_encoder_2", "projection_model", "language_model")
        tokens = self._tokens(prompts, negatives, cfg)
        branches = []
        for key in ("neg", "pos") if cfg else ("pos",):
            clap_ids, clap_mask, t5_ids, t5_mask = (jnp.asarray(a) for a in tokens[key])
            t5, generated = self._encode_fn()(params, clap_ids, clap_mask, t5_ids, t5_mask)
            rep = partial(jnp.repeat, repeats=num_waveforms_per_prompt, axis=0)
            branches.append((rep(t5), rep(t5_mask), rep(generated)))
        return tuple(jnp.concatenate(parts, axis=0) for parts in zip(*branches))

    def _denoise_fn(self, num_steps: int, cfg: bool, litefocus, eta: float, mesh=None, hooked: bool = False):
        if litefocus is not None:
            # seed, resample and the length rule only shape the index data (made by _comp_schedule): one
            # compiled program serves them all.
            litefocus = dataclasses.replace(litefocus, seed=0, resample="per_call", dense_at_or_below_s=None)
        key = ("denoise", num_steps, cfg, litefocus, eta, mesh) + (("hooked",) if hooked else ())
        if key not in self._jitted:
            graphdef = self.modules["unet"][0]
            timesteps, state0, step_fn, _ = make_scheduler(self.scheduler, self.scheduler_config, num_steps, eta=eta)

            def denoise(params, latents, t5, t5_mask, generated, guidance, comp, item_keys):
                unet = nnx.merge(graphdef, params)

                def body(carry, xs):
                    x, state = carry
                    i, t, idx = xs
                    eps = guided_eps(unet, x, t, idx, t5, t5_mask, generated, guidance, cfg=cfg, litefocus=litefocus)
                    noise = None
                    if eta > 0:
                        noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, i), x.shape[1:], x.dtype))(item_keys)
                    state, x = step_fn(state, eps.astype(x.dtype), i, x, noise)
                    if hooked:  # off: no callback in the program at all
                        emit_step(self._step_hook, i, t, len(timesteps), x)
                    return (x, state), None

                n = len(timesteps)  # a DPM "trailing" schedule can hold fewer steps than asked for
                comp = jax.tree_util.tree_map(lambda a: a[:n], comp)
                (x, _), _ = jax.lax.scan(body, (latents, state0(latents)), (jnp.arange(n), jnp.asarray(timesteps), comp))
                return x

            if mesh is None:
                self._jitted[key] = jax.jit(denoise)
            elif "seq" in mesh.axis_names:  # one clip across devices: latents split on time too (parallel.py)
                self._jitted[key] = jax.jit(parallel.sequence_sharded(denoise, mesh, self))
            else:  # params, guidance, LiteFocus indices replicated; latents, text states and item keys split over "data"
                rep, data = shardings(mesh)
                self._jitted[key] = jax.jit(
                    denoise, in_shardings=(rep, data, data, data, data, rep, rep, data), out_shardings=data
                )
        return self._jitted[key]

    def _decode_fn(self, mesh=None):
        key = "decode" if mesh is None else ("decode", mesh)
        if key not in self._jitted:
            (vae_g, _), (voc_g, _) = self.modules["vae"], self.modules["vocoder"]
            scale = self.vae_scaling_factor

            def decode(params, latents):
                mel = nnx.merge(vae_g, params["vae"]).decode(latents / scale)  # (B, 4T, mel_bins, 1)
                return nnx.merge(voc_g, params["vocoder"])(mel[..., 0]).astype(jnp.float32)

            if mesh is None:
                self._jitted[key] = jax.jit(decode)
            elif "seq" in mesh.axis_names:
                self._jitted[key] = jax.jit(parallel.sequence_sharded(decode, mesh, self))
            else:
                rep, data = shardings(mesh)
                self._jitted[key] = jax.jit(decode, in_shardings=(rep, data), out_shardings=data)
        return self._jitted[key]

    # ------------------------------------------------------------------------------------------ call

    def __call__(
        self,
        prompt: str | Sequence[str],
        *,
        transcription: str | Sequence[str] | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        audio_length_in_s: float | None = None,
        num_inference_steps: int = 200,
        guidance_scale: float = 3.5,
        num_waveforms_per_prompt: int = 1,
        seed: int = 0,
        latents=None,
        litefocus: LiteFocusConfig | None = None,
        eta: float = 0.0,
        output_latents: bool = False,
        num_candidates: int | None = None,
        rerank: bool = True,
        max_new_tokens: int | None = None,
        callback=None,
        progress: bool = False,
        mesh=None,
    ) -> AudioLDM2PipelineOutput:
        """Generate audio.

        Args:
          prompt: a str or a list of str.
          transcription: speech snapshots only (required there): the words to speak, a str or one per prompt
            (speech.py); prompt then describes the voice. max_new_tokens: GPT2 states for speech (default 512).
          negative_prompt: same type and count as prompt; default "" (classifier-free guidance only).
          audio_length_in_s: default unet.sample_size * 4 * 0.01 = 10.24 s. Lengths are rounded up to a
            whole latent frame (0.04 s) and the waveform is trimmed back to the exact length, as diffusers.
          num_inference_steps, guidance_scale (> 1 enables classifier-free guidance), eta (DDIM noise).
          num_waveforms_per_prompt: waveforms returned per prompt, consecutive in the output. When more than one
            is generated per prompt, each prompt's are ordered best first by CLAP text-audio similarity (rerank.py).
          num_candidates: waveforms generated per prompt (default num_waveforms_per_prompt); the best
            num_waveforms_per_prompt of them are returned, e.g. num_candidates=3 is AudioLDM2's "keep the best of 3".
          rerank: False keeps generation order and skips CLAP scoring (then num_candidates must equal
            num_waveforms_per_prompt).
          seed: the initial noise of item i (candidate c of prompt p is item p * num_candidates + c) is drawn from
            fold_in(PRNGKey(seed), i), so it does not depend on the batch; it also seeds DDIM eta noise. LiteFocus
            subsets use `litefocus.seed`.
          latents: channels-last (B * num_candidates, T, F, C) initial noise (overrides seed).
          litefocus: LiteFocusConfig for sparse UNet self-attention; None = dense.
          callback: `callback(step, timestep)` on the host after each denoising step (diffusers'
            `callback_on_step_end` as far as a scan allows: it observes, it cannot change the latents).
          progress: a tqdm bar over the denoising steps (elapsed, ETA). Either adds a host callback to the scan.
          mesh: None (one device) or a ("data", "seq") `jax.sharding.Mesh` (`parallel.make_mesh`): the latent time
            axis is split over "seq", the guidance-doubled batch over "data" (`parallel.py`, README).

        Returns:
          AudioLDM2PipelineOutput(audios float32 (B * num_waveforms_per_prompt, samples), sampling_rate, and with
          re-ranking clap_scores / candidate_indices).
        """
        num_candidates = clap_rerank.check_candidates(num_waveforms_per_prompt, num_candidates, rerank)
        prompts, negatives, shape, samples = self._check_call(
            prompt, negative_prompt, audio_length_in_s, num_inference_steps, guidance_scale, num_candidates, latents
        )
        if not isinstance(eta, (int, float)) or eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta!r}.")
        scoring = rerank and num_candidates > 1
        if scoring:
            clap_rerank.check_ready(self)  # a text-only CLAP or a mismatched feature extractor fails before generating
        cfg = guidance_scale > 1.0
        litefocus, comp = self._comp_schedule(litefocus, shape[1:], num_inference_steps)
        parallel.check_length(self, shape[1], mesh)  # a mesh's length rule fails before encoding
        call = (prompts, negatives, transcription, shape, num_inference_steps, guidance_scale, seed, litefocus, eta, latents)
        parallel.same_everywhere(mesh, "arguments", call + (num_waveforms_per_prompt, rerank, max_new_tokens, bool(progress)))

        transcriptions = speech.check_transcription(self, transcription, prompts, max_new_tokens)
        if transcriptions is None:
            t5, t5_mask, generated = self.encode_prompt(prompts, negatives, num_candidates, cfg)
        else:  # VITS states and mask in the T5 slots: the TTS UNet never reads them (speech.py)
            t5, t5_mask, generated = speech.encode_prompt(
                self, prompts, negatives, transcriptions, num_candidates, cfg, max_new_tokens
            )
        item_keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(seed), i))(jnp.arange(shape[0]))
        if latents is None:
            latents = jax.vmap(lambda k: jax.random.normal(k, shape[1:], jnp.float32))(item_keys)
        latents = jnp.asarray(latents, self.dtype)
        hooked = callback is not None or bool(progress)
        denoise = self._denoise_fn(num_inference_steps, cfg, litefocus, float(eta), mesh, hooked=hooked)
        unet_params = parallel.params(self, mesh, "unet")["unet"]
        args = (unet_params, latents, t5, t5_mask, generated, jnp.asarray(guidance_scale, jnp.float32), comp, item_keys)
        args = parallel.inputs(mesh, args)  # a mesh across processes: process 0's inputs, replicated
        if hooked:
            key = ("denoise", num_inference_steps, cfg, litefocus, float(eta), mesh, "hooked")
            final = run_hooked(self, key, denoise, args, callback=callback, progress=progress)
        else:
            final = denoise(*args)
        audio = self._decode_fn(mesh)(parallel.params(self, mesh, "vae", "vocoder"), final)
        audio = parallel.to_host(audio)[:, :samples]  # every process gets the whole batch
        final = parallel.to_host(final).astype(np.float32) if output_latents else None
        scores = chosen = None
        if scoring:
            rows, scores, chosen = clap_rerank.rerank(self, prompts, audio, num_candidates, num_waveforms_per_prompt)
            audio, final = audio[rows], None if final is None else final[rows]
        return AudioLDM2PipelineOutput(
            audios=audio, sampling_rate=self.sampling_rate, latents=final, clap_scores=scores, candidate_indices=chosen
        )
