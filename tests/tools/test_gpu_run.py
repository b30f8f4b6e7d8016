"""The GPU run (benchmarks/gpu/run.sh, litefocus_jax.tools.bench.gpu_run), exercised on CPU so that it cannot rot.

The dry run goes through run.sh (wheel install, cache environment, one process) at tiny shapes and must write the
same JSON and markdown as the GPU run, every job with a status. A run without budget must still record every job.
No timing is asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from litefocus_jax.tools.bench import gpu_run, smoke

ROOT = Path(__file__).resolve().parents[2]
STATUSES = set(gpu_run.STATUSES)


def _dummy_wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel, standing in for the ones carried to the GPU machine."""
    folder.mkdir()
    path = folder / "gpu_run_probe-0.1-py3-none-any.whl"
    info = "gpu_run_probe-0.1.dist-info"
    files = {
        "gpu_run_probe/__init__.py": "VALUE = 1\n",
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: gpu-run-probe\nVersion: 0.1\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
        z.writestr(f"{info}/RECORD", "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n")
    return path


def _run_sh(tmp: Path, *args: str, timeout: float = 900) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp / "results"
    env = dict(
        os.environ,
        PYTHON=sys.executable,
        GPU_RUN_WHEELS=str(tmp / "wheels"),
        GPU_RUN_SITE=str(tmp / "site"),
        JAX_COMPILATION_CACHE_DIR=str(tmp / "jax_cache"),
    )
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks/gpu/run.sh"), str(out), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, out


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_run")
    _dummy_wheel(tmp / "wheels")
    proc, out = _run_sh(tmp, "--dry-run")
    assert "installing 1 wheels" in proc.stderr  # run.sh found the carried wheel
    return json.loads((out / "gpu_run.json").read_text()), out, tmp


def test_dry_run_environment_and_setup(dry_run):
    report, out, tmp = dry_run
    assert report["schema"] == gpu_run.SCHEMA and report["complete"] is True and report["dry_run"] is True
    assert report["stopped"] is None and report["elapsed_s"] > 0
    assert {"device_name", "backend", "driver", "cuda_runtime", "cudnn", "jax", "jaxlib", "torch"} <= set(report["summary"])
    env = report["environment"]
    assert {"machine", "device", "versions", "accelerator", "torch", "compilation_cache_start", "compilation_cache_end"} <= set(
        env
    )
    assert {"nvidia_smi", "cuda", "devices", "jax_environment", "packages"} <= set(env["accelerator"])
    assert env["device"]["backend"] == report["config"]["backend"]
    cache = env["compilation_cache_end"]
    assert cache["env"] == {
        "JAX_COMPILATION_CACHE_DIR": str(tmp / "jax_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
        "XLA_FLAGS": os.environ.get("XLA_FLAGS"),
    }
    assert cache["files"] > 0  # the one process filled the persistent compilation cache
    assert (tmp / "site" / "gpu_run_probe" / "__init__.py").is_file()  # run.sh installed the carried wheel
    assert "## Correctness smoke" in (out / "gpu_run.log").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["gpu_run.json", "gpu_run.log", "gpu_run.md"]  # no temporaries


def test_dry_run_smoke_covers_every_kernel(dry_run):
    report, _, _ = dry_run
    by_id = {s["id"]: s for s in report["smoke"]}
    assert set(by_id) == {c["id"] for c in smoke.smoke_cases()}
    for s in report["smoke"]:
        assert s["status"] in STATUSES and ("reason" in s), s
        if s["status"] == "ok":
            assert s["agrees"] is True and s["rel_l2_err"] <= s["tolerance"], s
        else:
            assert s["reason"], s
    if report["config"]["backend"] == "cpu":  # what this platform offers ran and agreed; the GPU kernels did not
        for function in smoke.FUNCTIONS:
            for kernel in ("default", "xla", "chunked"):
                assert by_id[f"{function}:{kernel}"]["status"] == "ok"
            assert by_id[f"{function}:cudnn"]["status"] == "unsupported"


def test_dry_run_measures_every_job(dry_run):
    report, _, _ = dry_run
    cfg = report["config"]
    planned = [j.payload for j in gpu_run.plan_jobs(cfg) if j.kind == "measurement"]
    got = [(m["scope"], m["seconds"], m["scheduler"], m["steps"], m["id"], m["role"]) for m in report["measurements"]]
    assert sorted(got, key=str) == sorted(
        ((s["scope"], s["seconds"], s["scheduler"], s["steps"], s["id"], s["role"]) for s in planned), key=str
    )
    assert {m["scope"] for m in report["measurements"]} == {"unet", "e2e"}
    assert {m["impl"]["framework"] for m in report["measurements"]} == {"jax", "torch"}
    for m in report["measurements"]:
        assert m["status"] == "ok", m  # tiny shapes on CPU: everything fits the budget
        assert m["run_s"] > 0 and m["first_run_s"] > 0 and "device_memory_before" in m
        if m["impl"]["framework"] == "jax":
            assert m["compile_s"] > 0 and m["lower_s"] > 0
        if m["scope"] == "e2e":
            assert set(m["stage_run_s"]) == {"denoise", "decode"}
    assert any(a["expected"] == "differs" and a["rel_l2_diff"] > 0 for a in report["agreement"])
    memory = report["memory"]
    assert memory["fits"] is True and memory["seconds"] == cfg["memory_seconds"] and memory["xla"]["total"] > 0
    assert report["targets"] and all(t["status"] in ("PASS", "FAIL", "MISSING") for t in report["targets"])


def test_dry_run_markdown(dry_run):
    report, out, _ = dry_run
    md = (out / "gpu_run.md").read_text()
    for heading in ("# GPU run:", "## Correctness smoke", "### unet:", "### e2e:", "## Compile and run times", "## Peak memory"):
        assert heading in md, heading
    assert "| dense:xla | ok |" in md and "## Targets" in md


def test_a_run_without_budget_records_every_job_as_skipped(tmp_path):
    (tmp_path / "wheels").mkdir()
    _, out = _run_sh(tmp_path, "--dry-run", "--budget-s", "1", "--no-torch", timeout=300)
    report = json.loads((out / "gpu_run.json").read_text())
    jobs = report["smoke"] + report["measurements"]
    planned = [j for j in gpu_run.plan_jobs(report["config"]) if j.kind == "measurement"]
    assert len(report["smoke"]) == len(smoke.smoke_cases()) and len(report["measurements"]) == len(planned) > 0
    for job in jobs:
        assert job["status"] == "skipped" and "time budget spent" in job["reason"], job
    assert report["memory"]["fits"] is False and {t["status"] for t in report["targets"]} == {"MISSING"}


def test_time_box_interrupts_and_restores():
    with pytest.raises(gpu_run.MeasurementTimeout):
        with gpu_run.time_box(0.05):
            time.sleep(30)
    with gpu_run.time_box(30):
        pass  # an unexpired box is disarmed on exit: nothing fires later
    time.sleep(0.1)


def test_a_kernel_that_fails_the_smoke_is_replaced_by_the_default():
    smoke_results = [
        dict(id="dense:cudnn", implementation="cudnn", status="ok", agrees=True),
        dict(id="litefocus-exact:cudnn", implementation="cudnn", status="error", agrees=None),
        dict(id="dense:xla", implementation="xla", status="ok", agrees=True),
    ]
    reason = gpu_run.kernel_fallback("cudnn", smoke_results)
    assert "litefocus-exact:cudnn error" in reason and "dense:cudnn" not in reason
    assert gpu_run.kernel_fallback("xla", smoke_results) is None
    assert gpu_run.kernel_fallback(None, smoke_results) is None
