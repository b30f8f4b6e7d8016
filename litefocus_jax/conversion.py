"""Convert a diffusers AudioLDM2 snapshot (or one component folder) to the litefocus_jax format.

The output mirrors the snapshot's layout: each implemented component becomes `<name>/config.json` +
`<name>/litefocus_jax_model.safetensors` (flat NNX paths, already in JAX layout, metadata naming the
source and converter version); tokenizer, scheduler and feature-extractor folders and model_index.json
are copied unchanged. Every component is validated strictly before anything is written, and the output
folder appears atomically: a failure leaves no output behind.

    python convert/convert_audioldm2.py SRC DST [--dtype bfloat16] [--overwrite]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from litefocus_jax.loading import convert_unet_state
from litefocus_jax.models.autoencoder_kl import convert_vae_state
from litefocus_jax.models.hifigan import convert_vocoder_state
from litefocus_jax.models.modeling_clap import convert_clap_text_state
from litefocus_jax.models.modeling_gpt2 import convert_gpt2_state
from litefocus_jax.models.modeling_t5 import convert_t5_encoder_state
from litefocus_jax.models.projection_audioldm2 import convert_projection_model_state
from litefocus_jax.weights import ConversionError, atomic_output_dir, find_weights, read_config, read_weights, save_converted

# component folder -> (diffusers `_class_name`s or transformers `model_type`s it holds, converter:
# (tensors, config) -> flat NNX numpy)
CONVERTERS: dict[str, tuple[tuple[str, ...], Callable]] = {
    "unet": (("AudioLDM2UNet2DConditionModel",), convert_unet_state),
    "vae": (("AutoencoderKL",), convert_vae_state),
    "vocoder": (("speecht5_hifigan",), convert_vocoder_state),
    "text_encoder": (("clap",), convert_clap_text_state),
    "text_encoder_2": (("t5",), convert_t5_encoder_state),
    "projection_model": (("AudioLDM2ProjectionModel",), convert_projection_model_state),
    "language_model": (("gpt2",), convert_gpt2_state),
}
COPIED = ("tokenizer", "tokenizer_2", "scheduler", "feature_extractor")
DTYPES = ("float32", "bfloat16")


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="convert_audioldm2",
        description="Convert a diffusers AudioLDM2 snapshot (or one component folder, e.g. unet/) to litefocus_jax safetensors.",
    )
    parser.add_argument("src", help="diffusers snapshot folder (with model_index.json) or a component folder (with config.json)")
    parser.add_argument("dst", help="output folder (must not exist unless --overwrite)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="stored parameter dtype (default float32)")
    parser.add_argument("--overwrite", action="store_true", help="replace dst if it exists (atomically)")
    args = parser.parse_args(argv)
    try:
        convert(args.src, args.dst, dtype=args.dtype, overwrite=args.overwrite)
    except (ConversionError, ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
