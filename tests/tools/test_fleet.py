"""Several generators on one folder (litefocus_jax.tools.fleet): launcher settings, item claims, two shells
running the same command, and a 3-process `jax.distributed` fleet on localhost whose process 0 (the one that
starts JAX's coordination service) and process 1 are SIGKILLed, then resumed with members finishing seconds apart
(timeouts shortened by environment)."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from litefocus_jax.commands.cli import main
from litefocus_jax.tools.fleet import Claims, fleet_summary, launcher_settings

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = "dog\ncat\nowl\nbee\nelk\n"  # five items of one length: one batch shape everywhere (one compile)
ALL = [0, 1, 2, 3, 4]
RUNS = itertools.count()  # numbers the stderr logs
# short JAX timeouts so an abort would show within the test; one CPU device per process
FAST = {
    "LITEFOCUS_JAX_INIT_TIMEOUT": "60",
    "LITEFOCUS_JAX_HEARTBEAT_TIMEOUT": "3",
    "LITEFOCUS_JAX_SHUTDOWN_TIMEOUT": "2",
    "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("fleet")
    (root / "prompts.txt").write_text(PROMPTS)
    return root / "prompts.txt", root / "xla_cache"


def _cmd(setup, out):
    """`generate` on the built-in tiny random model (loads in a few seconds: no snapshot to convert)."""
    prompts, cache = setup
    return [
        sys.executable, "-m", "litefocus_jax", "generate", "--prompts", str(prompts), "--model", "tiny",
        "--out-dir", str(out), "--seconds", "0.064", "--steps", "2", "--batch-size", "4", "--no-progress",
        "--cache-dir", str(cache),
    ]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc(subprocess.Popen):
    """A `generate` in its own process group, stderr to a file (readable while it runs)."""

    def __init__(self, setup, out, env, log: Path):
        self.log = log
        with open(log, "w") as f:
            super().__init__(_cmd(setup, out), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=f, start_new_session=True)

    def stderr_text(self) -> str:
        return self.log.read_text()


def stop(procs: list[Proc]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def run_together(setup, out, envs, timeout=240, wait=True):
    """Start one `generate` per env at once; [(returncode, stderr)] once all ended, or the Procs (wait=False)."""
    base = {k: v for k, v in os.environ.items() if "_proxy" not in k.lower() and not k.startswith("JAX_")}
    procs = []
    try:
        for env in envs:
            procs.append(Proc(setup, out, {**base, **FAST, **env}, out.parent / f"{out.name}-{next(RUNS)}.log"))
        if not wait:
            return procs
        deadline = time.monotonic() + timeout
        return [(p.wait(timeout=max(1.0, deadline - time.monotonic())), p.stderr_text()) for p in procs]
    finally:
        if wait:
            stop(procs)


def fleet(setup, out, extra, wait=True):
    """One `generate` per entry of `extra` (its environment), as a jax.distributed launch on a free port."""
    address = f"127.0.0.1:{_free_port()}"
    n = str(len(extra))
    envs = [dict(JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES=n, JAX_PROCESS_ID=str(k), **e) for k, e in enumerate(extra)]
    return run_together(setup, out, envs, wait=wait)


def manifest_indices(out: Path) -> list[int]:
    """Every manifest line's item index, over all manifest files (duplicates kept)."""
    return sorted(json.loads(line)["index"] for p in out.glob("manifest*.jsonl") for line in p.read_text().splitlines())


