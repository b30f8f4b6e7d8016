"""The benchmark harness (`litefocus-jax bench`): JAX dense and LiteFocus against the PyTorch peers.

Modules, each importing only those listed before it:
  specs        model geometry, implementations under test, shared inputs, the measurement plan;
  timing       warm-up and timed runs, chained stages, RSS figures;
  jax_runners  attention / UNet / end-to-end measurements in JAX (compiled ahead of time, compile timed apart);
  torch_peers  the same in PyTorch/diffusers (SDPA, the released LiteFocus algorithm);
  environment  machine, device, versions;
  isolate      one measurement in this process or in a fresh worker process (timeouts, OOM as statuses);
  results      output agreement between implementations, best times and speedups;
  report       bench.json, bench.md, bench.png;
  targets      the issue's speed targets on one run's numbers;
  cli          the command line (`litefocus-jax bench`, `python -m litefocus_jax.tools.bench`);
  smoke, gpu_run  the one-process GPU run (benchmarks/gpu/run.sh) and its CPU dry run.
"""

from litefocus_jax.tools.bench.cli import main

__all__ = ["main"]
