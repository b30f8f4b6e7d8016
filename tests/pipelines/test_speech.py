"""Text-to-speech (AudioLDM2 speech checkpoints) against diffusers on a tiny random-weight speech snapshot."""

from __future__ import annotations

import copy
import json
import shutil
import sys
import types

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.torch import load_file
from tiny_speech import MAX_LENGTH, TRANSCRIPTIONS, save_tiny_speech_pipeline

from litefocus_jax.commands.cli import main
from litefocus_jax.litefocus.plan import LiteFocusConfig, make_plan
from litefocus_jax.models.modeling_vits import load_vits_text_encoder
from litefocus_jax.models.presets import unet_config
from litefocus_jax.models.projection_audioldm2 import load_projection_model
from litefocus_jax.models.unet_audioldm2 import UNetConfig
from litefocus_jax.pipelines.audioldm2 import speech
from litefocus_jax.pipelines.audioldm2.conversion import convert, is_speech_snapshot
from litefocus_jax.pipelines.audioldm2.pipeline_audioldm2 import AudioLDM2Pipeline
from litefocus_jax.tools.batch import Item, parse_prompts, read_manifests, run_batch
from litefocus_jax.weights.state import ConversionError

SECONDS = 0.064  # 64 latent frames with the tiny hop
PROMPTS = ["A female reporter is speaking", "A man speaks slowly"]
NEGATIVES = ["low quality", "noise"]
MAX_NEW = 8  # the tiny GPT2 has 128 positions: 3 + 32 + 2 + 8 (the real checkpoints: 512)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(diffusers pipeline, its save_pretrained folder, the JAX pipeline loaded from it)."""
    ref, folder = save_tiny_speech_pipeline(tmp_path_factory.mktemp("speech") / "tiny")
    ref.score_waveforms = lambda text, audio, **_: audio  # generation order on both sides (see test_rerank.py)
    return ref, folder, AudioLDM2Pipeline.from_pretrained(folder)


