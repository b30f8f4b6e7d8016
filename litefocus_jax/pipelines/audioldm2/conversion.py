"""A diffusers AudioLDM2 snapshot: find it (folder or Hub id), check its layout, read its components for the
pipeline, and convert it (or one component folder) to the litefocus_jax format.

The converted output mirrors the snapshot's layout: each implemented component becomes `<name>/config.json` +
`<name>/litefocus_jax_model.safetensors` (flat NNX paths, already in JAX layout, metadata naming the
source and converter version); tokenizer, scheduler and feature-extractor folders and model_index.json
are copied unchanged. Every component is validated strictly before anything is written, and the output
folder appears atomically: a failure leaves no output behind. `text_encoder/` holds the whole CLAP model (text
branch, audio branch, projections, logit scales); folders converted by 0.1 hold its text branch only and still load
for generation, but cannot re-rank (convert again).

Speech snapshots (`anhnct/audioldm2_gigaspeech`, `_ljspeech`; model_index.json names a `VitsModel` as
text_encoder_2) convert the same way; their `text_encoder_2/` keeps VITS's text encoder only. They ship pickled
`*.bin` weights: conversion reads those with `torch.load(weights_only=True)` (needs torch), loading never does.

    python convert/convert_audioldm2.py SRC DST [--dtype bfloat16] [--overwrite]
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from litefocus_jax.features.feature_extraction_clap import ClapFeatureExtractor
from litefocus_jax.models.autoencoder_kl import convert_vae_state, load_vae
from litefocus_jax.models.hifigan import convert_vocoder_state, load_vocoder
from litefocus_jax.models.modeling_clap_model import convert_clap_state, load_clap
from litefocus_jax.models.modeling_gpt2 import convert_gpt2_state, load_gpt2
from litefocus_jax.models.modeling_t5 import convert_t5_encoder_state, load_t5_encoder
from litefocus_jax.models.modeling_vits import convert_vits_text_encoder_state, load_vits_text_encoder
from litefocus_jax.models.projection_audioldm2 import convert_projection_model_state, load_projection_model
from litefocus_jax.models.unet_audioldm2 import convert_unet_state, load_unet
from litefocus_jax.utils.io import atomic_output_dir
from litefocus_jax.weights.loading import hub_snapshot, is_repo_id
from litefocus_jax.weights.state import (
    TORCH_BIN_WEIGHTS,
    ConversionError,
    find_weights,
    read_config,
    read_weights,
    save_converted,
)


def convert_text_encoder_2_state(source, config):
    """Flan-T5 encoder (text-to-audio) or the VITS text encoder (speech snapshots), by the config's model_type."""
    if config.get("model_type") == "vits":
        return convert_vits_text_encoder_state(source, config)
    return convert_t5_encoder_state(source, config)


# component folder -> (diffusers `_class_name`s or transformers `model_type`s it holds, converter:
# (tensors, config) -> flat NNX numpy)
CONVERTERS: dict[str, tuple[tuple[str, ...], Callable]] = {
    "unet": (("AudioLDM2UNet2DConditionModel",), convert_unet_state),
    "vae": (("AutoencoderKL",), convert_vae_state),
    "vocoder": (("speecht5_hifigan",), convert_vocoder_state),
    "text_encoder": (("clap",), convert_clap_state),  # the whole CLAP: text and audio branches (re-ranking)
    "text_encoder_2": (("t5", "vits"), convert_text_encoder_2_state),  # vits: speech snapshots (text encoder only)
    "projection_model": (("AudioLDM2ProjectionModel",), convert_projection_model_state),
    "language_model": (("gpt2",), convert_gpt2_state),
}
COPIED = ("tokenizer", "tokenizer_2", "scheduler", "feature_extractor")
DTYPES = ("float32", "bfloat16")
PIPELINE_CLASS = "AudioLDM2Pipeline"
MODEL_COMPONENTS = ("text_encoder", "text_encoder_2", "projection_model", "language_model", "unet", "vae", "vocoder")
REQUIRED = MODEL_COMPONENTS + ("tokenizer", "tokenizer_2", "scheduler")


