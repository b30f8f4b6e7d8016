"""CLAP re-ranking of generated waveforms: AudioLDM2's "generate N candidates per prompt, keep the best".

Score of a candidate = cosine similarity between its prompt's CLAP text embedding and its CLAP audio embedding:

  waveform (pipeline rate, 16 kHz) -> soxr HQ to 48 kHz (= librosa's default, as diffusers resamples)
  -> `ClapFeatureExtractor` log-mel of each CLAP window (one window for clips up to 10 s, else ceil(L / 10 s)
     evenly spaced windows: see features/feature_extraction_clap.py) -> `get_audio_features` per window
  -> mean of the window embeddings, L2-normalised -> dot with `get_text_features(prompt)`.

For clips of at most one window this is diffusers' `score_waveforms` ranking (its `logits_per_text` is the same
cosine times exp(logit_scale_t) > 0) without its random crop of longer clips, and each prompt's candidates are ranked
among themselves: diffusers ranks every prompt against all B*N waveforms of the batch (diffusers issue #13602).

Host work (resampling, FFTs) runs in NumPy; the CLAP forward of all candidates of all prompts is one jitted call,
compiled once per (prompts, candidates, windows, tokens) shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from litefocus_jax.features.feature_extraction_clap import ClapFeatureExtractor, resample
from litefocus_jax.models.modeling_clap import l2_normalize
from litefocus_jax.models.modeling_clap_model import ClapModel

JIT_KEY = "clap_score"


def check_candidates(num_waveforms_per_prompt, num_candidates, rerank) -> int:
    """Waveforms to generate per prompt for `AudioLDM2Pipeline.__call__`; errors name the fix."""
    if num_candidates is None:
        return num_waveforms_per_prompt
    if isinstance(num_candidates, bool) or not isinstance(num_candidates, int) or num_candidates < 1:
        raise ValueError(f"num_candidates must be an int >= 1, got {num_candidates!r}.")
    if isinstance(num_waveforms_per_prompt, int) and num_candidates < num_waveforms_per_prompt:
        raise ValueError(
            f"num_candidates={num_candidates} is below num_waveforms_per_prompt={num_waveforms_per_prompt}: generate at "
            "least as many candidates as waveforms returned."
        )
    if not rerank and num_candidates != num_waveforms_per_prompt:
        raise ValueError(
            "rerank=False returns candidates in generation order: num_candidates must equal num_waveforms_per_prompt."
        )
    return num_candidates


def check_ready(pipe) -> None:
    """Raise, before anything is generated, unless `pipe` can score: a whole CLAP (with its audio branch) and a
    feature extractor whose log-mel fits that audio branch."""
    clap = nnx.merge(*pipe.modules["text_encoder"])  # no copies: the module over the pipeline's arrays
    if not isinstance(clap, ClapModel):
        raise ValueError(
            f"CLAP re-ranking needs the whole CLAP model as text_encoder, got {type(clap).__name__} (text branch only): "
            "build it with litefocus_jax.load_clap / init_clap, or pass rerank=False."
        )
    clap.check_audio()  # a text_encoder converted by 0.1: says to re-convert
    fe, audio = pipe.feature_extractor, clap.audio_config
    if not isinstance(fe, ClapFeatureExtractor):
        raise ValueError(f"CLAP re-ranking: pipe.feature_extractor must be a ClapFeatureExtractor, got {type(fe).__name__}.")
    if fe.feature_size != audio.num_mel_bins or fe.frames > audio.max_frames or audio.patch_embed_input_channels != 1:
        raise ValueError(
            f"CLAP re-ranking: the feature extractor makes {fe.frames} x {fe.feature_size} log-mels, the CLAP audio branch "
            f"takes 1 x (<= {audio.max_frames}) x {audio.num_mel_bins}; the snapshot's feature_extractor/ and text_encoder/ "
            "do not belong together."
        )


def _score_fn(pipe):
    if JIT_KEY not in pipe._jitted:
        graphdef = pipe.modules["text_encoder"][0]

        def score(params, input_ids, attention_mask, features):
            """ids/mask (P, L); features (P, N, W, 1, T, F) -> (P, N) float32 cosine similarities."""
            clap = nnx.merge(graphdef, params)
            text = clap.get_text_features(input_ids, attention_mask).astype(jnp.float32)
            p, n, w = features.shape[:3]
            audio = clap.get_audio_features(features.reshape((p * n * w,) + features.shape[3:]))
            audio = l2_normalize(jnp.mean(audio.astype(jnp.float32).reshape(p, n, w, -1), axis=2))
            return jnp.einsum("pd,pnd->pn", text, audio)

        pipe._jitted[JIT_KEY] = jax.jit(score)
    return pipe._jitted[JIT_KEY]


def score_candidates(
    pipe, prompts: Sequence[str], candidates: Sequence[np.ndarray], *, pad_to: int | None = None
) -> list[np.ndarray]:
    """CLAP scores of each prompt's own candidates.

    Args:
      pipe: an `AudioLDM2Pipeline` (its tokenizer, CLAP text_encoder, feature_extractor and sampling_rate are used).
      prompts: P prompts.
      candidates: P arrays (N, S_p) of float waveforms at `pipe.sampling_rate`, one per prompt (N equal for all).
      pad_to: run the CLAP forward on this many prompt rows (repeating the last; the extra rows are dropped), so
        batches with fewer prompts reuse one compiled program.

    Returns:
      P float32 arrays (N,): cosine similarity of each candidate with its prompt, in generation order.
    """
    check_ready(pipe)
    if len(prompts) != len(candidates) or not prompts:
        raise ValueError(f"score_candidates: {len(prompts)} prompts for {len(candidates)} candidate sets.")
    counts = {np.shape(c)[0] for c in candidates}
    if len(counts) != 1 or any(np.ndim(c) != 2 for c in candidates):
        raise ValueError(
            f"score_candidates: each prompt needs an (N, samples) array with one N, got {[np.shape(c) for c in candidates]}."
        )
    fe = pipe.feature_extractor
    features = [fe(resample(c, pipe.sampling_rate, fe.sampling_rate), sampling_rate=fe.sampling_rate) for c in candidates]
    tok = pipe.tokenizer
    tokens = tok(list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="np")
    params = pipe.modules["text_encoder"][1]
    scores: list[np.ndarray | None] = [None] * len(prompts)
    for windows in sorted({f.shape[1] for f in features}):  # one call per window count (clip lengths of one bucket)
        rows = [i for i, f in enumerate(features) if f.shape[1] == windows]
        padded = rows + [rows[-1]] * max(0, (pad_to or 0) - len(rows))
        out = _score_fn(pipe)(
            params,
            jnp.asarray(tokens.input_ids[padded]),
            jnp.asarray(tokens.attention_mask[padded]),
            jnp.asarray(np.stack([features[i] for i in padded])),
        )
        for i, row in zip(rows, np.asarray(out, np.float32)):
            scores[i] = row
    return scores


def rank(scores: np.ndarray) -> np.ndarray:
    """(P, N) scores -> (P, N) candidate indices, best first; ties keep generation order."""
    return np.argsort(-np.asarray(scores), axis=1, kind="stable")


def rerank(pipe, prompts: Sequence[str], audio: np.ndarray, num_candidates: int, keep: int):
    """Order each prompt's candidates best first and keep the best `keep`.

    Args:
      audio: (P * N, S) prompt-major waveforms (prompt p's candidates are rows p*N .. p*N + N - 1).

    Returns:
      (rows (P * keep,) int: the chosen rows of `audio`, prompt-major, best first;
       scores (P * keep,) float32 of those rows; candidate (P * keep,) int: each row's index among its prompt's N).
    """
    p, n = len(prompts), num_candidates
    if audio.shape[0] != p * n:
        raise ValueError(f"rerank: {audio.shape[0]} waveforms for {p} prompts x {n} candidates.")
    scores = np.stack(score_candidates(pipe, prompts, [audio[i * n : (i + 1) * n] for i in range(p)]))
    best = rank(scores)[:, :keep]
    rows = (best + n * np.arange(p)[:, None]).reshape(-1)
    return rows, np.take_along_axis(scores, best, axis=1).reshape(-1), best.reshape(-1)
