"""Sequence parallelism across processes (litefocus_jax.pipelines.audioldm2.parallel): 2 real `jax.distributed`
processes on localhost, 2 fake CPU devices each, one global ("data", "seq") mesh over all 4 devices.

Each process runs tests/pipelines/parallel_multiprocess_worker.py: dense on data=1,seq=4 (the time axis crosses the
processes), LiteFocus "official" on data=2,seq=2 (one guidance half per process), LiteFocus "exact" on data=1,seq=4,
then the one-device reference of half the runs. Both processes must return the same audio, equal to one device within
1e-5 of the peak (fp32). Also here, in this process: the helpers' single-process behaviour is unchanged.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from litefocus_jax.pipelines.audioldm2 import parallel

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("parallel_multiprocess_worker.py")
MODES = ("dense", "official", "exact")
TIMEOUT_S = 600  # a bound on a hang, not a speed check: two processes compiling on 2 busy cores take minutes
ENV = {
    "JAX_PLATFORMS": "cpu",
    # the cheaper LLVM passes of test_parallel.py: compiling is most of this test; both sides of each comparison share them
    "XLA_FLAGS": "--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0 "
    "--xla_llvm_disable_expensive_passes=true",
    "LITEFOCUS_JAX_INIT_TIMEOUT": "60",
    "LITEFOCUS_JAX_HEARTBEAT_TIMEOUT": "10",
    "LITEFOCUS_JAX_SHUTDOWN_TIMEOUT": "30",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(
    command: list[str], out: Path, processes: int = 2, timeout: float = TIMEOUT_S, env: tuple[dict, ...] = ()
) -> list[tuple[int, str]]:
    """Run `command` as one `jax.distributed` launch of `processes` processes on a free localhost port, each in its
    own process group (killed with its children if it outlives `timeout`), process k with `env[k]` added to its
    environment; [(returncode, stderr)] per process."""
    base = {k: v for k, v in os.environ.items() if "_proxy" not in k.lower() and not k.startswith("JAX_")}
    address = f"127.0.0.1:{_free_port()}"
    procs, logs = [], []
    try:
        for k in range(processes):
            extra = env[k] if k < len(env) else {}
            full = dict(base, **ENV, JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(k))
            logs.append(out / f"stderr-{k}.txt")
            with open(logs[-1], "w") as f:
                procs.append(
                    subprocess.Popen(
                        command, cwd=ROOT, env={**full, **extra}, stdout=subprocess.DEVNULL, stderr=f, start_new_session=True
                    )
                )
        deadline = time.monotonic() + timeout
        codes = []
        for p in procs:
            try:
                codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                codes.append(None)
        return [(code, log.read_text()) for code, log in zip(codes, logs)]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("seq_processes")
    start = time.monotonic()
    for k, (code, err) in enumerate(launch([sys.executable, str(WORKER), str(out)], out)):
        assert code == 0, f"process {k} ended with {code} (None: still running after {TIMEOUT_S} s):\n{err[-4000:]}"
    wall = time.monotonic() - start
    reports = [json.loads((out / f"process-{k}.json").read_text()) for k in range(2)]
    arrays = [dict(np.load(out / f"process-{k}.npz")) for k in range(2)]
    return reports, arrays, wall


def test_two_processes_of_two_devices(runs):
    reports, _, wall = runs
    for k, r in enumerate(reports):
        assert (r["process"], r["processes"], r["devices"], r["local_devices"]) == (k, 2, 4, 2), r
    assert wall < TIMEOUT_S


def test_every_process_gets_the_same_audio(runs):
    _, (zero, one), _ = runs
    for mode in MODES:
        for what in ("audio", "latents"):
            a, b = zero[f"{mode}_{what}"], one[f"{mode}_{what}"]
            assert a.shape == b.shape and np.isfinite(a).all(), (mode, what, a.shape, b.shape)
            np.testing.assert_array_equal(a, b, err_msg=f"{mode} {what}")


def test_equal_to_one_device(runs):
    _, (zero, one), _ = runs
    reference = {k: v for arrays in (zero, one) for k, v in arrays.items() if k.startswith("reference_")}
    assert len(reference) == 2 * len(MODES), sorted(reference)
    for mode in MODES:
        for what in ("audio", "latents"):
            want = reference[f"reference_{mode}_{what}"]
            peak = np.abs(want).max()
            assert peak > 0, (mode, what)
            for k, got in enumerate((zero, one)):
                rel = np.abs(got[f"{mode}_{what}"] - want).max() / peak
                assert rel <= 1e-5, (mode, what, k, rel)
    # the three runs really differ (LiteFocus took effect in both modes), far beyond the tolerance
    dense = reference["reference_dense_audio"]
    for mode in ("official", "exact"):
        assert np.abs(reference[f"reference_{mode}_audio"] - dense).max() > 1e-3 * np.abs(dense).max(), mode


def test_mismatched_arguments_and_partial_meshes_fail_on_every_process(runs):
    reports, _, _ = runs
    for r in reports:
        assert "needs the same arguments on every process" in r.get("mismatch_error", ""), r
        assert "must use all 4 devices of the 2 processes" in r.get("mesh_error", ""), r


def test_helpers_leave_one_process_alone():
    """In one process (this one) a mesh never spans processes: inputs are untouched, weights device_put as before."""
    import jax

    mesh = parallel.make_mesh(1, 1)
    assert not parallel.spans_processes(mesh) and not parallel.spans_processes(None)
    tree = (np.arange(3.0), {"k": np.ones(2, np.int32)})
    assert parallel.inputs(mesh, tree) is tree and parallel.inputs(None, tree) is tree
    placed = parallel.replicate(mesh, tree)
    assert all(isinstance(x, jax.Array) and x.sharding.is_fully_replicated for x in jax.tree.leaves(placed))
    np.testing.assert_array_equal(parallel.to_host(placed[0]), tree[0])
    parallel.same_everywhere(mesh, "arguments", ("anything", object()))  # nothing to compare with: no error


# ------------------------------------------------------------------------------------------------ the command line

CLI_ITEMS = '{"prompt": "a dog barks", "seed": 3}\n{"prompt": "an owl hoots", "seed": 4}\n'  # item 0 = the worker's


def _generate(out: Path, mesh: str) -> list[str]:
    return [
        sys.executable, "-m", "litefocus_jax", "generate", "--prompts", str(out / "prompts.jsonl"), "--model", "tiny",
        "--out-dir", str(out / "wavs"), "--mesh", mesh, "--seconds", "1.28", "--steps", "2", "--batch-size", "1",
        "--save-npy", "--cache-dir", "",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """The two items, then the same command again (resumes: nothing to do), then with other --steps (refused)."""
    out = tmp_path_factory.mktemp("seq_cli")
    (out / "prompts.jsonl").write_text(CLI_ITEMS)
    command = _generate(out, "data=1,seq=4")
    return out, [launch(command, out), launch(command, out), launch(command + ["--steps", "3"], out)]


def test_cli_generates_together_and_process_0_writes(cli_run, runs):
    out, (results, _, _) = cli_run
    for k, (code, err) in enumerate(results):
        assert code == 0, f"process {k} ended with {code}:\n{err[-4000:]}"
        assert f"process {k} of 2 on one mesh across processes" in err, err[-2000:]
    wavs = out / "wavs"
    assert sorted(p.name for p in wavs.glob("manifest*.jsonl")) == ["manifest.jsonl"]
    records = [json.loads(line) for line in (wavs / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in records) == [0, 1] and all("process" not in r for r in records), records
    assert sorted(p.name for p in wavs.glob("*.npy")) == ["00000-a-dog-barks.npy", "00001-an-owl-hoots.npy"]
    # item 0 is the worker's dense run (same prompt, seed, length, steps): equal to its one-device reference
    want = runs[1][0]["reference_dense_audio"][0]
    got = np.load(wavs / "00000-a-dog-barks.npy")
    assert got.shape == want.shape and np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_cli_resumes_together_and_refuses_other_settings_everywhere(cli_run):
    out, (_, again, other) = cli_run
    for k, (code, err) in enumerate(again):
        assert code == 0 and "written 0, skipped (already done) 2, failed 0" in err, (k, code, err[-2000:])
    for k, (code, err) in enumerate(other):  # process 0 found the conflict; every process reports it
        assert code == 2 and "already holds item 0 made with different ['steps']" in err, (k, code, err[-2000:])
    assert len((out / "wavs" / "manifest.jsonl").read_text().splitlines()) == 2


def test_cli_mesh_that_does_not_cover_the_processes_fails_before_loading(tmp_path):
    (tmp_path / "prompts.jsonl").write_text(CLI_ITEMS)
    for k, (code, err) in enumerate(launch(_generate(tmp_path, "data=1,seq=3"), tmp_path, timeout=120)):
        assert code == 2, f"process {k} ended with {code}:\n{err[-4000:]}"
        assert "must use all 4 devices of the 2 processes" in err and "loaded" not in err, err[-2000:]


def test_cli_a_dead_process_ends_the_others_with_a_clear_error(tmp_path):
    """Process 0 SIGKILLed once it has claimed the first batch: process 1, waiting in a collective for it, exits 1
    (not by a signal, not hanging) saying what happened and how to resume."""
    (tmp_path / "prompts.jsonl").write_text(CLI_ITEMS)
    kill = ({"LITEFOCUS_JAX_TEST_KILL": "claimed"},)
    (code0, _), (code1, err1) = launch(_generate(tmp_path, "data=1,seq=4"), tmp_path, timeout=120, env=kill)
    assert code0 == -signal.SIGKILL and code1 == 1, (code0, code1, err1[-3000:])
    assert "a process of the mesh across processes is gone" in err1 and "run the same command again to resume" in err1
