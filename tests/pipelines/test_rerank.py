"""CLAP re-ranking of candidates (pipelines/audioldm2/rerank.py) against diffusers' `score_waveforms` on the tiny
random-weight snapshot, per-prompt ranking where diffusers mis-indexes (diffusers issue #13602), the long-clip score,
the pipeline's num_candidates / rerank options, and snapshots converted by 0.1 (text-only CLAP)."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch
from tiny_pipeline import build_tiny_pipeline, convert_as_release_0_1, save_tiny_pipeline

from litefocus_jax.features.feature_extraction_clap import ClapFeatureExtractor
from litefocus_jax.models.modeling_clap_model import MissingAudioBranchError
from litefocus_jax.pipelines.audioldm2 import rerank
from litefocus_jax.pipelines.audioldm2.pipeline_audioldm2 import AudioLDM2Pipeline

TOL = 1e-5  # |our cosine - torch's|; reached ~1e-7 (printed)
SECONDS = 0.064  # tiny vocoder hop: 1024 samples, 64 latent frames
PROMPTS = ["a dog barks", "rain on a tin roof"]


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("rerank") / "tiny")


@pytest.fixture(scope="module")
def pipe(snapshot):
    return AudioLDM2Pipeline.from_pretrained(snapshot)


@pytest.fixture(scope="module")
def ref_pipe():
    return build_tiny_pipeline()


def candidates(n: int, seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    """(n, samples) float32 at 16 kHz: noise shaped differently per row plus a tone, so CLAP scores differ."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    rows = []
    for i in range(n):
        noise = np.convolve(rng.standard_normal(t.size), np.ones(1 + 3 * i) / (1 + 3 * i), mode="same")
        rows.append(0.2 * noise + 0.3 * np.sin(2 * np.pi * (200 + 450 * i) * t))
    return np.asarray(rows, np.float32)


def torch_cosines(ref_pipe, prompts, audio: np.ndarray) -> np.ndarray:
    """diffusers' `score_waveforms` computation up to `logits_per_text`, as cosines: (prompts, all waveforms)."""
    inputs = ref_pipe.tokenizer(prompts, return_tensors="pt", padding=True)
    wave = librosa.resample(audio, orig_sr=16000, target_sr=48000)
    features = ref_pipe.feature_extractor(list(wave), return_tensors="pt", sampling_rate=48000).input_features
    with torch.no_grad():
        out = ref_pipe.text_encoder(**inputs, input_features=features)
        return (out.logits_per_text / ref_pipe.text_encoder.logit_scale_t.exp()).double().numpy()


def diffusers_rows(ref_pipe, prompts, audio: np.ndarray, n: int) -> list[int]:
    """Which input rows diffusers' `score_waveforms` returns, in its output order."""
    out = ref_pipe.score_waveforms(
        text=prompts, audio=torch.from_numpy(audio), num_waveforms_per_prompt=n, device="cpu", dtype=torch.float32
    )
    return [int(np.flatnonzero((audio == row).all(axis=1))[0]) for row in out.numpy()]


def test_one_prompt_ranks_as_diffusers(pipe, ref_pipe):
    audio = candidates(4)
    ref = torch_cosines(ref_pipe, PROMPTS[:1], audio)[0]
    (ours,) = rerank.score_candidates(pipe, PROMPTS[:1], [audio])
    err = np.abs(ours - ref).max()
    gaps = np.diff(np.sort(ref))
    print(f"scores {np.round(ref, 5)}: max error {err:.1e}, smallest gap {gaps.min():.1e}")
    assert err <= TOL and gaps.min() > 10 * TOL  # the order is decided by gaps well above the error
    assert list(rerank.rank(ours[None])[0]) == diffusers_rows(ref_pipe, PROMPTS[:1], audio, 4)


