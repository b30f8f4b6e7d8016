"""A tiny random-weight diffusers AudioLDM2Pipeline (AUDIOLDM2.md §4 and its appendix), saved with save_pretrained."""

from __future__ import annotations

import types
from pathlib import Path

import torch
from diffusers import (
    AudioLDM2Pipeline,
    AudioLDM2ProjectionModel,
    AutoencoderKL,
    DDIMScheduler,
)
from tiny_models import build_tiny_unet, perturb
from transformers import (
    ClapAudioConfig,
    ClapConfig,
    ClapFeatureExtractor,
    ClapModel,
    ClapTextConfig,
    GenerationMixin,
    GPT2Config,
    GPT2Model,
    SpeechT5HifiGan,
    SpeechT5HifiGanConfig,
    T5Config,
    T5EncoderModel,
)

from litefocus_jax.pipelines.audioldm2.tiny import TINY_CLAP_AUDIO, TINY_CLAP_FEATURES, tiny_tokenizers

# hop 4 samples per mel frame (0.064 s = 64 latent frames), or the real hop of 160 (10.24 s = 256 latent frames).
VOCODERS = {
    "tiny_hop": dict(upsample_rates=[2, 2], upsample_kernel_sizes=[4, 4]),
    "real_hop": dict(upsample_rates=[5, 4, 8], upsample_kernel_sizes=[16, 8, 16]),
}


def _scaled(module, factor):
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(factor)
    return module


def randomize_clap(model: ClapModel, scale: float = 0.1) -> ClapModel:
    """Make every CLAP parameter matter (EVALUATION.md §G.2): perturb all weights (relative position tables start at
    zero, norms at identity) and give the audio BatchNorm running statistics of dB inputs (mean ~ -40, var 100-300)."""
    perturb(model.eval(), scale)
    bn = model.audio_model.audio_encoder.batch_norm
    with torch.no_grad():
        bn.running_mean.copy_(-40.0 + 5.0 * torch.randn_like(bn.running_mean))
        bn.running_var.copy_(100.0 + 200.0 * torch.rand_like(bn.running_var))
    return model


def build_tiny_pipeline(seed: int = 0, vocoder: str = "tiny_hop") -> AudioLDM2Pipeline:
    tok, tok2, n_vocab, n_pieces = tiny_tokenizers()
    torch.manual_seed(seed)
    unet = build_tiny_unet("base", seed)
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=1,
        out_channels=1,
        latent_channels=8,
        block_out_channels=(16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        norm_num_groups=8,
        scaling_factor=0.4110932946205139,
    )
    text_cfg = ClapTextConfig(
        vocab_size=n_vocab,
        hidden_size=16,
        intermediate_size=37,
        num_attention_heads=2,
        num_hidden_layers=2,
        projection_dim=16,
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
        max_position_embeddings=64,
    )
    audio_cfg = ClapAudioConfig(**TINY_CLAP_AUDIO)
    torch.manual_seed(seed)
    clap = randomize_clap(
        ClapModel(ClapConfig(text_config=text_cfg.to_dict(), audio_config=audio_cfg.to_dict(), projection_dim=16))
    )
    torch.manual_seed(seed)
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=n_pieces,
            d_model=24,
            d_ff=37,
            d_kv=8,
            num_heads=3,
            num_layers=2,
            feed_forward_proj="gated-gelu",
            is_gated_act=True,
        )
    )
    torch.manual_seed(seed)
    gpt2 = GPT2Model(GPT2Config(n_embd=16, n_head=2, n_layer=2, vocab_size=64, n_positions=128, bos_token_id=0, eos_token_id=0))
    gpt2.config.max_new_tokens = 8
    # diffusers calls a GenerationMixin method that GPT2Model lacks in transformers 5 (AUDIOLDM2.md §5.1).
    gpt2._update_model_kwargs_for_generation = types.MethodType(GenerationMixin._update_model_kwargs_for_generation, gpt2)
    torch.manual_seed(seed)
    proj = AudioLDM2ProjectionModel(text_encoder_dim=16, text_encoder_1_dim=24, langauge_model_dim=16)
    torch.manual_seed(seed)
    voc = SpeechT5HifiGan(
        SpeechT5HifiGanConfig(
            model_in_dim=64,
            sampling_rate=16000,
            upsample_initial_channel=16,
            resblock_kernel_sizes=[3, 7],
            resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]],
            normalize_before=False,
            **VOCODERS[vocoder],
        )
    )
    _scaled(voc, 3.0)  # default init gives ~1e-6 amplitudes; larger weights make relative errors meaningful
    sched = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.0015,
        beta_end=0.0195,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
        timestep_spacing="leading",
    )
    pipe = AudioLDM2Pipeline(
        vae=vae,
        text_encoder=clap,
        text_encoder_2=t5,
        projection_model=proj,
        language_model=gpt2,
        tokenizer=tok,
        tokenizer_2=tok2,
        feature_extractor=ClapFeatureExtractor(**TINY_CLAP_FEATURES),
        unet=unet,
        scheduler=sched,
        vocoder=voc,
    )
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_pipeline(folder: Path, seed: int = 0, vocoder: str = "tiny_hop") -> Path:
    build_tiny_pipeline(seed, vocoder).save_pretrained(folder)
    return Path(folder)


def convert_as_release_0_1(snapshot: Path, dst: Path) -> Path:
    """Convert `snapshot` to `dst` as litefocus-jax 0.1 did: its text_encoder/ holds the CLAP text branch only."""
    from litefocus_jax.models.modeling_clap import convert_clap_text_state
    from litefocus_jax.pipelines.audioldm2.conversion import convert
    from litefocus_jax.weights.state import read_config, read_safetensors, save_converted

    convert(snapshot, dst, log=lambda *_: None)
    text_encoder = Path(dst) / "text_encoder"
    for f in text_encoder.iterdir():
        f.unlink()
    text_encoder.rmdir()
    source, _ = read_safetensors(Path(snapshot) / "text_encoder" / "model.safetensors")
    config = read_config(Path(snapshot) / "text_encoder")
    flat = convert_clap_text_state(source, config)
    save_converted(text_encoder, flat, config, component="text_encoder", source="litefocus-jax 0.1", dtype="float32")
    return Path(dst)
