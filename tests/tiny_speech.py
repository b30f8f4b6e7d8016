"""A tiny random-weight diffusers AudioLDM2 *speech* pipeline (AUDIOLDM2_TTS.md §6), saved with save_pretrained.

The text-to-audio tiny pipeline (tiny_pipeline.py) with the TTS deltas: a VitsModel as text_encoder_2, a
VitsTokenizer over the original 183-symbol phoneme table (pre-phonemised input: phonemize=False, so no espeak),
a projection with the learned positional embedding, and the tts UNet geometry (cross-attention [None, 16]).
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch
from diffusers import AudioLDM2Pipeline, AudioLDM2ProjectionModel
from tiny_models import build_tiny_unet, perturb
from tiny_pipeline import build_tiny_pipeline
from transformers import VitsConfig, VitsModel, VitsTokenizer

# The original AudioLDM2 TTS phoneme table (AUDIOLDM2_TTS.md §4): pad, punctuation, letters, VITS IPA, specials.
_IPA = "ɑɐɒæɓʙβɔɕçɗɖðʤəɘɚɛɜɝɞɟʄɡɠɢʛɦɧħɥʜɨɪʝɭɬɫɮʟɱɯɰŋɳɲɴøɵɸθœɶʘɹɺɾɻʀʁɽʂʃʈʧʉʊʋⱱʌɣɤʍχʎʏʑʐʒʔʡʕʢǀǁǂǃˈˌːˑʼʴʰʱʲʷˠˤ˞↓↑→↗↘'̩'ᵻ"
SYMBOLS = ["_"] + list(';:,.!?¡¿—…"«»“” ') + list(string.ascii_uppercase + string.ascii_lowercase) + list(_IPA) + list("♪☎☒☝⚠")
MAX_LENGTH = 32  # tokenizer model_max_length == projection max_seq_length
TINY_VITS = dict(
    vocab_size=len(SYMBOLS),
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    window_size=4,
    ffn_dim=24,
    ffn_kernel_size=3,
    flow_size=8,
    spectrogram_bins=9,
    upsample_initial_channel=8,
    upsample_rates=[2, 2],
    upsample_kernel_sizes=[4, 4],
    resblock_kernel_sizes=[3],
    resblock_dilation_sizes=[[1, 3, 5]],
    duration_predictor_filter_channels=8,
    duration_predictor_num_flows=1,
    prior_encoder_num_flows=1,
    prior_encoder_num_wavenet_layers=1,
    posterior_encoder_num_wavenet_layers=1,
    depth_separable_num_layers=1,
    pad_token_id=0,
)
# "wish you have a good day" phonemised by espeak-ng (AUDIOLDM2_TTS.md §4) and another short phrase
TRANSCRIPTIONS = ["wˈɪʃ juː hæv ɐ ɡˈʊd dˈeɪ", "həlˈoʊ maɪ nˈeɪm ɪz dʒˈɑːn"]


def build_vits_tokenizer(folder: Path, max_length: int = MAX_LENGTH, phonemize: bool = False) -> VitsTokenizer:
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {}
    for i, s in enumerate(SYMBOLS):
        vocab[s] = i  # "'" occurs twice: the later id wins, as in the original table's dict
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    return VitsTokenizer(
        vocab_file=str(folder / "vocab.json"),
        pad_token="_",
        unk_token="_",
        add_blank=False,
        normalize=True,
        phonemize=phonemize,
        is_uroman=False,
        model_max_length=max_length,
    )


def build_tiny_vits(seed: int = 0) -> VitsModel:
    torch.manual_seed(seed)
    model = VitsModel(VitsConfig(**TINY_VITS)).eval()
    # norms start at identity, biases at zero: perturb so every text-encoder parameter matters
    perturb(model.text_encoder, 0.1)
    return model


def build_tiny_speech_pipeline(workdir: Path, seed: int = 0) -> AudioLDM2Pipeline:
    base = build_tiny_pipeline(seed)
    torch.manual_seed(seed)
    proj = AudioLDM2ProjectionModel(
        text_encoder_dim=16,
        text_encoder_1_dim=16,
        langauge_model_dim=16,
        use_learned_position_embedding=True,
        max_seq_length=MAX_LENGTH,
    ).eval()
    with torch.no_grad():  # zeros / ones at init would hide bugs
        for p in (proj.learnable_positional_embedding, proj.sos_embed, proj.eos_embed, proj.sos_embed_1, proj.eos_embed_1):
            p.normal_()
    components = dict(base.components)
    components.update(
        unet=build_tiny_unet("tts", seed),
        text_encoder_2=build_tiny_vits(seed),
        tokenizer_2=build_vits_tokenizer(Path(workdir) / "vits_vocab"),
        projection_model=proj,
    )
    pipe = AudioLDM2Pipeline(**components)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_speech_pipeline(folder: Path, seed: int = 0) -> tuple[AudioLDM2Pipeline, Path]:
    """(the in-memory diffusers pipeline, its save_pretrained folder)."""
    folder = Path(folder)
    pipe = build_tiny_speech_pipeline(folder.parent / f"{folder.name}-build", seed)
    pipe.save_pretrained(folder)
    return pipe, folder
