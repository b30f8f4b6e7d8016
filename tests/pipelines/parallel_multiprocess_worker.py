"""One process of tests/pipelines/test_parallel_multiprocess.py: sequence parallelism on a mesh across processes.

Launched twice by the test with JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID and 2 fake CPU devices
each. Both processes build the same tiny random-weight pipeline (fixed seed) and call it with the same arguments on
global ("data", "seq") meshes over all 4 devices: dense on data=1,seq=4 (the time axis crosses the processes),
LiteFocus "official" on data=2,seq=2 (one guidance half per process), LiteFocus "exact" on data=1,seq=4. Then each
computes the one-device reference of half the runs (mesh=None, no collectives), so the two share that work, and
writes process-<k>.npz (audio and latents) and process-<k>.json (what else it saw).

    python tests/pipelines/parallel_multiprocess_worker.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

PROMPT, SECONDS, STEPS = "a dog barks", 1.28, 2  # 1.28 s = 32 latent frames: a multiple of 8 x seq for seq <= 4
# name: (mesh (data, seq), LiteFocusConfig arguments or None for dense); levels as in test_parallel.py, "exact" with
# ratio 0.25 so the mid block's 8 tokens still give 2 compensation tokens at this length
RUNS = {
    "dense": ((1, 4), None),
    "official": ((2, 2), dict(levels=(1,))),
    "exact": ((1, 4), dict(levels=(2, "mid"), duplicates="exact", ratio=0.25)),
}


def main(out: Path) -> None:
    from litefocus_jax.tools.batch import maybe_initialize_distributed

    assert maybe_initialize_distributed(), "launch with JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID"
    import jax
    import numpy as np

    jax.config.update("jax_default_matmul_precision", "highest")
    from litefocus_jax.litefocus.plan import LiteFocusConfig
    from litefocus_jax.pipelines.audioldm2.parallel import make_mesh
    from litefocus_jax.pipelines.audioldm2.tiny import build_tiny_pipeline

    me, count = jax.process_index(), jax.process_count()
    report = dict(process=me, processes=count, devices=jax.device_count(), local_devices=jax.local_device_count())
    pipe = build_tiny_pipeline()
    run = dict(audio_length_in_s=SECONDS, num_inference_steps=STEPS, output_latents=True, seed=3)
    arrays, seconds = {}, {}
    for name, (shape, lf) in RUNS.items():
        mesh = make_mesh(*shape)  # default devices: all processes' (data * seq > the 2 local ones)
        assert mesh.is_multi_process and mesh.devices.size == 4, mesh
        start = time.perf_counter()
        got = pipe(PROMPT, litefocus=lf and LiteFocusConfig(**lf), mesh=mesh, **run)
        seconds[name] = time.perf_counter() - start
        print(f"process {me}: {name} on mesh {shape}: {seconds[name]:.1f} s", file=sys.stderr, flush=True)
        arrays[f"{name}_audio"], arrays[f"{name}_latents"] = got.audios, got.latents
    for name in list(RUNS)[me::count]:  # the one-device reference, half the runs each
        lf = RUNS[name][1]
        start = time.perf_counter()
        ref = pipe(PROMPT, litefocus=lf and LiteFocusConfig(**lf), **run)
        seconds[f"reference_{name}"] = time.perf_counter() - start
        arrays[f"reference_{name}_audio"], arrays[f"reference_{name}_latents"] = ref.audios, ref.latents
    try:  # different arguments on different processes fail on every process, before any work
        pipe(PROMPT, seed=me, mesh=make_mesh(1, 4), audio_length_in_s=SECONDS, num_inference_steps=STEPS)
    except ValueError as e:
        report["mismatch_error"] = str(e)
    try:
        make_mesh(1, 3)
    except ValueError as e:
        report["mesh_error"] = str(e)
    report["seconds"] = seconds
    np.savez(out / f"process-{me}.npz", **arrays)
    (out / f"process-{me}.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