# ---------------------------------------------------------------------------------------------- reading


def resolve_snapshot(path_or_repo_id: str | os.PathLike) -> Path:
    """A local snapshot folder, or a Hub repo id: downloaded when online, from the Hugging Face cache when offline
    (HF_HUB_OFFLINE=1); a clear error otherwise."""
    path = Path(path_or_repo_id)
    if path.is_dir():
        return path
    if not is_repo_id(path_or_repo_id):
        raise FileNotFoundError(f"{path} is not a snapshot folder (nor a Hub repo id like 'cvssp/audioldm2').")
    return hub_snapshot(str(path_or_repo_id))


def check_snapshot(root: Path) -> dict:
    """model_index.json of an AudioLDM2 snapshot (diffusers or converted) that has every required folder."""
    index_file = root / "model_index.json"
    if not index_file.is_file():
        raise FileNotFoundError(f"{root}: model_index.json is missing; pass the root folder of an AudioLDM2 snapshot.")
    index = json.loads(index_file.read_text())
    if index.get("_class_name") != PIPELINE_CLASS:
        raise ValueError(
            f"{root}: model_index.json names {index.get('_class_name')!r}, not {PIPELINE_CLASS!r}: this is another model."
        )
    missing = [name for name in REQUIRED if not (root / name).is_dir()]
    if missing:
        raise FileNotFoundError(f"{root}: the snapshot lacks component folder(s) {missing}; re-download or re-convert it.")
    return index


def is_speech_snapshot(index: dict) -> bool:
    """A speech (TTS) snapshot: model_index.json names a VitsModel as text_encoder_2 (anhnct/audioldm2_gigaspeech...)."""
    entry = index.get("text_encoder_2")
    return isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1] == "VitsModel"


def check_not_pickled(root: Path) -> None:
    """Loading reads safetensors only: name the components that ship only PyTorch pickles and how to convert them."""
    pickled = [
        name
        for name in MODEL_COMPONENTS
        if (root / name).is_dir()
        and any((root / name / f).is_file() for f in TORCH_BIN_WEIGHTS)
        and find_weights(root / name)[1].suffix == ".bin"
    ]
    if pickled:
        raise ValueError(
            f"{root}: {', '.join(pickled)} hold only PyTorch pickles (*.bin), which are never unpickled at load time. "
            f"Convert the snapshot once (needs torch): litefocus-jax convert {root} CONVERTED_DIR, then load CONVERTED_DIR."
        )


def read_snapshot(root: Path, *, dtype, attention_implementation: str | None = None) -> dict:
    """Every component of a checked snapshot, as `AudioLDM2Pipeline(**components)` keyword arguments: tokenizers,
    models (diffusers or converted weights), the scheduler config, and the CLAP feature extractor (cvssp's settings
    when the snapshot has no feature_extractor/)."""
    from transformers import AutoTokenizer

    check_not_pickled(root)
    speech = is_speech_snapshot(json.loads((root / "model_index.json").read_text()))
    load_text_encoder_2 = load_vits_text_encoder if speech else load_t5_encoder
    sched_file = root / "scheduler" / "scheduler_config.json"
    if not sched_file.is_file():
        raise FileNotFoundError(f"{sched_file} is missing.")
    fe_dir = root / "feature_extractor"
    tokenizers = []
    for name in ("tokenizer", "tokenizer_2"):
        try:
            tokenizers.append(AutoTokenizer.from_pretrained(root / name))
        except Exception as e:
            raise FileNotFoundError(f"{root / name}: cannot load the tokenizer ({type(e).__name__}: {e}).") from e
    return dict(
        tokenizer=tokenizers[0],
        tokenizer_2=tokenizers[1],
        feature_extractor=ClapFeatureExtractor.from_pretrained(fe_dir) if fe_dir.is_dir() else None,
        text_encoder=load_clap(root / "text_encoder", dtype=dtype),
        text_encoder_2=load_text_encoder_2(root / "text_encoder_2", dtype=dtype),
        projection_model=load_projection_model(root / "projection_model", dtype=dtype),
        language_model=load_gpt2(root / "language_model", dtype=dtype),
        unet=load_unet(root / "unet", dtype=dtype, attention_implementation=attention_implementation),
        vae=load_vae(root / "vae", dtype=dtype),
        vocoder=load_vocoder(root / "vocoder", dtype=dtype),
        scheduler_config=json.loads(sched_file.read_text()),
    )


