"""One clip across devices: a ("data", "seq") mesh, its length rule, and the sharded denoise/decode programs.

"seq" splits the latent time axis T of every (B, T, F, C) activation into contiguous blocks; "data" splits the
batch (the UNet's, doubled by classifier-free guidance, so data = 2 puts the two guidance halves on different
devices). Convolutions, norms, VAE and vocoder are partitioned by XLA; self-attention runs behind one `shard_map`
(`kernels/sequence_parallel.py`). See ../shared/reference/SCALE.md §2-3 for the design and its measurements.

Length rule: T must be a multiple of 2^(UNet levels - 1) x seq (every level's T divides into seq equal blocks, and
XLA's plan stays fixed); other lengths fail before encoding with the nearest valid lengths in the message.

Across processes (`jax.distributed`, e.g. 2 processes x 2 devices, a data=1,seq=4 mesh over `jax.devices()`): every
process calls the pipeline with the same arguments (checked: `same_everywhere`, one small collective) and gets the
same whole audio back. Weights are replicated from each process's own copy (`replicate`, which checks a fingerprint:
they must be bitwise equal, e.g. loaded from one snapshot); per-call inputs (noise, text states, LiteFocus indices)
are process 0's, broadcast (`inputs`), so a text encoder that rounds differently on another host cannot split the
processes; outputs are gathered to every process (`to_host`); host decisions (the CLI's pending items, its next
batch) are process 0's (`from_process_0`). CPU collectives across processes use gloo (jax 0.10.2's
default `jax_cpu_collectives_implementation`).
"""

from __future__ import annotations

import functools
import hashlib
import re

import numpy as np

from litefocus_jax.kernels.sequence_parallel import DATA, SEQ, sequence_parallel, token_spec

_SPEC = re.compile(r"^\s*(\w+)\s*=\s*(\d+)\s*$")


def parse_mesh_spec(text: str) -> tuple[int, int]:
    """ "data=D,seq=S" (either order; a missing axis is 1) -> (D, S). Raises ValueError saying what is wrong."""
    sizes = {}
    for part in str(text).split(","):
        match = _SPEC.match(part)
        if not match or match.group(1) not in (DATA, SEQ) or match.group(1) in sizes:
            raise ValueError(
                f"mesh {text!r}: write it as data=D,seq=S with positive integers, e.g. data=1,seq=4 (one clip on 4 "
                "devices) or data=2,seq=4 (the two guidance halves on 2 x 4 devices); each axis at most once."
            )
        sizes[match.group(1)] = int(match.group(2))
    if any(v < 1 for v in sizes.values()):
        raise ValueError(f"mesh {text!r}: axis sizes must be >= 1.")
    return sizes.get(DATA, 1), sizes.get(SEQ, 1)


def make_mesh(data: int, seq: int, devices=None):
    """A Mesh with axes ("data", "seq") over the first data * seq of `devices`.

    Default devices: this process's (`jax.local_devices()`) when data * seq fits on them; in a multi-process run
    (`jax.distributed`) asking for more, every process's (`jax.devices()`), and then data * seq must equal the
    global device count, since every process takes part in each call. `jax.devices()` is process-major, so a "seq"
    group stays within a process where it fits (data=2,seq=2 on 2 processes x 2 devices: one guidance half per
    process) and crosses processes only between neighbouring blocks (data=1,seq=4).
    Neighbouring devices share a "seq" group, so the time blocks' halo exchanges and K/V gathers stay close.
    """
    import jax
    from jax.sharding import Mesh

    if devices is None:
        devices = jax.local_devices()
        if jax.process_count() > 1 and data * seq > len(devices):
            devices = jax.devices()
            if data * seq != len(devices):
                raise ValueError(
                    f"mesh data={data},seq={seq} spans processes, so it must use all {len(devices)} devices of the "
                    f"{jax.process_count()} processes ({len(jax.local_devices())} each): choose data * seq = "
                    f"{len(devices)}, or data * seq <= {len(jax.local_devices())} for a mesh of this process's devices."
                )
    devices = list(devices)
    if data < 1 or seq < 1 or data * seq > len(devices):
        raise ValueError(
            f"mesh data={data},seq={seq} needs {data * seq} devices but {len(devices)} are available "
            f"({devices[0].platform if devices else 'none'}); choose data * seq <= {len(devices)}."
        )
    return Mesh(np.array(devices[: data * seq]).reshape(data, seq), (DATA, SEQ))


def time_multiple(unet_config, seq: int) -> int:
    """Latent frames T must be a multiple of this: 2^(downsamplings) * seq."""
    return 2 ** (len(unet_config.block_out_channels) - 1) * seq


def check_length(pipe, frames: int, mesh) -> None:
    """Raise ValueError before any work when `mesh` is not a ("data", "seq") mesh or `frames` breaks the length rule."""
    if mesh is None:
        return
    if tuple(mesh.axis_names) != (DATA, SEQ):
        raise ValueError(
            f"mesh has axes {tuple(mesh.axis_names)}; the pipeline takes a ('data', 'seq') mesh, e.g. "
            "litefocus_jax.pipelines.audioldm2.parallel.make_mesh(data=1, seq=4)."
        )
    multiple = time_multiple(pipe.unet_config, mesh.shape[SEQ])
    if frames % multiple and mesh.shape[SEQ] > 1:  # seq = 1 splits no time axis: any length
        frame_s = pipe.vae_scale_factor * pipe.vocoder_upsample_factor
        lower, upper = frames // multiple * multiple, -(-frames // multiple) * multiple
        valid = " or ".join(f"{n * frame_s:g} s ({n} frames)" for n in (lower, upper) if n)
        raise ValueError(
            f"sequence parallelism over seq={mesh.shape[SEQ]}: {frames} latent frames ({frames * frame_s:g} s) is not "
            f"a multiple of {multiple} (the UNet downsamples time by {multiple // mesh.shape[SEQ]}, times seq); the nearest "
            f"valid lengths are {valid}. Generate that length and trim, or use a smaller seq."
        )


