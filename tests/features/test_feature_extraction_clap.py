"""CLAP's log-mel front end vs transformers `ClapFeatureExtractor`, 16 -> 48 kHz resampling vs librosa, and the
deterministic windows of clips longer than the CLAP window."""

from __future__ import annotations

import json

import librosa
import numpy as np
import pytest
from transformers import ClapFeatureExtractor as HFClapFeatureExtractor
from transformers.audio_utils import mel_filter_bank

from litefocus_jax.features.feature_extraction_clap import ClapFeatureExtractor, _slaney_filters, resample
from litefocus_jax.pipelines.audioldm2.tiny import TINY_CLAP_FEATURES

TOL_DB = 1e-4  # max |ours - transformers| in dB; reached 0.0 (the same float64 arithmetic, complex64 rounding included)
CVSSP = dict(frequency_min=50, truncation="rand_trunc")  # cvssp/audioldm2 preprocessor_config.json vs class defaults


def clip(seconds: float, rate: int = 48000, seed: int = 0) -> np.ndarray:
    """Noise plus a tone, with a near-silent stretch (float32, as the pipeline's waveforms)."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    x = 0.1 * rng.standard_normal(n) + 0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / rate)
    x[: n // 5] *= 1e-4
    return x.astype(np.float32)


@pytest.mark.parametrize("seconds", [0.02, 0.3, 3.0, 6.0, 10.0])
@pytest.mark.parametrize("padding", ["repeatpad", "repeat", "pad"])
def test_matches_transformers_up_to_one_window(seconds, padding):
    ours = ClapFeatureExtractor(padding=padding)
    ref = HFClapFeatureExtractor(**CVSSP, padding=padding)
    x = clip(seconds)
    want = ref([x], sampling_rate=48000, return_tensors="np").input_features  # (1, 1, 1001, 64)
    got = ours([x], sampling_rate=48000)
    assert got.shape == (1, 1, 1, 1001, 64) and got.dtype == np.float32
    err = np.abs(got[:, 0] - want).max()
    print(f"{seconds} s {padding}: max |dB error| {err:.1e}")
    assert err <= TOL_DB


def test_tiny_settings_and_a_batch_match_transformers():
    ours, ref = ClapFeatureExtractor.from_dict(TINY_CLAP_FEATURES), HFClapFeatureExtractor(**TINY_CLAP_FEATURES)
    clips = [clip(0.5, seed=s) for s in range(3)]
    want = ref(clips, sampling_rate=48000, return_tensors="np").input_features  # (3, 1, 201, 16)
    got = ours(clips, sampling_rate=48000)
    assert got.shape == (3, 1, 1, 201, 16)
    assert np.abs(got[:, 0] - want).max() <= TOL_DB


def test_mel_filters_equal_transformers():
    want = mel_filter_bank(513, 64, 50, 14000, 48000, norm="slaney", mel_scale="slaney")
    np.testing.assert_allclose(_slaney_filters((513, 64, 50.0, 14000.0, 48000)), want, rtol=0, atol=1e-15)


@pytest.mark.parametrize("length", [1024, 16000, 163840, 16001])
def test_resample_is_librosa_default(length):
    x = np.stack([clip(length / 16000, 16000, seed=s)[:length] for s in range(2)])
    want = librosa.resample(x, orig_sr=16000, target_sr=48000)
    got = resample(x, 16000, 48000)
    assert got.shape == want.shape == (2, -(-length * 3 // 1)) and got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(resample(x[0], 16000, 48000), want[0])


def test_long_clip_windows_are_deterministic_and_cover_the_clip():
    """10.24 s (AudioLDM2's default) -> 2 windows [0, 10 s) and [0.24 s, 10.24 s); each is transformers' features of
    that exact crop; 25 s -> 3 windows ending at the clip's end. No RNG anywhere: two calls agree bit for bit."""
    ours, ref = ClapFeatureExtractor(), HFClapFeatureExtractor(**CVSSP)
    x = clip(10.24)
    got = ours([x], sampling_rate=48000)
    assert got.shape == (1, 2, 1, 1001, 64)
    np.testing.assert_array_equal(got, ours([x], sampling_rate=48000))
    for w, start in enumerate((0, 11520)):
        want = ref([x[start : start + 480000]], sampling_rate=48000, return_tensors="np").input_features[0]
        assert np.abs(got[0, w] - want).max() <= TOL_DB
    long = clip(25.0)
    windows = ours.windows(long)
    assert windows.shape == (3, 480000)
    np.testing.assert_array_equal(windows[0], long[:480000])
    np.testing.assert_array_equal(windows[-1], long[-480000:])
    np.testing.assert_array_equal(windows[1], long[360000:840000])  # evenly spaced: starts 0, 360000, 720000


def test_from_pretrained_reads_a_saved_extractor(tmp_path):
    HFClapFeatureExtractor(**TINY_CLAP_FEATURES).save_pretrained(tmp_path)
    assert ClapFeatureExtractor.from_pretrained(tmp_path) == ClapFeatureExtractor.from_dict(TINY_CLAP_FEATURES)
    assert ClapFeatureExtractor.from_dict(dict(CVSSP)) == ClapFeatureExtractor()


def test_bad_settings_and_inputs_raise(tmp_path):
    with pytest.raises(ValueError, match="truncation='fusion' is not supported"):
        ClapFeatureExtractor.from_dict({})  # transformers' class default is the fused model's "fusion"
    with pytest.raises(ValueError, match="feature_extractor_type is 'WhisperFeatureExtractor'"):
        ClapFeatureExtractor.from_dict(dict(CVSSP, feature_extractor_type="WhisperFeatureExtractor"))
    with pytest.raises(ValueError, match="padding='zeros'"):
        ClapFeatureExtractor(padding="zeros")
    with pytest.raises(ValueError, match="frequency_max"):
        ClapFeatureExtractor(frequency_max=30000)
    (tmp_path / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="invalid JSON"):
        ClapFeatureExtractor.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json is missing"):
        ClapFeatureExtractor.from_pretrained(tmp_path / "nope")
    fe = ClapFeatureExtractor()
    with pytest.raises(ValueError, match="16000 Hz.*resample first"):
        fe([clip(1.0)], sampling_rate=16000)
    with pytest.raises(ValueError, match="of one length"):
        fe([clip(1.0), clip(2.0)], sampling_rate=48000)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        fe([np.zeros((2, 5), np.float32)], sampling_rate=48000)
    with pytest.raises(ValueError, match=r"\(L,\) or \(B, L\)"):
        resample(np.zeros((1, 0), np.float32), 16000, 48000)
    assert json.loads(json.dumps(TINY_CLAP_FEATURES))["truncation"] == "rand_trunc"
