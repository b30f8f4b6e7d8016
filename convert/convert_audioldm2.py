"""Convert diffusers AudioLDM2 weights to litefocus_jax: `python convert/convert_audioldm2.py SRC DST [--dtype bfloat16]`.

See `litefocus_jax.conversion` for what is written; numpy only, torch is not needed.
"""

import sys

from litefocus_jax.conversion import main

if __name__ == "__main__":
    sys.exit(main())