def rel_l2(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def test_speech_matches_diffusers_with_cfg_and_negative_prompts(tiny):
    ref, _, pipe = tiny
    assert pipe.speech
    latents = np.random.default_rng(0).standard_normal((2, 64, 16, 8)).astype(np.float32)
    kwargs = dict(audio_length_in_s=SECONDS, num_inference_steps=2, guidance_scale=3.5, negative_prompt=NEGATIVES)
    torch_latents = torch.from_numpy(latents.transpose(0, 3, 1, 2).copy())
    want = ref(PROMPTS, transcription=TRANSCRIPTIONS, latents=torch_latents, max_new_tokens=MAX_NEW, output_type="np", **kwargs)
    out = pipe(PROMPTS, transcription=TRANSCRIPTIONS, latents=latents, max_new_tokens=MAX_NEW, rerank=False, **kwargs)
    err = rel_l2(out.audios, want.audios)

    # the text stage alone, both CFG halves (same compiled program as the call above)
    with torch.no_grad():
        ref_embeds, ref_mask, ref_gen = ref.encode_prompt(
            PROMPTS, "cpu", 1, True, transcription=TRANSCRIPTIONS, negative_prompt=NEGATIVES, max_new_tokens=MAX_NEW
        )
    embeds, mask, gen = speech.encode_prompt(pipe, PROMPTS, NEGATIVES, TRANSCRIPTIONS, 1, True, MAX_NEW)
    errs = rel_l2(embeds, ref_embeds.numpy()), rel_l2(gen, ref_gen.numpy())
    print(
        f"speech: waveform rel L2 {err:.2e} (max abs {np.abs(out.audios - want.audios).max():.2e}); "
        f"VITS states {errs[0]:.2e}, GPT2 states {errs[1]:.2e}"
    )
    assert out.audios.shape == want.audios.shape == (2, int(SECONDS * 16000))
    assert err <= 1e-4
    assert embeds.shape == (4, MAX_LENGTH, 16) and gen.shape == (4, MAX_NEW, 16)
    assert mask.dtype == np.float32 and ref_mask.dtype == torch.float32
    np.testing.assert_array_equal(np.asarray(mask), ref_mask.numpy())  # [zeros; tokens + end token]
    assert not np.any(np.asarray(embeds[:2])) and max(errs) <= 1e-5


def test_end_token_edit_as_diffusers(tiny):
    _, _, pipe = tiny
    ids, mask = speech.vits_tokens(pipe.tokenizer_2, [TRANSCRIPTIONS[0], "ɐ" * 40, ""])
    # "wish you have a good day" (AUDIOLDM2_TTS.md §4) + 182 at the first pad; a full row gets no end token
    assert ids[0, :25].tolist() == [65, 156, 102, 131, 16, 52, 63, 158, 16, 50, 72, 64, 16, 70, 16, 92, 156, 135, 46, 16, 46,
                                    156, 47, 102, 182]  # fmt: skip
    assert mask[0].tolist() == [1] * 25 + [0] * (MAX_LENGTH - 25) and not ids[0, 25:].any()
    assert 182 not in ids[1] and mask[1].all()
    assert ids[2, 0] == 182 and mask[2].tolist() == [1] + [0] * (MAX_LENGTH - 1)


def test_transcription_errors(tiny):
    _, folder, pipe = tiny
    kwargs = dict(audio_length_in_s=SECONDS, num_inference_steps=1)
    with pytest.raises(ValueError, match="speech snapshot.*pass transcription="):
        pipe(PROMPTS[0], **kwargs)
    with pytest.raises(ValueError, match="transcription has 1 entries but prompt has 2"):
        pipe(PROMPTS, transcription=TRANSCRIPTIONS[0], **kwargs)
    with pytest.raises(ValueError, match="str or a list of str"):
        pipe(PROMPTS[0], transcription=3, **kwargs)
    with pytest.raises(ValueError, match="max_new_tokens must be a positive int"):
        pipe(PROMPTS[0], transcription="a", max_new_tokens=0, **kwargs)
    text_pipe = copy.copy(pipe)  # the same call on a text-to-audio pipeline (speech is read from the snapshot)
    text_pipe.speech = False
    with pytest.raises(ValueError, match="transcription is only for speech snapshots"):
        text_pipe(PROMPTS[0], transcription="a", **kwargs)
    index = json.loads((folder / "model_index.json").read_text())
    assert is_speech_snapshot(index) and not is_speech_snapshot({**index, "text_encoder_2": ["transformers", "T5EncoderModel"]})


def test_missing_phonemizer_or_espeak_is_a_clear_error(tiny, monkeypatch):
    _, _, pipe = tiny
    monkeypatch.setattr(pipe.tokenizer_2, "phonemize", True)
    monkeypatch.setitem(sys.modules, "phonemizer", None)  # not installed
    monkeypatch.setattr(speech.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match=r"phonemizer is not installed.*litefocus-jax\[tts\].*apt-get install espeak-ng"):
        pipe(PROMPTS[0], transcription="hello", audio_length_in_s=SECONDS, num_inference_steps=1)
    backend = types.SimpleNamespace(EspeakBackend=types.SimpleNamespace(is_available=lambda: False))
    monkeypatch.setitem(sys.modules, "phonemizer", types.ModuleType("phonemizer"))
    monkeypatch.setitem(sys.modules, "phonemizer.backend", backend)
    monkeypatch.setattr(speech.importlib.util, "find_spec", lambda name: object())
    with pytest.raises(RuntimeError, match="espeak-ng is not installed.*apt-get install espeak-ng"):
        pipe(PROMPTS[0], transcription="hello", audio_length_in_s=SECONDS, num_inference_steps=1)


def test_pickled_checkpoints_convert_and_never_load_directly(tiny, tmp_path):
    """The speech checkpoints ship pytorch_model.bin: loading refuses them, conversion reads them (torch,
    weights_only) and writes safetensors that load to the same parameters."""
    _, folder, pipe = tiny
    src = tmp_path / "bin_snapshot"
    shutil.copytree(folder, src)
    for name, file, pickled in (
        ("text_encoder_2", "model.safetensors", "pytorch_model.bin"),
        ("projection_model", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
    ):
        torch.save(load_file(src / name / file), src / name / pickled)
        (src / name / file).unlink()
    with pytest.raises(ValueError, match=r"text_encoder_2, projection_model hold only PyTorch pickles.*litefocus-jax convert"):
        AudioLDM2Pipeline.from_pretrained(src)
    convert(src, tmp_path / "converted", log=lambda *_: None)
    assert is_speech_snapshot(json.loads((tmp_path / "converted" / "model_index.json").read_text()))
    for name, load in (("text_encoder_2", load_vits_text_encoder), ("projection_model", load_projection_model)):
        assert (tmp_path / "converted" / name / "litefocus_jax_model.safetensors").is_file()
        params = nnx.to_pure_dict(nnx.state(load(tmp_path / "converted")))
        same = jax.tree_util.tree_map(np.array_equal, params, pipe.modules[name][1])
        assert all(jax.tree_util.tree_leaves(same)), name
    # strictness: a VITS checkpoint that does not fit fails the whole conversion and writes nothing
    state = torch.load(src / "text_encoder_2" / "pytorch_model.bin", weights_only=True)
    state["text_encoder.encoder.layers.0.attention.q_proj.weight"] = torch.zeros(3, 3)
    torch.save(state, src / "text_encoder_2" / "pytorch_model.bin")
    with pytest.raises(ConversionError, match="q_proj"):
        convert(src, tmp_path / "bad", log=lambda *_: None)
    assert not (tmp_path / "bad").exists()


def test_conversion_without_torch_is_a_clear_error(tiny, tmp_path, monkeypatch):
    _, folder, _ = tiny
    src = tmp_path / "projection_model"
    shutil.copytree(folder / "projection_model", src)
    (src / "diffusion_pytorch_model.safetensors").rename(src / "diffusion_pytorch_model.bin")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ConversionError, match="PyTorch pickle and torch is not installed"):
        convert(src, tmp_path / "out", log=lambda *_: None)


def test_batch_jsonl_transcriptions_and_manifest(tiny, tmp_path, monkeypatch):
    """`generate --prompts` with a JSONL "transcription" per line: items as direct calls, recorded in the manifest."""
    _, _, pipe = tiny
    monkeypatch.setattr(speech, "SPEECH_MAX_NEW_TOKENS", MAX_NEW)  # the tiny GPT2 has 128 positions, not 3 + 32 + 2 + 512
    path = tmp_path / "prompts.jsonl"
    lines = [
        dict(prompt=p, negative_prompt=n, transcription=t, seed=s, seconds=SECONDS)
        for p, n, t, s in zip(PROMPTS, NEGATIVES, TRANSCRIPTIONS, (11, 12))
    ]
    path.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + '\n{"prompt": "x", "transcription": 5}\n')
    items, failures = parse_prompts(path, seconds=1.0, negative_prompt="", seed=0)
    assert [it.transcription for it in items] == TRANSCRIPTIONS and "'transcription'" in failures[0].reason
    settings = dict(model="tiny-speech", scheduler="ddim", steps=2, guidance=3.5, attention={"type": "dense"}, dtype="float32")
    run = dict(settings=settings, num_inference_steps=2, guidance_scale=3.5, batch_size=2, progress=False, log=lambda *_: None)
    result = run_batch(pipe, items, tmp_path / "out", save_npy_too=True, **run)
    assert sorted(result.written) == [0, 1] and not result.failed
    assert any(sig[0][0] == "encode_speech" for sig in pipe._executables)  # its compile is in compile_seconds
    records = read_manifests(tmp_path / "out")
    assert [records[i]["transcription"] for i in (0, 1)] == TRANSCRIPTIONS
    noise = [jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(s), 0), (64, 16, 8)) for s in (11, 12)]
    want = pipe(
        PROMPTS,
        transcription=TRANSCRIPTIONS,
        negative_prompt=NEGATIVES,
        latents=np.stack(noise),
        audio_length_in_s=SECONDS,
        num_inference_steps=2,
        max_new_tokens=MAX_NEW,
        rerank=False,
    ).audios
    for i in (0, 1):
        got = np.load(tmp_path / "out" / records[i]["file"].replace(".wav", ".npy"))
        np.testing.assert_allclose(got, want[i], rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="item 0: this is a speech snapshot; give every item a transcription"):
        run_batch(pipe, [Item(0, "a voice", "", SECONDS, 1)], tmp_path / "out2", **run)
    assert main(["generate", "--prompts", str(path), "--transcription", "hi", "--out-dir", str(tmp_path / "o")]) == 2