# ---------------------------------------------------------------------------------------------- converting


def _component_of(folder: Path, config: dict) -> str:
    kind = config.get("_class_name") or config.get("model_type")
    for name, (kinds, _) in CONVERTERS.items():
        if kind in kinds:
            return name
    raise ValueError(
        f"{folder}: config.json describes {kind!r}; this converter handles {sorted(c for cs, _ in CONVERTERS.values() for c in cs)}."
    )


def _convert_folder(folder: Path, name: str | None) -> tuple[str, dict, dict]:
    """Validate and convert one component folder; `name` is the snapshot slot it fills (None: any)."""
    config = read_config(folder)
    component = _component_of(folder, config)
    kind = config.get("_class_name") or config.get("model_type")
    if name is not None and component != name:
        raise ValueError(f"{folder}: config.json describes {kind!r} (a {component} component), not a {name}.")
    if find_weights(folder)[0] == "converted":
        raise ValueError(f"{folder} is already converted; load it directly.")
    try:
        flat = CONVERTERS[component][1](read_weights(find_weights(folder)[1]), config)
    except (ConversionError, ValueError) as e:
        raise type(e)(f"{folder} ({kind!r} -> {component}): {e}") from None
    return component, flat, config


def convert(src: str | Path, dst: str | Path, *, dtype: str = "float32", overwrite: bool = False, log=print) -> list[str]:
    """Convert `src` (snapshot root with model_index.json, or one component folder) into `dst`.

    Returns the converted component names. Raises before writing anything if any component fails.
    """
    src, dst = Path(src), Path(dst)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}.")
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a folder; pass a diffusers AudioLDM2 snapshot or one of its component folders.")
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} already exists; choose another destination or pass --overwrite.")
    if dst.resolve() == src.resolve() or dst.resolve() in src.resolve().parents:
        raise ValueError(f"{dst} is {src} or contains it: converting there would delete the source; choose another folder.")
    if (src / "model_index.json").is_file():
        jobs = {name: src / name for name in CONVERTERS if (src / name).is_dir()}
        if not jobs:
            raise FileNotFoundError(f"{src}: a snapshot without any of the components {sorted(CONVERTERS)}.")
    elif (src / "config.json").is_file():
        jobs = {None: src}
    else:
        raise FileNotFoundError(f"{src}: neither model_index.json (a snapshot) nor config.json (a component folder).")

    results = {}
    for name, folder in jobs.items():  # everything is validated before the first byte is written
        results[name] = _convert_folder(folder, name)

    def save(target: Path, name):
        component, flat, config = results[name]
        save_converted(target, flat, config, component=component, source=str(jobs[name]), dtype=dtype)
        log(f"converted {component}: {len(flat)} tensors -> {dst / (name or '')} ({dtype})")

    def write(out: Path):
        if None in results:
            return save(out, None)
        out.mkdir(parents=True)
        for name in results:
            save(out / name, name)
        shutil.copy2(src / "model_index.json", out / "model_index.json")
        for extra in COPIED:
            if (src / extra).is_dir():
                shutil.copytree(src / extra, out / extra)
        skipped = sorted(p.name for p in src.iterdir() if p.is_dir() and p.name not in CONVERTERS and p.name not in COPIED)
        if skipped:
            log(f"not converted (not implemented in this version): {', '.join(skipped)}")

    atomic_output_dir(dst, write, overwrite=overwrite)
    return [component for component, _, _ in results.values()]
