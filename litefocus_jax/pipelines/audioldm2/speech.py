"""Text-to-speech with AudioLDM2's speech checkpoints (`anhnct/audioldm2_gigaspeech`, `anhnct/audioldm2_ljspeech`).

A speech snapshot's `text_encoder_2` is a transformers `VitsModel` (only its text encoder runs) and `tokenizer_2` a
`VitsTokenizer`; the pipeline takes a `transcription` per prompt. The prompt still reaches CLAP; the transcription
is tokenised to phoneme ids (espeak-ng via phonemizer when the tokenizer phonemizes), encoded by VITS, given the
projection's learned positional embedding, and GPT2 generates `max_new_tokens` (512) states for the UNet's
cross-attention. Everything mirrors diffusers 0.42.1 `AudioLDM2Pipeline.encode_prompt` (AUDIOLDM2_TTS.md §2),
quirks included:

- the end token 182 replaces the *first* id 0 of each row (mask set to 1); a row without a 0 gets none;
- the unconditional branch's VITS states and mask are zeros (the negative prompt reaches CLAP only);
- the returned mask is float32 ([zeros; mask]); with the TTS UNet ([None, 768]) the VITS states never reach it.

Not reproduced, as they do not change the output: diffusers' truncation warning computed from the *prompt* with the
VITS tokenizer, and its discarded tokenisation of the negative prompts.

The text encoding is one jitted program: CLAP of [negatives; prompts], VITS of the transcriptions, projection and
the GPT2 loop (a `lax.scan`) over the doubled batch.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from litefocus_jax.models.modeling_gpt2 import generate_language_model
from litefocus_jax.models.modeling_vits import VitsTextEncoder

SPEECH_MAX_NEW_TOKENS = 512  # the speech checkpoints' GPT2 length (diffusers' docstring: "must set ... 512")
END_TOKEN_ID = 182  # `⚠`, the last symbol of the original phoneme table; hard-coded in diffusers
INSTALL_HINT = (
    "install the text-to-speech extra and espeak-ng: pip install 'litefocus-jax[tts]' and "
    "apt-get install espeak-ng (macOS: brew install espeak-ng); or pass phonemes (IPA, as espeak-ng writes them) "
    "with pipe.tokenizer_2.phonemize = False (CLI: --phonemes)"
)


def is_speech_model(text_encoder_2) -> bool:
    """True for a speech snapshot's text_encoder_2 (the VITS text encoder)."""
    return isinstance(text_encoder_2, VitsTextEncoder)


def check_phonemizer(tokenizer) -> None:
    """Raise a clear error when `tokenizer` phonemizes but phonemizer or the espeak-ng library is missing."""
    if not getattr(tokenizer, "phonemize", False):
        return
    if importlib.util.find_spec("phonemizer") is None:
        raise RuntimeError(f"This speech snapshot's tokenizer phonemizes text, but phonemizer is not installed: {INSTALL_HINT}.")
    from phonemizer.backend import EspeakBackend

    if not EspeakBackend.is_available():
        raise RuntimeError(f"This speech snapshot's tokenizer phonemizes text, but espeak-ng is not installed: {INSTALL_HINT}.")


def check_transcription(pipe, transcription, prompts: Sequence[str], max_new_tokens) -> list[str] | None:
    """The transcriptions, one per prompt (None for a text-to-audio snapshot); clear errors before any work.

    A speech snapshot needs `transcription` (a str for one prompt, a list with one str per prompt); a text-to-audio
    snapshot refuses it, and `max_new_tokens` (which only speech generation takes).
    """
    speech = getattr(pipe, "speech", False)
    if not speech:
        if transcription is not None:
            raise ValueError(
                "transcription is only for speech snapshots (text_encoder_2 a VitsModel, e.g. anhnct/audioldm2_gigaspeech); "
                "this is a text-to-audio snapshot: describe the sound in prompt and drop transcription."
            )
        if max_new_tokens is not None:
            raise ValueError(
                "max_new_tokens is only for speech snapshots; text-to-audio snapshots generate their config's "
                f"{pipe.max_new_tokens} states."
            )
        return None
    if transcription is None:
        raise ValueError(
            "This is a speech snapshot (text_encoder_2 is a VitsModel): pass transcription= (the words to speak, "
            "one per prompt); prompt describes the voice, e.g. pipe('A female reporter is speaking', "
            "transcription='Hello there')."
        )
    items = [transcription] if isinstance(transcription, str) else transcription
    if not isinstance(items, (list, tuple)) or not all(isinstance(t, str) for t in items):
        raise ValueError(f"transcription must be a str or a list of str, got {transcription!r}.")
    if len(items) != len(prompts):
        raise ValueError(f"transcription has {len(items)} entries but prompt has {len(prompts)}; give one per prompt.")
    if max_new_tokens is not None and (
        isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1
    ):
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}.")
    check_phonemizer(pipe.tokenizer_2)
    return list(items)