def test_several_prompts_rank_their_own_candidates(pipe, ref_pipe):
    n = 3
    audio = candidates(2 * n, seed=1)
    cos = torch_cosines(ref_pipe, PROMPTS, audio)  # (2, 6): every prompt against every waveform
    want = [int(b * n + i) for b in range(2) for i in np.argsort(-cos[b, b * n : (b + 1) * n], kind="stable")]
    rows, scores, chosen = rerank.rerank(pipe, PROMPTS, audio, n, keep=n)
    assert list(rows) == want and list(chosen) == [r % n for r in want]
    np.testing.assert_allclose(scores, [cos[r // n, r] for r in want], rtol=0, atol=TOL)
    # diffusers ranks each prompt against all 6 waveforms and uses those global rows: here prompt 0 receives
    # prompt 1's audio (and rows repeat or get lost)
    theirs = diffusers_rows(ref_pipe, PROMPTS, audio, n)
    print(f"per prompt: {want}; diffusers: {theirs}")
    assert any(r >= n for r in theirs[:n]) and theirs != want


def test_long_clip_score_is_the_mean_of_its_windows(pipe, ref_pipe):
    """A clip longer than the (tiny, 2 s) CLAP window: windows at 0, 1.5 s and 3 s of the 48 kHz clip, their
    embeddings averaged, deterministic; equal to the same computed with transformers' extractor and model."""
    audio = candidates(2, seconds=5.0, seed=2)
    first = rerank.score_candidates(pipe, PROMPTS[:1], [audio])[0]
    np.testing.assert_array_equal(first, rerank.score_candidates(pipe, PROMPTS[:1], [audio])[0])
    wave = librosa.resample(audio, orig_sr=16000, target_sr=48000)  # 240000 samples, windows of 96000
    starts = (0, 72000, 144000)
    crops = [wave[c, s : s + 96000] for c in range(2) for s in starts]
    features = ref_pipe.feature_extractor(crops, return_tensors="pt", sampling_rate=48000).input_features
    inputs = ref_pipe.tokenizer(PROMPTS[:1], return_tensors="pt", padding=True)
    with torch.no_grad():
        text = ref_pipe.text_encoder.get_text_features(**inputs).pooler_output[0].double().numpy()
        emb = ref_pipe.text_encoder.get_audio_features(features).pooler_output.double().numpy().reshape(2, 3, -1).mean(1)
    want = emb @ text / np.linalg.norm(emb, axis=1)
    print(f"long clips: {first} vs transformers {want}")
    np.testing.assert_allclose(first, want, rtol=0, atol=TOL)


def test_pipeline_candidates_and_rerank_options(pipe):
    args = dict(audio_length_in_s=SECONDS, num_inference_steps=2, seed=3)
    plain = pipe(PROMPTS, num_waveforms_per_prompt=3, rerank=False, output_latents=True, **args)
    assert plain.clap_scores is None and plain.candidate_indices is None and plain.audios.shape == (6, 1024)
    ranked = pipe(PROMPTS, num_waveforms_per_prompt=3, output_latents=True, **args)
    rows = ranked.candidate_indices + 3 * np.repeat(np.arange(2), 3)
    np.testing.assert_array_equal(ranked.audios, plain.audios[rows])
    np.testing.assert_array_equal(ranked.latents, plain.latents[rows])
    scores = rerank.score_candidates(pipe, PROMPTS, [plain.audios[:3], plain.audios[3:]])
    np.testing.assert_array_equal(ranked.clap_scores, np.concatenate(scores)[rows])
    for p in range(2):
        assert sorted(ranked.candidate_indices[3 * p : 3 * p + 3]) == [0, 1, 2]
        assert np.all(np.diff(ranked.clap_scores[3 * p : 3 * p + 3]) <= 0)  # best first
    best = pipe(PROMPTS, num_candidates=3, **args)  # the released protocol: keep the best of 3
    assert best.audios.shape == (2, 1024)
    np.testing.assert_array_equal(best.audios, ranked.audios[[0, 3]])
    np.testing.assert_array_equal(best.clap_scores, ranked.clap_scores[[0, 3]])
    # scoring compiles once per shape: other prompts of the same count and length reuse it
    compiled = pipe._jitted[rerank.JIT_KEY]._cache_size()
    rerank.score_candidates(pipe, ["an owl", "wind in the trees"], [plain.audios[3:], plain.audios[:3]])
    assert pipe._jitted[rerank.JIT_KEY]._cache_size() == compiled


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_waveforms_per_prompt=2, num_candidates=1), "num_candidates=1 is below"),
        (dict(num_candidates=3, rerank=False), "rerank=False"),
        (dict(num_candidates=0), "num_candidates must be an int >= 1"),
    ],
)
def test_bad_candidate_options_fail_before_compiling(pipe, kwargs, match):
    before = dict(pipe._jitted)
    with pytest.raises(ValueError, match=match):
        pipe("a dog barks", audio_length_in_s=SECONDS, num_inference_steps=2, **kwargs)
    assert pipe._jitted.keys() == before.keys()


def test_mismatched_feature_extractor_fails_before_generating(snapshot):
    other = AudioLDM2Pipeline.from_pretrained(snapshot)
    other.feature_extractor = ClapFeatureExtractor()  # 64 mel bins; the tiny CLAP takes 16
    with pytest.raises(ValueError, match="do not belong together"):
        other("a dog barks", audio_length_in_s=SECONDS, num_inference_steps=2, num_candidates=2)
    assert not other._jitted


def test_snapshot_converted_by_0_1_generates_but_asks_to_reconvert_for_reranking(snapshot, pipe, tmp_path):
    legacy = AudioLDM2Pipeline.from_pretrained(convert_as_release_0_1(snapshot, tmp_path / "converted"))
    args = dict(audio_length_in_s=SECONDS, num_inference_steps=2, seed=1)
    np.testing.assert_array_equal(legacy("a dog barks", **args).audios, pipe("a dog barks", **args).audios)
    compiled = dict(legacy._jitted)
    with pytest.raises(MissingAudioBranchError, match="text branch.*Re-convert.*rerank=False"):
        legacy("a dog barks", num_waveforms_per_prompt=2, **args)
    assert legacy._jitted.keys() == compiled.keys()  # refused before generating anything
