"""Several generators on one output folder: launcher settings, item claims, and a fleet that survives its members.

Two ways to share a folder, freely mixed:

- a multi-process launch (JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID, SLURM with more than one
  task, Open MPI, a TPU pod slice): `initialize_distributed` starts `jax.distributed` with configurable timeouts
  and JAX's recoverability on, so a peer that dies or finishes early does not abort the others;
- independent runs of the same command (two shells, two job-array tasks): nothing to configure.

Either way an item is generated only by the run that claimed it: `Claims.take` creates `.claims/<index>`
exclusively (O_EXCL) before the item is generated and removes it once its manifest line is written. A claim
whose owner is gone is broken and taken over: on the owner's machine when its pid no longer runs, elsewhere when
its liveness file (`.claims/alive-<host>-<pid>`, touched every min(30, stale/4) s by a thread) is older than
LITEFOCUS_JAX_CLAIM_STALE_S (default 300 s). So a process that finished its own items goes on with items nobody
holds, including a dead peer's, and an uneven fleet evens out.

Why no process takes the others down: JAX's coordination service, which every process needs while it runs, is
hosted by a child process of process 0 (tools/coordination.py) that serves until every process has left, whether
process 0 exited or died; with JAX's recoverability on, a process that dies or finishes early is dropped and the
others carry on. Where JAX lacks the runtime API for that, the service stays in process 0, which then waits for
the others at exit (they would abort without it), and a dead process 0 still aborts the others.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

# the environment that tunes a launch; timeouts in seconds (JAX's defaults: 300, 100, 300)
TIMEOUT_ENV = {
    "LITEFOCUS_JAX_INIT_TIMEOUT": ("initialization_timeout", 300),
    "LITEFOCUS_JAX_HEARTBEAT_TIMEOUT": ("heartbeat_timeout_seconds", 100),
    "LITEFOCUS_JAX_SHUTDOWN_TIMEOUT": ("shutdown_timeout_seconds", 300),
}
CLAIM_STALE_ENV = "LITEFOCUS_JAX_CLAIM_STALE_S"
CLUSTER_HINT = (
    "set all three of JAX_COORDINATOR_ADDRESS=host:port (process 0's host), JAX_NUM_PROCESSES=N and "
    "JAX_PROCESS_ID=0..N-1 in every process, or launch with srun / mpirun / on a TPU pod, which set them; "
    "unset them for a single-process run"
)


def _int_env(env: Mapping[str, str], name: str, minimum: int) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ValueError(f"{name}={value} must be >= {minimum}")
    return value


def _cluster_detected(env: Mapping[str, str]) -> bool:
    """A launcher that JAX's cluster detection reads itself (process count and id come from it)."""
    return (
        int(env.get("SLURM_NTASKS", "1") or 1) > 1
        or int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1
        or len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1
    )


