#!/usr/bin/env python3
"""Run the benchmark suite from a checkout, installed or not: the same as `litefocus-jax bench`.

    python benchmarks/run_benchmarks.py --help
    python benchmarks/run_benchmarks.py --quick
    python benchmarks/run_benchmarks.py --scopes attention unet --seconds 10.24 20 40 80 --check-targets

See benchmarks/README.md for the options, the outputs and what each column means.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's litefocus_jax wins

from litefocus_jax.tools.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
