import sys

from litefocus_jax.tools.bench.cli import main

sys.exit(main())
