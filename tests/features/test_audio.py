"""The log-mel front end and audio -> latents, against a torch transcription of AudioLDM2's training
TacotronSTFT (`mel_spectrogram_train`: reflect pad (n_fft - hop) / 2, torch.stft center=False with a periodic
Hann window, magnitude, librosa's Slaney mel basis, log(clamp(mel, 1e-5))) and the diffusers VAE encoder."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import soundfile as sf
import torch
from tiny_models import TINY_VAE_CONFIG, build_tiny_vae
from transformers.audio_utils import mel_filter_bank as hf_mel_filter_bank

from litefocus_jax.features.audio import (
    MelConfig,
    audio_files_to_latents,
    check_audio_files,
    latent_samples,
    load_audio,
    log_mel_spectrogram,
    make_latent_encoder,
    mel_filter_bank,
    prepare_waveform,
    read_audio_folder,
)
from litefocus_jax.models.autoencoder_kl import load_vae
from litefocus_jax.pipelines.audioldm2.tiny import build_tiny_pipeline
from litefocus_jax.research.training_data import LatentTextDataset, encode_captions

LOG_MEL_TOL = 1e-3  # max abs log-mel error vs torch fp32 on signals with a noise floor; reached ~1.5e-4
LATENT_REL_TOL = 1e-4  # max |err| / max |ref| of latents (mel + VAE encoder) vs torch; reached 5.1e-6


def reference_basis(cfg: MelConfig = MelConfig()) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) float64: transformers' filter bank, equal to librosa.filters.mel's defaults."""
    return hf_mel_filter_bank(
        num_frequency_bins=cfg.n_fft // 2 + 1,
        num_mel_filters=cfg.n_mels,
        min_frequency=cfg.fmin,
        max_frequency=cfg.fmax,
        sampling_rate=cfg.sampling_rate,
        norm="slaney",
        mel_scale="slaney",
    ).T


def torch_log_mel(wave: np.ndarray, dtype=torch.float32) -> np.ndarray:
    """(B, L) -> (B, frames, 64), transcribed from the AudioLDM training code's mel_spectrogram_train."""
    y = torch.from_numpy(wave).to(dtype)
    pad = (1024 - 160) // 2
    y = torch.nn.functional.pad(y.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    spec = torch.stft(
        y,
        1024,
        hop_length=160,
        win_length=1024,
        window=torch.hann_window(1024, dtype=dtype),
        center=False,
        pad_mode="reflect",
        normalized=False,
        onesided=True,
        return_complex=True,
    ).abs()
    mel = torch.from_numpy(reference_basis()).to(dtype) @ spec
    return torch.log(torch.clamp(mel, min=1e-5)).transpose(1, 2).numpy()


def signals(length: int, noise_floor: float | None = 1e-3) -> np.ndarray:
    """(2, length): two tones + noise, and a 100 Hz -> 7 kHz chirp; optionally a white-noise floor on both."""
    rng = np.random.default_rng(0)
    t = np.arange(length) / 16000
    w = np.stack(
        [
            0.4 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 3000 * t) + 0.01 * rng.standard_normal(length),
            0.5 * np.sin(2 * np.pi * (100 * t + 3450 * t**2)),
        ]
    )
    if noise_floor:
        w = w + noise_floor * rng.standard_normal(w.shape)
    return w.astype(np.float32)


def normalize_and_pad(wave: np.ndarray, samples: int) -> np.ndarray:
    """The training code's normalize_wav then pad_wav (zeros after the audio)."""
    w = wave.astype(np.float64) - wave.mean()
    w = w / (np.abs(w).max() + 1e-8) * 0.5
    return np.pad(w, (0, samples - len(w))).astype(np.float32)


@pytest.fixture(scope="module")
def vae_pair(tmp_path_factory):
    """(torch reference VAE, the same weights loaded with the library's loader (encoder included), its folder)."""
    folder = tmp_path_factory.mktemp("vae") / "vae"
    ref = build_tiny_vae()
    ref.save_pretrained(folder)
    return ref, load_vae(folder, with_encoder=True), folder


# ---------------------------------------------------------------------------------------------- mel


@pytest.mark.parametrize("cfg", [MelConfig(), MelConfig(sampling_rate=22050, n_mels=80, fmin=20.0, fmax=11025.0)])
def test_mel_filter_bank_is_librosas_slaney_basis(cfg):
    ref = reference_basis(cfg)
    got = mel_filter_bank(cfg)
    err = np.abs(got - ref).max()
    print(f"mel basis {cfg.n_mels}x{cfg.n_fft // 2 + 1}: max abs error {err:.1e} (max {ref.max():.4f}, float32 rounding)")
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert err <= 4 * np.finfo(np.float32).eps * ref.max()


