"""Convert diffusers AudioLDM2 weights to litefocus_jax: `python convert/convert_audioldm2.py SRC DST [--dtype bfloat16]`.

See `litefocus_jax.pipelines.audioldm2.conversion` for what is written; numpy only, torch is not needed.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without installing

from litefocus_jax.commands.convert import main

if __name__ == "__main__":
    sys.exit(main())
