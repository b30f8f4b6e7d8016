"""JAX's coordination service in a process of its own, so that a fleet outlives its process 0.

`jax.distributed.initialize` starts the coordination service inside process 0, and every other process aborts
(SIGABRT) the moment that process disappears (jax 0.10.2, measured). Here process 0 starts the service as a child
process instead, with the same arguments; process 0 itself is then an ordinary client. The child serves until
process 0 lets it go:

- process 0 exits normally (JAX's exit hook calls `service.shutdown()`): if process 0 has seen every other process
  leave (`peers_gone`), the service stops at once; otherwise it goes on until they have;
- process 0 dies (its end of the pipe closes without a word): the service goes on until the others have left.

To see who is still there the child connects as task 0 once process 0 is gone (recoverable tasks may reconnect)
and asks the service for the live tasks. With JAX's recoverability on, a process that dies or leaves early then
never takes the others down: they finish their items and exit 0.

This uses JAX's private runtime API (`jax._src.lib._jax.get_distributed_runtime_service` / `_client`). Where it
is missing the service stays in process 0 (JAX's default) with a warning. The child is started by file path, so
it imports JAX's runtime only (no model code); it ignores SIGINT (Ctrl-C in process 0's terminal is process 0
dying, not the fleet) and obeys SIGTERM/SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time

READY = "ready"
DONE = "done"


def _runtime():
    from jax._src.lib import _jax

    return _jax


def supported() -> bool:
    """Whether this JAX exposes the runtime API that hosting the service elsewhere needs."""
    try:
        rt = _runtime()
    except ImportError:
        return False
    return hasattr(rt, "get_distributed_runtime_service") and hasattr(rt, "get_distributed_runtime_client")


class ServiceProcess:
    """Handle, in process 0, of the coordination service running in a child process; JAX keeps it as
    `distributed.global_state.service` and calls `shutdown()` at exit."""

    def __init__(self, address: str, num_nodes: int, log, ready_timeout: float = 120.0, **options):
        settings = dict(address=address, num_nodes=num_nodes, options=options)
        # by path, -P: tools/ not on sys.path (its module names must not shadow JAX's imports)
        self.proc = subprocess.Popen(
            [sys.executable, "-P", os.path.abspath(__file__), json.dumps(settings)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.log = log
        self.peers_gone = False
        ready, _, _ = select.select([self.proc.stdout], [], [], ready_timeout)
        line = self.proc.stdout.readline() if ready else ""
        if line.strip() != READY:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(
                f"could not start JAX's coordination service on {address} for {num_nodes} processes "
                f"(exit code {self.proc.returncode}; its error is above). Is the port free on this host?"
            )
        log(f"coordination service for {num_nodes} processes on {address}: pid {self.proc.pid}")

    def shutdown(self) -> None:
        """Let the service go: at once when every peer has left, else once they have (it waits for them)."""
        if self.proc.stdin is None or self.proc.stdin.closed:
            return
        with contextlib.suppress(OSError):
            if self.peers_gone:
                self.proc.stdin.write(DONE + "\n")
            self.proc.stdin.close()
        if self.peers_gone:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
        else:
            self.log(f"the coordination service (pid {self.proc.pid}) stays until the other processes have left")


@contextlib.contextmanager
def service_elsewhere(log):
    """Within this context `jax.distributed.initialize` starts its service (process 0 only) as a `ServiceProcess`."""
    rt = _runtime()
    original = rt.get_distributed_runtime_service

    def start(address, num_nodes, **options):
        return ServiceProcess(address, num_nodes, log, **options)

    rt.get_distributed_runtime_service = start
    try:
        yield
    finally:
        rt.get_distributed_runtime_service = original


def service_process():
    """The `ServiceProcess` of this process (process 0 under `service_elsewhere`), or None."""
    from jax._src import distributed

    service = distributed.global_state.service
    return service if isinstance(service, ServiceProcess) else None


# ------------------------------------------------------------------------------------- the child process


def _connect_address(bind: str) -> str:
    """Where a client on this host reaches a service bound to `bind` ("[::]:port", "0.0.0.0:port", "host:port")."""
    host, _, port = bind.rpartition(":")
    return f"localhost:{port}" if host.strip("[]") in ("", "::", "0.0.0.0") else bind


def _wait_for_the_others(rt, address: str, num_nodes: int, options: dict) -> None:
    """As task 0 (its process has gone), block until no other task is connected."""
    client = rt.get_distributed_runtime_client(
        _connect_address(address),
        0,
        init_timeout=int(options.get("cluster_register_timeout") or 300),
        heartbeat_timeout=options.get("heartbeat_timeout"),
        use_compression=True,
    )
    client.connect()
    errors = 0
    while errors < 3:  # get_live_nodes blocks while the others run; retry one that fails
        try:
            if not [p for p in client.get_live_nodes(list(range(num_nodes))) if p != 0]:
                break
            errors = 0
        except Exception as e:  # noqa: BLE001 - the service's errors have no common type
            errors += 1
            print(f"coordination service: could not query the processes ({e})", file=sys.stderr, flush=True)
        time.sleep(0.5)
    with contextlib.suppress(Exception):
        client.shutdown()


def serve(address: str, num_nodes: int, options: dict) -> None:
    """Run the service until process 0 (stdin) lets it go; see the module docstring."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    rt = _runtime()
    service = rt.get_distributed_runtime_service(address, num_nodes, **options)
    print(READY, flush=True)
    said = sys.stdin.readline().strip()
    if said != DONE:
        _wait_for_the_others(rt, address, num_nodes, options)
    service.shutdown()


if __name__ == "__main__":
    settings = json.loads(sys.argv[1])
    serve(settings["address"], settings["num_nodes"], settings["options"])
