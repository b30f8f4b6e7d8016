"""`litefocus-jax convert SRC DST` (also `litefocus-jax-convert`): a diffusers AudioLDM2 snapshot (text-to-audio or
speech, safetensors or pickled *.bin weights) to litefocus_jax safetensors."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from litefocus_jax.pipelines.audioldm2.conversion import DTYPES, convert
from litefocus_jax.weights.state import ConversionError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="convert_audioldm2",
        description="Convert a diffusers AudioLDM2 snapshot (or one component folder, e.g. unet/) to litefocus_jax safetensors. "
        "Speech snapshots (anhnct/audioldm2_gigaspeech, _ljspeech) ship pickled *.bin weights: converting is the only "
        "step that reads them (torch.load(weights_only=True), so it needs torch); the output loads without torch.",
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
