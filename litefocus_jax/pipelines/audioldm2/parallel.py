"""One clip across devices: a ("data", "seq") mesh, its length rule, and the sharded denoise/decode programs.

"seq" splits the latent time axis T of every (B, T, F, C) activation into contiguous blocks; "data" splits the
batch (the UNet's, doubled by classifier-free guidance, so data = 2 puts the two guidance halves on different
devices). Convolutions, norms, VAE and vocoder are partitioned by XLA; self-attention runs behind one `shard_map`
(`kernels/sequence_parallel.py`). See ../shared/reference/SCALE.md §2-3 for the design and its measurements.

Length rule: T must be a multiple of 2^(UNet levels - 1) x seq (every level's T divides into seq equal blocks, and
XLA's plan stays fixed); other lengths fail before encoding with the nearest valid lengths in the message.
"""

from __future__ import annotations

import functools
import re

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
    """A Mesh with axes ("data", "seq") over the first data * seq of `devices` (default: this process's devices).

    Neighbouring devices share a "seq" group, so the time blocks' halo exchanges and K/V gathers stay close.
    """
    import jax
    import numpy as np
    from jax.sharding import Mesh

    devices = list(jax.local_devices() if devices is None else devices)
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