@pytest.mark.parametrize("length", [16000, 16037])
def test_log_mel_matches_torch_tacotron_stft(length):
    wave = signals(length)
    ref = torch_log_mel(wave)
    eager = np.asarray(log_mel_spectrogram(wave))
    jitted = np.asarray(jax.jit(log_mel_spectrogram)(wave))
    assert eager.shape == ref.shape == (2, MelConfig().num_frames(length), 64)
    assert MelConfig().num_frames(16000) == 100  # L / hop frames for a multiple of the hop
    err = np.abs(eager - ref).max()
    print(f"L={length}: log-mel max abs error {err:.1e} vs torch fp32 (values {ref.min():.2f} .. {ref.max():.2f})")
    assert err <= LOG_MEL_TOL
    np.testing.assert_allclose(jitted, eager, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(log_mel_spectrogram(wave[0])), eager[0])  # (L,) input


@pytest.mark.parametrize("noise_floor", [1e-3, None])
def test_log_mel_is_as_accurate_as_torch_fp32(noise_floor):
    """Against a float64 torch reference both fp32 implementations err the same way; without a noise floor
    the chirp has bins just above the 1e-5 clamp, where fp32 FFT rounding is large in the log domain."""
    wave = signals(16000, noise_floor)
    exact = torch_log_mel(wave, torch.float64)
    ours = np.abs(np.asarray(log_mel_spectrogram(wave)) - exact).max()
    theirs = np.abs(torch_log_mel(wave) - exact).max()
    print(f"noise floor {noise_floor}: max log-mel error vs float64, ours {ours:.1e}, torch fp32 {theirs:.1e}")
    assert ours <= 1.5 * theirs


def test_silence_sits_on_the_log_floor():
    out = np.asarray(log_mel_spectrogram(np.zeros(3200, np.float32)))
    np.testing.assert_array_equal(out, np.full((20, 64), np.log(np.float32(1e-5)), np.float32))


def test_prepare_waveform_crops_normalizes_then_pads():
    rng = np.random.default_rng(1)
    wave = (0.3 * rng.standard_normal(1000) + 0.2).astype(np.float32)
    out = prepare_waveform(wave, 1500)
    np.testing.assert_allclose(out, normalize_and_pad(wave, 1500), atol=1e-7)
    assert abs(out[:1000].mean()) < 1e-6 and np.isclose(np.abs(out).max(), 0.5) and not out[1000:].any()
    cropped = prepare_waveform(wave, 600)
    np.testing.assert_allclose(cropped, normalize_and_pad(wave[:600], 600), atol=1e-7)  # normalised after the crop
    assert latent_samples(1.0) == 16000 and latent_samples(0.7) == 11520 and latent_samples(0.01) == 640


# ---------------------------------------------------------------------------------------------- files


def test_load_audio_and_clear_errors(tmp_path):
    rng = np.random.default_rng(2)
    stereo = (0.5 * rng.uniform(-1, 1, (4000, 2))).astype(np.float32)
    sf.write(tmp_path / "stereo.wav", stereo, 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(tmp_path / "stereo.wav"), stereo.mean(axis=1), atol=1e-7)
    sf.write(tmp_path / "pcm.flac", stereo[:, 0], 16000, subtype="PCM_16")
    np.testing.assert_allclose(load_audio(tmp_path / "pcm.flac"), stereo[:, 0], atol=1 / 2**15)
    assert check_audio_files([tmp_path / "stereo.wav"]) == [0.25]

    sf.write(tmp_path / "cd.wav", stereo, 44100)
    with pytest.raises(ValueError, match=r"44100 Hz.*Resample to 16 kHz"):
        load_audio(tmp_path / "cd.wav")
    with pytest.raises(FileNotFoundError, match="no such audio file"):
        check_audio_files([tmp_path / "missing.wav"])
    (tmp_path / "text.wav").write_text("not audio")
    with pytest.raises(ValueError, match="not a readable audio file"):
        check_audio_files([tmp_path / "text.wav"])
    sf.write(tmp_path / "tiny.wav", stereo[:100], 16000)
    with pytest.raises(ValueError, match="too short"):
        check_audio_files([tmp_path / "tiny.wav"])


