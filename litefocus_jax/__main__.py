"""`python -m litefocus_jax ...` is the `litefocus-jax` command."""

import sys

from litefocus_jax.commands.cli import main

sys.exit(main())
