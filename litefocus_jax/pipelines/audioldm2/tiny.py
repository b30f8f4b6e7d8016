"""A tiny random-weight AudioLDM2 pipeline built in-process (no torch, no download): the demo, benchmarks, examples."""

from __future__ import annotations

# A tiny HTSAT for CLAP re-ranking (EVALUATION.md §G.1 config A): 16 mel bins, a 64 x 64 image (4 time chunks of 64
# frames), a 16 / 8 / 4 token grid with 4 x 4 windows (shifted in stages 0-1), two patch mergings.
TINY_CLAP_AUDIO = dict(
    spec_size=64,
    num_mel_bins=16,
    window_size=4,
    patch_embeds_hidden_size=8,
    hidden_size=32,
    depths=[2, 2, 2],
    num_attention_heads=[1, 2, 4],
)
# its feature extractor (transformers ClapFeatureExtractor keys): 2 s windows at 48 kHz -> 201 frames of 16 mel bins,
# stretched to the model's 256 frames by the bicubic resize
TINY_CLAP_FEATURES = dict(
    feature_size=16,
    sampling_rate=48000,
    fft_window_size=1024,
    hop_length=480,
    max_length_s=2,
    frequency_min=50,
    frequency_max=14000,
    padding="repeatpad",
    truncation="rand_trunc",
)


def tiny_tokenizers():
    """A byte-level RoBERTa tokenizer and a T5 (Unigram) tokenizer with in-memory vocabularies (offline)."""
    import string

    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import RobertaTokenizer, T5Tokenizer

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for ch in sorted(ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    vocab["<mask>"] = len(vocab)
    tok = RobertaTokenizer(vocab=vocab, merges=[], model_max_length=32)
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    for c in string.ascii_lowercase:
        pieces += [("\u2581" + c, -3.0), (c, -4.0)]
    pieces += [(f"<extra_id_{i}>", 0.0) for i in range(99, -1, -1)]
    return tok, T5Tokenizer(vocab=pieces, model_max_length=32), len(vocab), len(pieces)


def build_tiny_pipeline(seed: int = 0, dtype=None, scheduler: str = "ddim"):
    """A tiny random-weight AudioLDM2Pipeline built in-process with the library's init_* functions (no torch,
    no download). The real vocoder hop: 25 latent frames per second, 16 kHz. Its CLAP has an audio branch, so it
    re-ranks candidates (on 2 s CLAP windows)."""
    import jax.numpy as jnp

    from litefocus_jax.features.feature_extraction_clap import ClapFeatureExtractor
    from litefocus_jax.models.autoencoder_kl import init_vae
    from litefocus_jax.models.hifigan import init_vocoder
    from litefocus_jax.models.modeling_clap_model import init_clap
    from litefocus_jax.models.modeling_gpt2 import init_gpt2
    from litefocus_jax.models.modeling_t5 import init_t5_encoder
    from litefocus_jax.models.presets import TINY_VAE, TINY_VOCODER
    from litefocus_jax.models.projection_audioldm2 import init_projection_model
    from litefocus_jax.models.unet_audioldm2 import init_unet
    from litefocus_jax.pipelines.audioldm2.pipeline_audioldm2 import AudioLDM2Pipeline
    from litefocus_jax.schedulers.scheduling_utils import CVSSP_DDIM

    dtype = dtype or jnp.float32
    tok, tok2, n_vocab, n_pieces = tiny_tokenizers()
    unet = init_unet(
        dict(
            _class_name="AudioLDM2UNet2DConditionModel",
            sample_size=64,
            in_channels=8,
            out_channels=8,
            block_out_channels=[16, 32, 48, 64],
            layers_per_block=2,
            attention_head_dim=2,
            norm_num_groups=8,
            down_block_types=["DownBlock2D"] + ["CrossAttnDownBlock2D"] * 3,
            up_block_types=["CrossAttnUpBlock2D"] * 3 + ["UpBlock2D"],
            cross_attention_dim=[[None, 16, 24]] * 4,
            transformer_layers_per_block=1,
        ),
        seed=seed,
        dtype=dtype,
    )
    vae = init_vae(dict(TINY_VAE), seed=seed, dtype=dtype, with_encoder=False)
    vocoder = init_vocoder(dict(TINY_VOCODER), seed=seed, dtype=dtype)
    clap = init_clap(
        dict(
            model_type="clap",
            projection_dim=16,
            audio_config=TINY_CLAP_AUDIO,
            text_config=dict(
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
            ),
        ),
        seed=seed,
        dtype=dtype,
    )
    t5 = init_t5_encoder(
        dict(
            model_type="t5",
            vocab_size=n_pieces,
            d_model=24,
            d_ff=37,
            d_kv=8,
            num_heads=3,
            num_layers=2,
            feed_forward_proj="gated-gelu",
        ),
        seed=seed,
        dtype=dtype,
    )
    gpt2 = init_gpt2(
        dict(model_type="gpt2", n_embd=16, n_head=2, n_layer=2, vocab_size=64, n_positions=128, max_new_tokens=8),
        seed=seed,
        dtype=dtype,
    )
    proj = init_projection_model(
        dict(_class_name="AudioLDM2ProjectionModel", text_encoder_dim=16, text_encoder_1_dim=24, langauge_model_dim=16),
        seed=seed,
        dtype=dtype,
    )
    return AudioLDM2Pipeline(
        tokenizer=tok,
        tokenizer_2=tok2,
        text_encoder=clap,
        text_encoder_2=t5,
        projection_model=proj,
        language_model=gpt2,
        unet=unet,
        vae=vae,
        vocoder=vocoder,
        scheduler_config=dict(CVSSP_DDIM),
        scheduler=scheduler,
        dtype=dtype,
        feature_extractor=ClapFeatureExtractor.from_dict(TINY_CLAP_FEATURES),
    )