def test_litefocus_default_on_the_speech_unet(tiny):
    """The default levels=(1,) on the speech UNet ([None, 16]: two transformers per ResNet, three self-attentions):
    level 1 is down_blocks[1] (1 ResNet here) + up_blocks[2] (2): 9 sparse calls per UNet call (real checkpoint:
    15, tests/litefocus). Through the speech pipeline, ratio 1 in "exact" mode (every key once) equals dense, and
    the default ratio 0.1 changes the audio."""
    _, _, pipe = tiny
    plan = make_plan(pipe.unet_config, LiteFocusConfig(), (1, 64, 16, 8))
    assert [(lp.level, lp.calls, lp.time, lp.freq_bins, lp.comp_tokens) for lp in plan.levels] == [(1, 9, 32, 8, 25)]
    real = make_plan(UNetConfig.from_diffusers(unet_config("audioldm2-tts")), LiteFocusConfig(), (1, 2000, 16, 8))
    assert [(lp.level, lp.calls) for lp in real.levels] == [(1, 15)]

    kwargs = dict(audio_length_in_s=SECONDS, num_inference_steps=2, max_new_tokens=MAX_NEW, rerank=False, seed=3)
    dense = pipe(PROMPTS[:1], transcription=TRANSCRIPTIONS[:1], **kwargs).audios
    full = pipe(PROMPTS[:1], transcription=TRANSCRIPTIONS[:1], litefocus=LiteFocusConfig(ratio=1.0, duplicates="exact"), **kwargs)
    sparse = pipe(PROMPTS[:1], transcription=TRANSCRIPTIONS[:1], litefocus=LiteFocusConfig(), **kwargs).audios
    print(
        f"speech LiteFocus: ratio 1 exact vs dense {rel_l2(full.audios, dense):.2e}, ratio 0.1 vs dense {rel_l2(sparse, dense):.2e}"
    )
    assert rel_l2(full.audios, dense) <= 1e-5
    assert np.isfinite(sparse).all() and rel_l2(sparse, dense) > 1e-3