def sequence_sharded(fn, mesh, pipe):
    """fn(params, latents (B, T, F, C), *rest), to be jitted: traced with self-attention split over "seq" and the
    latents constrained to P("data" when B divides, "seq"); XLA propagates that split through the scan."""
    import jax
    from jax.sharding import NamedSharding

    @functools.wraps(fn)
    def sharded(params, latents, *rest):
        check_length(pipe, latents.shape[1], mesh)
        with sequence_parallel(mesh):
            split = NamedSharding(mesh, token_spec(mesh, latents.shape[0]))
            return fn(params, jax.lax.with_sharding_constraint(latents, split), *rest)

    return sharded


def params(pipe, mesh, *names) -> dict:
    """{name: params} of the pipeline's components, replicated over `mesh` (cached) when one is given."""
    return pipe._params(*names) if mesh is None else pipe._replicated(mesh, *names)


def length_problem(pipe, seconds: float, mesh) -> str | None:
    """Why `mesh` cannot generate `seconds` of audio (the length rule), or None when it can."""
    try:
        check_length(pipe, pipe.latent_frames(seconds)[0], mesh)
    except ValueError as e:
        return str(e)
    return None


# ------------------------------------------------------------------------------------------ a mesh across processes


def spans_processes(mesh) -> bool:
    """Whether `mesh` holds devices of other processes (then every process must make each call on it)."""
    return mesh is not None and bool(mesh.is_multi_process)


def _fingerprint(tree) -> bytes:
    import jax

    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        a = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{a.shape}{a.dtype}".encode())
        digest.update(a.tobytes())
    return digest.digest()


def same_everywhere(mesh, what: str, value) -> None:
    """On a mesh across processes, raise ValueError on every process unless every process holds an equal `value`
    (a pytree of arrays and Python values, compared by a sha256 of its bytes and repr; one small all-gather)."""
    if not spans_processes(mesh):
        return
    import jax
    from jax.experimental import multihost_utils

    leaves, treedef = jax.tree.flatten(value)
    arrays = [x for x in leaves if hasattr(x, "shape")]
    digest = hashlib.sha256(repr((treedef, [x for x in leaves if not hasattr(x, "shape")])).encode())
    digest.update(_fingerprint(arrays))
    mine = np.frombuffer(digest.digest(), np.uint8)
    every = np.asarray(multihost_utils.process_allgather(mine)).reshape(jax.process_count(), -1)
    differ = [p for p in range(len(every)) if not np.array_equal(every[p], every[0])]
    if differ:
        raise ValueError(
            f"a mesh across {jax.process_count()} processes needs the same {what} on every process, but process(es) "
            f"{differ} differ from process 0: call the pipeline with identical arguments (and weights) everywhere."
        )


def _replicated_arrays(mesh, tree):
    """Host values -> arrays replicated over `mesh`, each process filling its own devices (no transfer, no check)."""
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    rep = NamedSharding(mesh, P())

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, rep, lambda index: x[index])

    return jax.tree.map(put, tree)


def replicate(mesh, tree):
    """`tree` (weights) replicated over `mesh`. On a mesh across processes each process places its own copy, after
    `same_everywhere` checked that all copies are bitwise equal (`jax.device_put` would all-gather every leaf)."""
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    if not spans_processes(mesh):
        return jax.device_put(tree, NamedSharding(mesh, P()))
    host = jax.tree.map(np.asarray, tree)
    same_everywhere(mesh, "weights", host)
    return _replicated_arrays(mesh, host)


def inputs(mesh, tree):
    """Per-call inputs (noise, text states, guidance, LiteFocus indices, keys): unchanged unless `mesh` spans
    processes; then process 0's values, broadcast and replicated over `mesh` (weights and already-global arrays are
    left as they are)."""
    if not spans_processes(mesh):
        return tree
    import jax
    from jax.experimental import multihost_utils

    leaves, treedef = jax.tree.flatten(tree)
    local = [i for i, x in enumerate(leaves) if not (isinstance(x, jax.Array) and not x.is_fully_addressable)]
    host = multihost_utils.broadcast_one_to_all([np.asarray(leaves[i]) for i in local])
    for i, x in zip(local, _replicated_arrays(mesh, host)):
        leaves[i] = x
    return jax.tree.unflatten(treedef, leaves)


def to_host(x) -> np.ndarray:
    """A result as one NumPy array on every process (gathered when it lives on other processes' devices too)."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def from_process_0(mesh, decide):
    """`decide()` on process 0 only, its JSON-able result (or its ValueError, raised) on every process: how processes
    sharing a mesh agree on host decisions (which items are pending, which batch is next). Without a mesh across
    processes just `decide()`."""
    if not spans_processes(mesh):
        return decide()
    import json

    import jax
    from jax.experimental import multihost_utils

    blob = b""
    if jax.process_index() == 0:
        try:
            blob = json.dumps({"value": decide()}).encode()
        except ValueError as e:
            blob = json.dumps({"error": str(e)}).encode()
    size = int(multihost_utils.broadcast_one_to_all(np.asarray(len(blob), np.int64)))
    data = multihost_utils.broadcast_one_to_all(np.frombuffer(blob.ljust(size, b" "), np.uint8))
    answer = json.loads(np.asarray(data, np.uint8).tobytes())
    if "error" in answer:
        raise ValueError(answer["error"])
    return answer["value"]