def launcher_settings(environ: Mapping[str, str] | None = None) -> dict | None:
    """The `jax.distributed.initialize` arguments this environment asks for, or None for a single process.

    Raises ValueError naming what is missing or wrong (a half-set launch, a bad timeout) without touching JAX.
    """
    env = os.environ if environ is None else environ
    try:
        kwargs = {arg: _int_env(env, name, 1) or default for name, (arg, default) in TIMEOUT_ENV.items()}
        _int_env(env, CLAIM_STALE_ENV, 1)
    except ValueError as e:
        raise ValueError(f"launcher settings: {e} (a whole number of seconds)") from None
    try:
        n = _int_env(env, "JAX_NUM_PROCESSES", 1)
        pid = _int_env(env, "JAX_PROCESS_ID", 0)
    except ValueError as e:
        raise ValueError(f"launcher settings: {e}; {CLUSTER_HINT}.") from None
    address = env.get("JAX_COORDINATOR_ADDRESS", "").strip()
    cluster = _cluster_detected(env)
    if not address and not cluster:
        if n is not None or pid is not None:
            raise ValueError(
                f"launcher settings: JAX_NUM_PROCESSES/JAX_PROCESS_ID without JAX_COORDINATOR_ADDRESS; {CLUSTER_HINT}."
            )
        return None
    if address:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"launcher settings: JAX_COORDINATOR_ADDRESS={address!r} is not host:port; {CLUSTER_HINT}.")
        kwargs["coordinator_address"] = address
    if not cluster:
        missing = [name for name, v in (("JAX_NUM_PROCESSES", n), ("JAX_PROCESS_ID", pid)) if v is None]
        if missing:
            raise ValueError(
                f"launcher settings: JAX_COORDINATOR_ADDRESS is set but {' and '.join(missing)} not; {CLUSTER_HINT}."
            )
    if n is not None and pid is not None and pid >= n:
        raise ValueError(f"launcher settings: JAX_PROCESS_ID={pid} must be below JAX_NUM_PROCESSES={n}; {CLUSTER_HINT}.")
    if n is not None:
        kwargs["num_processes"] = n
    if pid is not None:
        kwargs["process_id"] = pid
    return kwargs


def initialize_distributed(environ: Mapping[str, str] | None = None, log: Callable[[str], None] | None = None) -> bool:
    """`jax.distributed.initialize` when launched as several processes (see `launcher_settings`); True if it did.

    Must run before anything touches the devices. Turns on `jax_enable_recoverability` (a peer that exits or
    dies does not abort this process) and registers the exit wait of process 0 (module docstring).
    """
    kwargs = launcher_settings(environ)
    if kwargs is None:
        return False
    import jax

    from litefocus_jax.tools import coordination

    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    jax.config.update("jax_enable_recoverability", True)
    if coordination.supported():
        with coordination.service_elsewhere(log):
            jax.distributed.initialize(**kwargs)
    else:
        log("no JAX runtime API to host the coordination service apart: process 0 hosts it, and waits at exit")
        jax.distributed.initialize(**kwargs)
    # registered after JAX's own exit hook, so it runs first
    atexit.register(_exit_wait, log=log)
    return True


def _exit_wait(log: Callable[[str], None]) -> None:
    """At exit: process 0 waits for the others only where it hosts the service itself (its exit would abort them)."""
    from litefocus_jax.tools import coordination

    if coordination.service_process() is None:
        wait_for_peers(log)


def live_peers() -> list[int]:
    """The other processes of this launch still connected to the coordination service ([] single-process).

    Collective: JAX's service answers once every live process has asked or left (a dead one is dropped within
    seconds), so on process 0 alone this blocks until the others have finished or died.
    """
    import jax
    from jax._src import distributed

    client = distributed.global_state.client
    if client is None or jax.process_count() == 1:
        return []
    me = jax.process_index()
    return sorted(p for p in client.get_live_nodes(list(range(jax.process_count()))) if p != me)


_waited = []


def wait_for_peers(log: Callable[[str], None], poll: float = 0.5) -> None:
    """On process 0, block until every other process has left (finished or died)."""
    import jax

    from litefocus_jax.tools import coordination

    if jax.process_index() != 0 or jax.process_count() == 1 or _waited:
        return
    log("process 0: waiting for the other processes to finish")
    errors = 0
    while errors < 3:  # the query blocked 200 s without a deadline (measured); retry one that fails anyway
        try:
            if not live_peers():
                if service := coordination.service_process():
                    service.peers_gone = True  # nobody left to serve: it may stop when this process exits
                break
            errors = 0
        except Exception as e:
            errors += 1
            log(f"could not query the other processes ({type(e).__name__}: {e})" + ("; exiting" if errors == 3 else ""))
        time.sleep(poll)
    _waited.append(True)


# ---------------------------------------------------------------------------------------------- claims