def test_launcher_settings_are_checked_before_anything_loads(tmp_path, monkeypatch, capsys):
    assert launcher_settings({}) is None
    full = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    assert launcher_settings({**full, "LITEFOCUS_JAX_SHUTDOWN_TIMEOUT": "7"}) == dict(
        coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3, initialization_timeout=300,
        heartbeat_timeout_seconds=100, shutdown_timeout_seconds=7,
    )  # fmt: skip
    assert launcher_settings({"SLURM_NTASKS": "2"})["heartbeat_timeout_seconds"] == 100  # JAX reads SLURM itself
    bad = {
        "JAX_NUM_PROCESSES and JAX_PROCESS_ID not": {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"},
        "without JAX_COORDINATOR_ADDRESS": {"JAX_PROCESS_ID": "0"},
        "is not host:port": {**full, "JAX_COORDINATOR_ADDRESS": "10.0.0.1"},
        "must be below JAX_NUM_PROCESSES=4": {**full, "JAX_PROCESS_ID": "4"},
        "'two' is not an integer": {**full, "JAX_NUM_PROCESSES": "two"},
        "LITEFOCUS_JAX_HEARTBEAT_TIMEOUT=0 must be >= 1": {"LITEFOCUS_JAX_HEARTBEAT_TIMEOUT": "0"},
    }
    for message, env in bad.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            launcher_settings(env)
    # the CLI: exit 2 naming the missing settings, before the (missing) model is even looked at
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
    for name in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(name, raising=False)
    assert main(["generate", "dog", "--model", str(tmp_path / "no-model"), "--out-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "JAX_NUM_PROCESSES and JAX_PROCESS_ID not" in err and "model" not in err.split("JAX_COORDINATOR_ADDRESS=host:port")[0]


def test_claims_exclusive_and_taken_over_from_dead_owners(tmp_path):
    (tmp_path / ".claims").mkdir()
    left = tmp_path / ".claims" / f"alive-{socket.gethostname()}-{2**22 + 1}"  # a killed run's (no such pid)
    left.touch()
    os.utime(left, (time.time() - 400, time.time() - 400))
    a, b = Claims(tmp_path, 0, 2), Claims(tmp_path, 1, 2)
    assert not left.exists()  # cleared
    try:
        assert a.take(3) and not b.take(3) and not a.take(3)  # one holder, even for the same process
        a.release(3)
        assert b.take(3) and b.holder(3)["process"] == 1
        # a claim of a process that has exited, on this machine: taken over at once
        dead = subprocess.Popen(["true"])
        dead.wait()
        b.path(5).write_text(json.dumps(dict(b.owner, pid=dead.pid, started=None, process=0)))
        assert a.take(5) and a.holder(5)["pid"] == os.getpid()
        zombie = subprocess.Popen(["sleep", "60"])  # killed but not reaped yet: dead too
        try:
            b.path(6).write_text(json.dumps(dict(b.owner, pid=zombie.pid, started=None, process=1)))
            assert not a.take(6)
            zombie.kill()
            time.sleep(0.2)
            assert a.take(6)
        finally:
            zombie.kill()
            zombie.wait()
        # another machine's claim: alive while its liveness file is fresh, stale after LITEFOCUS_JAX_CLAIM_STALE_S
        b.path(7).write_text(json.dumps(dict(host="elsewhere:0000", pid=42, process=1)))
        alive = tmp_path / ".claims" / "alive-elsewhere-42"
        alive.touch()
        assert not a.take(7)
        os.utime(alive, (time.time() - 400, time.time() - 400))
        assert a.take(7)
        # a batch: items held by a live run, or finished by another run meanwhile, are passed over
        queue = [types.SimpleNamespace(index=i) for i in (3, 8, 9, 10)]
        chunk, passed = a.take_batch(queue, 2, lambda claimed: {9})  # 3: b holds it; 9: done elsewhere
        assert [it.index for it in chunk] == [8] and passed == [3, 9] and [it.index for it in queue] == [10]
        assert a.holder(9) is None and a.holder(8)["pid"] == os.getpid()
        lines, missing = fleet_summary({0: {"process": 0}, 1: {"process": 1}, 2: {"process": 0}}, [0, 1, 2, 3], b.dir)
        assert missing == [3] and lines[0] == "  process 0: 2 item(s) 0,2" and "claimed by process 1" in lines[2]
    finally:
        a.close()
        b.close()
    assert sorted(p.name for p in (tmp_path / ".claims").iterdir()) == ["alive-elsewhere-42"]  # all released


@pytest.fixture(scope="module")
def killed_fleet(setup, tmp_path_factory):
    """A 3-process launch whose processes 0 and 1 are SIGKILLed while they hold the claims of their first batch:
    (out dir, [(returncode, stderr)] of processes 0, 1 and 2)."""
    out = tmp_path_factory.mktemp("fleet_out")
    kill = {"LITEFOCUS_JAX_TEST_KILL": "claimed"}
    return out, fleet(setup, out, [kill, kill, {}])


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True  # exited, not yet reaped
        except OSError:
            return True
        time.sleep(0.2)
    return False


def test_fleet_survives_dead_peers_and_uneven_finishes_then_resumes(setup, killed_fleet):
    # 1. process 2 does its own item, takes over those of the dead processes 0 and 1, and exits 0: the death of
    # process 0 takes nobody down, as the coordination service runs in a child of process 0 that outlives it
    # (tools/coordination.py) and leaves once the others have
    out, ((rc0, err0), (rc1, err1), (rc2, err2)) = killed_fleet
    assert rc0 == rc1 == -signal.SIGKILL and "process 1 of 3" in err1, (err0[-2000:], err1[-2000:])
    assert rc2 == 0 and "written 5, skipped (already done) 0, failed 0" in err2, err2[-3000:]
    service = int(re.search(r"coordination service for 3 processes on \S+: pid (\d+)", err0).group(1))
    assert _gone(service, 30)
    assert manifest_indices(out) == ALL and len(list(out.glob("*.wav"))) == 5  # each item once
    # 2. a resume as 3 processes with nothing left to do, process 1 held back until process 2 has left and
    # process 0 has waited 4 s (> the 2 s shutdown and 3 s heartbeat timeouts) for it: process 0 waits instead
    # of leaving (which would abort process 1); all exit 0
    gate = out / "go"
    procs = fleet(setup, out, [{}, {"LITEFOCUS_JAX_TEST_WAIT_FOR": str(gate)}, {}], wait=False)
    try:
        deadline = time.monotonic() + 180
        while "waiting for the other processes to finish" not in procs[0].stderr_text() or procs[2].poll() is None:
            assert time.monotonic() < deadline and procs[0].poll() is None and procs[1].poll() is None
            time.sleep(0.2)
        time.sleep(4)
        assert procs[0].poll() is None and procs[2].returncode == 0
        gate.touch()
        results = [(p.wait(timeout=max(1, deadline - time.monotonic())), p.stderr_text()) for p in procs]
    finally:
        stop(procs)
    assert [rc for rc, _ in results] == [0, 0, 0], [err[-2000:] for _, err in results]
    for (_, err), own in zip(results, (2, 2, 1)):  # items i % 3 == k
        assert f"written 0, skipped (already done) {own}, failed 0" in err
    assert "fleet of 3 processes, 5 item(s):\n  process 2: 5 item(s) 0-4\n" in results[0][1]  # who wrote what
    assert "missing" not in results[0][1]
    assert manifest_indices(out) == ALL and not list((out / ".claims").glob("0*"))  # each item once


def test_two_shells_same_command_same_out_dir(setup, killed_fleet, tmp_path):
    """Two independent runs (no launcher) on one folder: every item generated and written once, one manifest.
    Compared with the fleet's audio (whose compiled program it finds in the compilation cache)."""
    results = run_together(setup, tmp_path, [{}, {}])
    assert [rc for rc, _ in results] == [0, 0], [err[-2000:] for _, err in results]
    written = [int(re.search(r"written (\d+),", err).group(1)) for _, err in results]
    assert sum(written) == 5, written  # no item generated twice
    assert manifest_indices(tmp_path) == ALL and [p.name for p in tmp_path.glob("manifest*")] == ["manifest.jsonl"]
    assert len(list(tmp_path.glob("*.wav"))) == 5 and not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert not list((tmp_path / ".claims").iterdir())
    for name in [p.name for p in tmp_path.glob("*.wav")]:  # the same audio whichever run or batch made it
        mine, theirs = sf.read(tmp_path / name)[0], sf.read(killed_fleet[0] / name)[0]
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=1.0 / 32768)  # one 16-bit step


def test_a_run_that_dies_holding_items_another_passed_over(setup, killed_fleet, tmp_path):
    """Two shells: run B claims items 0-3 and holds them; run A passes over them, generates item 4, then waits
    instead of leaving them undone; B is SIGKILLed; A takes 0-3 over and writes all 5 (exit 0)."""
    gate = tmp_path / "die"
    (b,) = run_together(setup, tmp_path, [{"LITEFOCUS_JAX_TEST_KILL": f"claimed:{gate}"}], wait=False)
    procs = [b]
    try:
        deadline = time.monotonic() + 180
        while len(list((tmp_path / ".claims").glob("0000[0-3]"))) < 4:  # B holds its first batch
            assert time.monotonic() < deadline and b.poll() is None, b.stderr_text()[-2000:]
            time.sleep(0.2)
        (a,) = run_together(setup, tmp_path, [{}], wait=False)
        procs.append(a)
        while "waiting for 4 item(s) held by other runs (0-3)" not in a.stderr_text():
            assert time.monotonic() < deadline and a.poll() is None, a.stderr_text()[-2000:]
            time.sleep(0.2)
        assert manifest_indices(tmp_path) == [4]
        gate.touch()
        assert b.wait(timeout=60) == -signal.SIGKILL
        code = a.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
        stop(procs)
    assert code == 0 and "written 5, skipped (already done) 0, failed 0" in a.stderr_text(), a.stderr_text()[-3000:]
    assert manifest_indices(tmp_path) == ALL and len(list(tmp_path.glob("*.wav"))) == 5