def test_read_audio_folder_captions(tmp_path):
    for name in ("dog_barking.wav", "rain-on-roof.wav"):
        sf.write(tmp_path / name, np.zeros(1000, np.float32), 16000)
    files, captions = read_audio_folder(tmp_path)
    assert [f.name for f in files] == ["dog_barking.wav", "rain-on-roof.wav"] and captions == ["dog barking", "rain on roof"]
    lines = [{"file": "dog_barking.wav", "caption": "a dog barks twice"}]
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    with pytest.raises(ValueError, match="no caption for.*rain-on-roof.wav"):
        read_audio_folder(tmp_path)
    lines.append({"file": "rain-on-roof.wav", "caption": "rain"})
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert read_audio_folder(tmp_path)[1] == ["a dog barks twice", "rain"]
    with pytest.raises(FileNotFoundError, match="not a folder"):
        read_audio_folder(tmp_path / "nope")


# ---------------------------------------------------------------------------------------------- latents


def test_audio_files_to_latents_match_torch(tmp_path, vae_pair):
    ref_vae, vae, _ = vae_pair
    waves = [signals(16000)[0], signals(11200)[1]]  # 1.0 s and 0.7 s: the shorter one is padded with silence
    paths = []
    for i, w in enumerate(waves):
        paths.append(tmp_path / f"{i}.wav")
        sf.write(paths[-1], w, 16000, subtype="FLOAT")
    latents = audio_files_to_latents(paths, vae)
    assert latents.shape == (2, 25, 16, 8) and latents.dtype == np.float32

    mel = torch_log_mel(np.stack([normalize_and_pad(w, 16000) for w in waves]))  # (2, 100, 64)
    with torch.no_grad():
        mean = ref_vae.encode(torch.from_numpy(mel)[:, None]).latent_dist.mean.numpy()
    ref = mean.transpose(0, 2, 3, 1) * TINY_VAE_CONFIG["scaling_factor"]
    err = np.abs(latents - ref).max() / np.abs(ref).max()
    print(f"latents (mel + VAE encoder): relative max error {err:.1e} vs torch (max {np.abs(ref).max():.2f})")
    assert err <= LATENT_REL_TOL

    cropped = audio_files_to_latents(paths, vae, seconds=0.5, batch_size=1)
    assert cropped.shape == (2, 13, 16, 8)  # 0.5 s rounds up to 13 latent frames (0.52 s)
    sampled = audio_files_to_latents(paths, vae, key=jax.random.key(0))
    assert sampled.shape == latents.shape and not np.allclose(sampled, latents)


def test_latent_encoder_errors(tmp_path, vae_pair):
    _, vae, folder = vae_pair
    encode = make_latent_encoder(vae)
    with pytest.raises(ValueError, match="multiple of 640"):
        encode(np.zeros((1, 1000), np.float32))
    decoder_only = load_vae(folder, with_encoder=False)
    with pytest.raises(ValueError, match="with_encoder=True"):
        make_latent_encoder(decoder_only)
    sf.write(tmp_path / "cd.wav", np.zeros(4410, np.float32), 44100)
    with pytest.raises(ValueError, match="Resample"):
        audio_files_to_latents([tmp_path / "cd.wav"], vae)
    with pytest.raises(ValueError, match="no files"):
        audio_files_to_latents([], vae)


def test_captions_become_padded_text_states():
    """encode_captions chunks through the pipeline's encode_prompt and pads T5 to the longest with mask 0."""
    pipe = build_tiny_pipeline()
    captions = ["a dog", "rain falls on a tin roof all night"]
    gpt2, t5, mask = encode_captions(pipe, captions, batch_size=1)
    alone = [[np.asarray(a) for a in pipe.encode_prompt([c], [""], 1, False)] for c in captions]
    lengths = [a[0].shape[1] for a in alone]
    assert lengths[0] < lengths[1] and t5.shape == (2, lengths[1], 24) and gpt2.shape == (2, 8, 16)
    for i, (t5_i, mask_i, gpt2_i) in enumerate(alone):
        np.testing.assert_array_equal(gpt2[i], gpt2_i[0])
        np.testing.assert_array_equal(t5[i, : lengths[i]], t5_i[0])
        np.testing.assert_array_equal(mask[i], np.pad(mask_i[0], (0, lengths[1] - lengths[i])))
    assert not t5[0, lengths[0] :].any()
    data = LatentTextDataset(np.zeros((2, 25, 16, 8), np.float32), gpt2, t5, mask)
    batch = next(data.batches(2))
    assert batch.encoder_attention_mask_1.shape == (2, lengths[1])
    with pytest.raises(ValueError, match="non-empty list"):
        encode_captions(pipe, [])
