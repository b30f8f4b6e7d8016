"""Batches of independent items: the engine behind `litefocus-jax generate --prompts` (tools/batch.py).

`AudioLDM2Pipeline` inherits `generate_items` from `ItemBatches`: each item's text is encoded alone and its noise
drawn from its own seed, so an item's waveform depends neither on its batchmates nor on the device count; the
batch may be split over a mesh's "data" axis. Compiled programs are cached per argument shapes (AOT), so compile
time is measured apart from run time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from litefocus_jax.litefocus.plan import LiteFocusConfig
from litefocus_jax.pipelines.audioldm2 import parallel, speech
from litefocus_jax.pipelines.audioldm2.progress import run_hooked


def shardings(mesh):
    """(replicated, split over the mesh's "data" axis along dim 0)."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    return NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))


class ItemBatches:
    """`generate_items` and its caches; mixed into `AudioLDM2Pipeline`, whose stages (`_check_call`, `_tokens`,
    `_encode_fn`, `_comp_schedule`, `_denoise_fn`, `_decode_fn`, `_params`) it drives."""

    def t5_length(self, prompt: str) -> int:
        """Flan-T5 tokens of `prompt` alone (the length its encoding is computed at in `generate_items`)."""
        tok2 = self.tokenizer_2
        return int(
            tok2([prompt], padding=True, max_length=tok2.model_max_length, truncation=True, return_tensors="np").input_ids.shape[
                1
            ]
        )

    def _compiled(self, key, jitted, *args):
        """AOT-compile `jitted` once per (key, argument shapes): compile time is measured apart from run time."""
        sig = (key,) + tuple((tuple(a.shape), str(a.dtype)) for a in jax.tree_util.tree_leaves(args[1:]))
        cache = self._executables
        if sig not in cache:
            start = time.perf_counter()
            cache[sig] = jitted.lower(*args).compile()
            self.compile_seconds += time.perf_counter() - start
            self.compile_count += 1
        return cache[sig]

    def _replicated(self, mesh, *names):
        key = (mesh, names)
        cache = self._replicated_params
        if key not in cache:
            cache[key] = parallel.replicate(mesh, self._params(*names))  # across processes: each its own copy
        return cache[key]

    def generate_items(
        self,
        prompts: Sequence[str],
        negative_prompts: Sequence[str],
        seeds: Sequence[int],
        audio_length_in_s: float | Sequence[float],
        *,
        num_inference_steps: int = 200,
        guidance_scale: float = 3.5,
        litefocus: LiteFocusConfig | None = None,
        eta: float = 0.0,
        mesh=None,
        pad_to: int | None = None,
        t5_length: int | None = None,
        noise_indices: Sequence[int] | None = None,
        callback=None,
        progress=False,
        transcriptions: Sequence[str] | None = None,
        max_new_tokens: int | None = None,
    ) -> list[np.ndarray]:
        """One waveform per item, each independent of its batchmates, the batch size and the device count.

        Item i equals `self(prompts[i], negative_prompt=negative_prompts[i], seed=seeds[i], ...)` (up to float
        rounding): its noise is drawn from fold_in(PRNGKey(seeds[i]), 0) and its text is encoded alone (batch 1),
        so T5 padding and GPT2 positions never depend on other prompts. The T5 states are then padded to the
        batch's longest (or `t5_length`) with mask 0, which the UNet's -10000 key bias turns into zero weight.

        Args:
          prompts, negative_prompts, seeds: one entry per item ("" = no negative prompt).
          audio_length_in_s: one length, or one per item; all must share one latent length (a bucket). Each
            waveform is trimmed to its own length.
          mesh: a `jax.sharding.Mesh` with a "data" axis: params replicated, latents and text states split. A mesh
            across processes (`parallel.make_mesh`, with its "seq" axis): every process calls with the same items and
            gets every waveform; the inputs are process 0's (`parallel.inputs`).
          pad_to: pad the batch (repeating the last item) to this many rows; must be a multiple of the mesh
            size. Padding rows are computed and dropped. Default: the next multiple of the mesh size.
          t5_length: pad T5 states to this length (>= every item's own) so a bucket compiles once.
          noise_indices: per item i, draw its noise from fold_in(PRNGKey(seeds[i]), noise_indices[i]) instead of
            index 0: candidate c of `self(prompt, seed=s, num_candidates=N)` is item (prompt, s, noise index c).
          callback, progress: per denoising step, as in `__call__` (progress may also be a
            `listener(step, timestep, total)`, see progress.py).
          transcriptions, max_new_tokens: speech snapshots (one transcription per item, required there): each
            item's CLAP + VITS + GPT2 states come from `speech.encode_prompt`, as in `__call__(transcription=...)`.

        Returns:
          A list of float32 (samples_i,) waveforms, one per item (NaN/Inf are left for the caller to check).
        """
        n = len(prompts)
        if not (n and len(negative_prompts) == n and len(seeds) == n):
            raise ValueError(
                f"generate_items: give one negative prompt and one seed per prompt (got {n} prompts, "
                f"{len(negative_prompts)} negatives, {len(seeds)} seeds)."
            )
        lengths = (
            [float(audio_length_in_s)] * n
            if isinstance(audio_length_in_s, (int, float))
            else [float(x) for x in audio_length_in_s]
        )
        if len(lengths) != n:
            raise ValueError(f"generate_items: {len(lengths)} lengths for {n} prompts.")
        shapes = set()
        samples = []
        for length in lengths:
            _, _, shape, samp = self._check_call(
                list(prompts), list(negative_prompts), length, num_inference_steps, guidance_scale, 1, None
            )
            shapes.add(shape[1:])
            samples.append(samp)
        if len(shapes) != 1:
            raise ValueError(
                f"generate_items: lengths {sorted(set(lengths))} fall into different latent lengths; "
                "group items by `latent_frames(seconds)` first."
            )
        cfg = guidance_scale > 1.0
        latent_shape = shapes.pop()
        litefocus, comp = self._comp_schedule(litefocus, latent_shape, num_inference_steps)
        ndev = 1 if mesh is None else mesh.shape["data"]  # rows split over "data" only ("seq" splits each clip)
        rows = pad_to or -(-n // ndev) * ndev
        if rows < n or rows % ndev:
            raise ValueError(
                f'generate_items: pad_to={pad_to} must be >= {n} items and a multiple of {ndev} (the mesh\'s "data" size).'
            )

        # text: every item alone, batch 1 ([negative; positive] rows when guided)
        enc_params = self._params("text_encoder", "text_encoder_2", "projection_model", "language_model")
        spoken = speech.check_transcription(self, transcriptions, list(prompts), max_new_tokens)
        per_item = []
        for i, (p, neg) in enumerate(zip(prompts, negative_prompts)):
            if spoken is not None:  # speech: VITS states in the T5 slots (the TTS UNet never reads them)
                halves = speech.encode_prompt(self, [p], [neg], [spoken[i]], 1, cfg, max_new_tokens)
                per_item.append([tuple(np.asarray(h[b : b + 1]) for h in halves) for b in range(2 if cfg else 1)])
                continue
            tokens = self._tokens([p], [neg], cfg)
            branches = []
            for key in ("neg", "pos") if cfg else ("pos",):
                args = (enc_params,) + tuple(jnp.asarray(a) for a in tokens[key])
                t5, generated = self._compiled("encode", self._encode_fn(), *args)(*args)
                branches.append((np.asarray(t5), np.asarray(tokens[key][3]), np.asarray(generated)))
            per_item.append(branches)
        length = max([t5_length or 0] + [b[0][0].shape[1] for b in per_item])
        per_item += [per_item[-1]] * (rows - n)  # padding rows: a copy of the last item, never returned

        def stack(branch):
            t5 = np.zeros((rows, length, per_item[0][branch][0].shape[-1]), per_item[0][branch][0].dtype)
            mask = np.zeros((rows, length), np.int32)
            for r, item in enumerate(per_item):
                t, m, _ = item[branch]
                t5[r, : t.shape[1]], mask[r, : m.shape[1]] = t[0], m[0]
            return t5, mask, np.concatenate([item[branch][2] for item in per_item])

        parts = [stack(b) for b in range(2 if cfg else 1)]
        t5, t5_mask, generated = (np.concatenate(x) for x in zip(*parts))
        seeds_padded = [int(s) for s in seeds] + [int(seeds[-1])] * (rows - n)
        folds = [int(i) for i in (noise_indices if noise_indices is not None else [0] * n)]
        if len(folds) != n:
            raise ValueError(f"generate_items: {len(folds)} noise indices for {n} prompts.")
        folds += [folds[-1]] * (rows - n)
        item_keys = jnp.stack([jax.random.fold_in(jax.random.PRNGKey(s), i) for s, i in zip(seeds_padded, folds)])
        latents = jax.vmap(lambda k: jax.random.normal(k, latent_shape, jnp.float32))(item_keys).astype(self.dtype)

        if mesh is None:
            unet_params, dec_params = self.modules["unet"][1], self._params("vae", "vocoder")
            put = jnp.asarray
        else:
            unet_params, dec_params = self._replicated(mesh, "unet")["unet"], self._replicated(mesh, "vae", "vocoder")
            replicated, data = shardings(mesh)
            put = jnp.asarray if parallel.spans_processes(mesh) else partial(jax.device_put, device=data)
        # the UNet batch with guidance is [negatives; positives]: 2 * rows, still a multiple of the mesh size
        args = (
            unet_params,
            put(latents),
            put(jnp.asarray(t5, self.dtype)),
            put(jnp.asarray(t5_mask)),
            put(jnp.asarray(generated, self.dtype)),
            jnp.asarray(guidance_scale, jnp.float32),
            comp,
            put(item_keys),
        )
        if parallel.spans_processes(mesh):  # process 0's inputs, replicated; the ("data", "seq") program splits them
            args = parallel.inputs(mesh, args)
        elif mesh is not None:
            args = args[:5] + (jax.device_put(args[5], replicated), jax.device_put(args[6], replicated), args[7])
        hooked = callback is not None or bool(progress)
        denoise = self._denoise_fn(num_inference_steps, cfg, litefocus, float(eta), mesh, hooked=hooked)
        key = ("denoise", num_inference_steps, cfg, litefocus, float(eta), mesh) + (("hooked",) if hooked else ())
        if hooked:
            final = run_hooked(self, key, denoise, args, callback=callback, progress=progress)
        else:
            final = self._compiled(key, denoise, *args)(*args)
        decode = self._decode_fn(mesh)
        audio = parallel.to_host(self._compiled(("decode", mesh), decode, dec_params, final)(dec_params, final))
        return [audio[i, : samples[i]].copy() for i in range(n)]