def _host() -> str:
    """This machine: host name plus boot id (containers on one machine share a boot id, not a host name)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        boot = "?"
    return f"{socket.gethostname()}:{boot}"


def _stat(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name: [state, ppid, ...] ([] where /proc has none)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (tells a reused pid apart), or None where /proc has none."""
    fields = _stat(pid)
    return fields[19] if len(fields) > 19 else None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()


def _pid_running(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat(pid)
    if fields and fields[0] in ("Z", "X"):  # killed, not yet reaped by its parent
        return False
    return started is None or len(fields) <= 19 or fields[19] == started


class Claims:
    """Exclusive per-item claims in `out_dir/.claims` (module docstring). One instance per process."""

    def __init__(self, out_dir: str | os.PathLike, process_index: int = 0, process_count: int = 1):
        self.dir = Path(out_dir) / ".claims"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.stale = float(os.environ.get(CLAIM_STALE_ENV) or 300)
        self.owner = dict(
            host=_host(), pid=os.getpid(), started=_start_time(os.getpid()), process=process_index, of=process_count
        )
        self.alive = self.dir / f"alive-{socket.gethostname()}-{os.getpid()}"
        self.held: set[int] = set()
        self._stop = threading.Event()
        self.alive.touch()
        prefix = f"alive-{socket.gethostname()}-"
        for old in self.dir.glob(prefix + "*"):  # left by killed runs here (a live owner touches its file)
            pid = old.name[len(prefix) :]
            if pid.isdigit() and not _pid_running(int(pid), None) and time.time() - _mtime(old) > self.stale:
                old.unlink(missing_ok=True)
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(min(30.0, self.stale / 4)):
            try:
                self.alive.touch()
            except OSError:
                pass

    def path(self, index: int) -> Path:
        return self.dir / f"{index:05d}"

    def holder(self, index: int) -> dict | None:
        """The owner record of item `index`'s claim, or None if unclaimed ({} if unreadable, i.e. being written)."""
        try:
            return json.loads(self.path(index).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def owner_alive(self, owner: dict) -> bool:
        if owner.get("unreadable"):
            return False
        if owner.get("host") == self.owner["host"] and isinstance(owner.get("pid"), int):
            return _pid_running(owner["pid"], owner.get("started"))
        host = str(owner.get("host", "")).split(":")[0]
        try:
            age = time.time() - (self.dir / f"alive-{host}-{owner.get('pid')}").stat().st_mtime
        except OSError:
            return False
        return age < self.stale

    def take(self, index: int) -> bool:
        """Claim item `index` for this process; False if a live process holds it."""
        for _ in range(3):
            try:
                fd = os.open(self.path(index), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                owner = self.holder(index)
                if owner is None:
                    continue  # released meanwhile: try again
                if owner == {} and time.time() - _mtime(self.path(index)) > 60:
                    owner = {"unreadable": True}  # its owner died between creating and filling it
                if not owner or self.owner_alive(owner):
                    return False
                self._break(index, owner)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.owner, f)
            self.held.add(index)
            return True
        return False

    def take_batch(self, queue: list, size: int, finished: Callable[[list], set[int]]) -> tuple[list, list[int]]:
        """Pop up to `size` items (with an `.index`) off `queue` that this process claims and that `finished`
        (called on the claimed ones) does not report done by another run meanwhile; also the indices passed over."""
        chunk, passed = [], []
        while queue and len(chunk) < size:
            it = queue.pop(0)
            if self.take(it.index):
                chunk.append(it)
            else:
                passed.append(it.index)
        done = finished(chunk) if chunk else set()
        for it in [it for it in chunk if it.index in done]:
            chunk.remove(it)
            self.release(it.index)
            passed.append(it.index)
        kill, _, gate = os.environ.get("LITEFOCUS_JAX_TEST_KILL", "").partition(":")
        if chunk and kill == "claimed":  # test hook: die holding claims, before any output (once `gate` exists)
            while gate and not os.path.exists(gate):
                time.sleep(0.1)
            os.kill(os.getpid(), signal.SIGKILL)
        return chunk, passed

    def wait_for_held(self, indices: list[int], done: Callable[[list[int]], set[int]], log: Callable[[str], None]) -> list[int]:
        """Of `indices` (items this run passed over because live runs held them), block while every unfinished one
        (`done(indices)`: the finished ones) is still held by a live run; return the unfinished ones now free to take
        (their claim dropped, or its owner dead), [] once all are finished. A run that dies holding items thus does
        not leave them undone while another run is still there."""
        said = False
        while True:
            left = sorted(set(indices) - done(indices))
            free = [i for i in left if (owner := self.holder(i)) is None or (owner and not self.owner_alive(owner))]
            if free or not left:
                return free
            if not said:
                log(f"waiting for {len(left)} item(s) held by other runs ({_ranges(left)}); taking over any whose run dies")
                said = True
            time.sleep(min(5.0, self.stale / 10))

    def _break(self, index: int, owner: dict) -> None:
        """Move a dead owner's claim aside; of several processes doing this at once only one renames it."""
        aside = self.dir / f"{index:05d}.stale-{os.getpid()}"
        try:
            os.rename(self.path(index), aside)
        except FileNotFoundError:
            return
        try:
            if json.loads(aside.read_text()) != owner:  # a fresh claim renamed by mistake: put it back
                os.link(aside, self.path(index))
        except (OSError, ValueError):
            pass
        aside.unlink(missing_ok=True)

    def release(self, index: int) -> None:
        if index in self.held:
            self.held.discard(index)
            self.path(index).unlink(missing_ok=True)

    def close(self) -> None:
        """Release every claim still held (failed or unfinished items) and stop the liveness file."""
        for index in list(self.held):
            self.release(index)
        self._stop.set()
        self.alive.unlink(missing_ok=True)


def fleet_summary(records: Mapping[int, dict], indices: list[int], claims_dir: Path | None = None) -> tuple[list[str], list[int]]:
    """Lines saying which process wrote which of `indices` (from the manifests' `process` field) and which
    are missing (with their claim's owner, if any); also the missing indices."""
    by_process: dict[str, list[int]] = {}
    missing = []
    for i in indices:
        rec = records.get(i)
        if rec is None:
            missing.append(i)
        else:
            by_process.setdefault(str(rec.get("process", "?")), []).append(i)
    lines = [f"  process {p}: {len(v)} item(s) {_ranges(v)}" for p, v in sorted(by_process.items())]
    for i in missing:
        owner = None
        if claims_dir is not None:
            try:
                owner = json.loads((claims_dir / f"{i:05d}").read_text())
            except (OSError, ValueError):
                pass
        held = f" (claimed by process {owner.get('process')}, pid {owner.get('pid')} on {owner.get('host')})" if owner else ""
        lines.append(f"  missing item {i}{held}")
    return lines, missing


def _ranges(values: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    out, values = [], sorted(values)
    start = prev = None
    for v in values + [None]:
        if start is not None and (v is None or v != prev + 1):
            out.append(f"{start}-{prev}" if prev > start else f"{start}")
            start = None
        if v is not None and start is None:
            start = v
        prev = v
    return ",".join(out)


def report_fleet(
    out_dir: str | os.PathLike,
    indices: list[int],
    read_records: Callable[[Path], Mapping[int, dict]],
    log: Callable[[str], None],
) -> list[int]:
    """After this process's batch: process 0 waits for the others to leave, then logs which process wrote which
    of `indices` (`read_records(out_dir)`: the manifests) and which are missing; returns the missing ones ([] on
    the other processes)."""
    import jax

    if jax.process_index() != 0:
        return []
    wait_for_peers(log)
    out = Path(out_dir)
    lines, missing = fleet_summary(read_records(out), indices, out / ".claims")
    log(f"fleet of {jax.process_count()} processes, {len(indices)} item(s):")
    for line in lines:
        log(line)
    return missing