def vits_tokens(tokenizer, transcriptions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 (B, L), mask int64 (B, L)) at L = tokenizer.model_max_length, with diffusers' end-token edit:
    in each row the first id 0 becomes 182 and is attended (a full row gets no end token)."""
    enc = tokenizer(
        list(transcriptions), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="np"
    )
    ids, mask = np.array(enc.input_ids, np.int64), np.array(enc.attention_mask, np.int64)
    for row in range(ids.shape[0]):
        zeros = np.flatnonzero(ids[row] == 0)
        if zeros.size:
            ids[row, zeros[0]], mask[row, zeros[0]] = END_TOKEN_ID, 1
    return ids, mask


def _encode_fn(pipe, max_new_tokens: int, cfg: bool):
    key = ("encode_speech", max_new_tokens, cfg)
    if key not in pipe._jitted:
        m = pipe.modules

        def encode(params, clap_ids, clap_mask, vits_ids, vits_mask):
            """clap_* ([neg;] pos rows), vits_* (pos rows) -> (VITS states, float mask, GPT2 states), [neg;] pos rows."""
            clap = nnx.merge(m["text_encoder"][0], params["text_encoder"])(clap_ids, clap_mask)[:, None, :]
            vits = nnx.merge(m["text_encoder_2"][0], params["text_encoder_2"])(vits_ids, vits_mask)
            mask = vits_mask.astype(jnp.float32)
            if cfg:  # diffusers' unconditional VITS branch: zero states, zero mask
                vits, mask = jnp.concatenate([jnp.zeros_like(vits), vits]), jnp.concatenate([jnp.zeros_like(mask), mask])
            proj = nnx.merge(m["projection_model"][0], params["projection_model"])
            states, proj_mask = proj(clap, vits, jnp.ones(clap.shape[:2], jnp.float32), mask)
            gpt2 = nnx.merge(m["language_model"][0], params["language_model"])
            return vits, mask, generate_language_model(gpt2, states, proj_mask, max_new_tokens)

        pipe._jitted[key] = jax.jit(encode)
    return pipe._jitted[key]


def encode_prompt(
    pipe,
    prompts: Sequence[str],
    negatives: Sequence[str],
    transcriptions: Sequence[str],
    num_waveforms_per_prompt: int,
    cfg: bool,
    max_new_tokens: int | None = None,
):
    """-> (VITS states (B', L, H), float32 mask (B', L), GPT2 states (B', max_new_tokens, D)); B' = [negatives;]
    positives x num_waveforms_per_prompt, L = tokenizer_2.model_max_length, max_new_tokens default 512."""
    n = SPEECH_MAX_NEW_TOKENS if max_new_tokens is None else int(max_new_tokens)
    tok = pipe.tokenizer
    texts = (list(negatives) if cfg else []) + list(prompts)
    clap = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="np")
    ids, mask = vits_tokens(pipe.tokenizer_2, transcriptions)
    params = pipe._params("text_encoder", "text_encoder_2", "projection_model", "language_model")
    args = (jnp.asarray(clap.input_ids), jnp.asarray(clap.attention_mask), jnp.asarray(ids), jnp.asarray(mask))
    # compiled ahead of time like the rest of generate_items, so its compile counts in pipe.compile_seconds
    outs = pipe._compiled(("encode_speech", n, cfg), _encode_fn(pipe, n, cfg), params, *args)(params, *args)
    rep = partial(jnp.repeat, repeats=num_waveforms_per_prompt, axis=0)
    halves = [jnp.split(o, 2) if cfg else [o] for o in outs]
    return tuple(jnp.concatenate([rep(h) for h in parts]) for parts in halves)


def check_items(pipe, items) -> None:
    """Batch items (tools/batch.py `Item`s) fit the pipeline: every item has a transcription on a speech snapshot,
    none on a text-to-audio one; a clear error naming the first offending item otherwise."""
    speech = getattr(pipe, "speech", False)
    for it in items:
        if speech and it.transcription is None:
            raise ValueError(
                f"item {it.index}: this is a speech snapshot; give every item a transcription (JSONL "
                '"transcription": "...", or --transcription for one prompt).'
            )
        if not speech and it.transcription is not None:
            raise ValueError(
                f"item {it.index} has a transcription, but this is a text-to-audio snapshot: transcriptions are for "
                "speech snapshots (e.g. anhnct/audioldm2_gigaspeech)."
            )
