"""Where a benchmark ran: machine, JAX device, package versions and git revision."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import re
import socket
import subprocess
import sys
from pathlib import Path

from litefocus_jax.tools.torch_reference import INSTALL_HINT

CHECKOUT = Path(__file__).resolve().parents[3]  # the folder that holds the litefocus_jax package

TORCH_PACKAGES = ("torch", "diffusers", "transformers")
VERSION_PACKAGES = ("jax", "jaxlib", "flax", "numpy", "torch", "diffusers", "transformers", "litefocus-jax")


def versions() -> dict:
    """Package versions; litefocus-jax from its metadata, else (a checkout on PYTHONPATH) from the package itself,
    which Python imported before this submodule (read from sys.modules: no import of the package root in here)."""
    out = {"python": platform.python_version()}
    for name in VERSION_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["litefocus-jax"] = out["litefocus-jax"] or getattr(sys.modules.get("litefocus_jax"), "__version__", None)
    out.update(_git_revision(CHECKOUT))
    return out


def _git_revision(root: Path) -> dict:
    """The checkout's commit and whether it had uncommitted changes (None outside a git checkout)."""

    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)

    try:
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return dict(git_commit=None, git_dirty=None)
    if head.returncode:
        return dict(git_commit=None, git_dirty=None)
    return dict(git_commit=head.stdout.strip(), git_dirty=bool(dirty.stdout.strip()))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None


def cpu_threads() -> int:
    """CPUs this process may run on: XLA's CPU thread pool size, and what torch gets."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_info() -> dict:
    return dict(
        hostname=socket.gethostname(),
        platform=platform.platform(),
        cpu_model=_cpu_model(),
        cpu_count=os.cpu_count(),
        cpu_affinity=cpu_threads(),
        ram_bytes=ram_bytes(),
    )


def device_info() -> dict:
    """The JAX backend and its first device (initialises the backend: call it in a worker, not the parent)."""
    import jax

    dev = jax.devices()[0]
    stats = dev.memory_stats() or {}
    return dict(
        backend=jax.default_backend(),
        device_kind=dev.device_kind,
        device_count=jax.device_count(),
        memory_bytes=stats.get("bytes_limit"),
    )


def torch_available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in TORCH_PACKAGES)


def torch_peers_config(no_torch: bool) -> dict:
    """{"enabled", "reason"}: whether the PyTorch peers run, and why not (--no-torch, or what to install)."""
    reason = (
        "--no-torch" if no_torch else None if torch_available() else f"torch/diffusers/transformers not installed: {INSTALL_HINT}"
    )
    return dict(enabled=reason is None, reason=reason)


def device_tag(machine: dict, device: dict) -> str:
    """A folder name for the results: cpu-<model>-<n>c, or <backend>-<device kind>."""
    if device["backend"] == "cpu":
        name = f"cpu-{machine['cpu_model']}-{machine['cpu_affinity']}c"
    else:
        name = f"{device['backend']}-{device['device_kind']}"
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-")


def probe() -> dict:
    return dict(status="ok", device=device_info(), versions=versions())


# The GPU run also records these (the JAX CUDA plugin and NVIDIA libraries, and what benchmarks/gpu/run.sh brings).
ACCELERATOR_PACKAGES = (
    "jax-cuda13-plugin",
    "jax-cuda13-pjrt",
    "jax-cuda12-plugin",
    "jax-cuda12-pjrt",
    "nvidia-cudnn-cu13",
    "nvidia-cudnn-cu12",
    "nvidia-cuda-runtime",
    "nvidia-cublas",
    "soundfile",
    "safetensors",
)
NVIDIA_SMI_FIELDS = ("name", "driver_version", "memory.total", "compute_cap")


def _run_text(command: list[str], timeout: float = 30) -> tuple[str | None, str | None]:
    """-> (stdout, None), or (None, why it could not run)."""
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"{type(e).__name__}: {e}"
    if proc.returncode:
        return None, f"exit status {proc.returncode}: {proc.stderr.strip()[-500:]}"
    return proc.stdout, None


def nvidia_smi() -> dict:
    """The GPUs as nvidia-smi lists them ({"gpus": [{field: value}], "text": full output}), or why not."""
    query = ["nvidia-smi", f"--query-gpu={','.join(NVIDIA_SMI_FIELDS)}", "--format=csv,noheader,nounits"]
    rows, reason = _run_text(query)
    if rows is None:
        return dict(gpus=None, text=None, reason=reason)
    gpus = [dict(zip(NVIDIA_SMI_FIELDS, (c.strip() for c in line.split(",")))) for line in rows.splitlines() if line.strip()]
    text, _ = _run_text(["nvidia-smi"])
    return dict(gpus=gpus, text=text, reason=None)


def cuda_versions() -> dict | None:
    """CUDA library versions as the JAX CUDA plugin reports them (runtime, cuDNN, cuBLAS, ...); None without one."""
    from jax._src import lib  # private, but the only place that reports the cuDNN that JAX loaded

    module = getattr(lib, "cuda_versions", None)
    if module is None:
        return None
    out = {}
    for name in sorted(dir(module)):
        if name.endswith("_get_version"):
            try:
                out[name.removesuffix("_get_version")] = getattr(module, name)()
            except Exception as e:  # noqa: BLE001 - a library the plugin cannot load is a finding, not a crash
                out[name.removesuffix("_get_version")] = f"{type(e).__name__}: {e}"
    return out


def torch_info() -> dict:
    """torch's own CUDA and cuDNN versions and device (imports torch: call it after the JAX work that must come first)."""
    try:
        import torch
    except ImportError as e:
        return dict(available=False, reason=str(e))
    cuda = torch.cuda.is_available()
    return dict(
        available=True,
        version=torch.__version__,
        cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        cuda_available=cuda,
        device_name=torch.cuda.get_device_name(0) if cuda else None,
    )


def accelerator_info() -> dict:
    """Everything the GPU run records about the accelerator: nvidia-smi, CUDA/cuDNN versions as JAX sees them,
    `jax.print_environment_info()`, and the versions of the accelerator packages."""
    import jax

    packages = {}
    for name in ACCELERATOR_PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    return dict(
        nvidia_smi=nvidia_smi(),
        cuda=cuda_versions(),
        devices=[str(d) for d in jax.devices()],
        jax_environment=jax.print_environment_info(return_string=True),
        packages=packages,
    )
