"""The coordination service in a child process (litefocus_jax.tools.coordination): start, a clear error for a
taken port, and both ways of letting it go. A fleet whose process 0 dies is in test_fleet.py."""

from __future__ import annotations

import socket

import pytest

from litefocus_jax.tools.coordination import ServiceProcess, _connect_address

FAST = dict(heartbeat_timeout=3, shutdown_timeout=2, recoverable=True)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_taken_port_is_a_clear_error():
    with socket.socket(socket.AF_INET6) as taken:
        taken.bind(("::", 0))
        taken.listen()
        with pytest.raises(RuntimeError, match=r"could not start JAX's coordination service on \[::\]:\d+ for 2 processes"):
            ServiceProcess(f"[::]:{taken.getsockname()[1]}", 2, print, **FAST)


@pytest.mark.parametrize("peers_gone", [True, False])
def test_service_leaves_when_released(peers_gone, capsys):
    """Released after process 0 saw every peer leave: it stops at once. Released otherwise (or process 0 died:
    the same closed pipe): it connects as task 0, finds no other task, and stops. (A launch of one process, as
    connecting is a barrier over all tasks; waiting for live peers is in test_fleet.py.)"""
    service = ServiceProcess(f"[::]:{_port()}", 1, print, **FAST)
    assert service.proc.poll() is None  # serving
    service.peers_gone = peers_gone
    service.shutdown()
    assert service.proc.wait(timeout=60) == 0
    assert ("stays until the other processes have left" in capsys.readouterr().out) is not peers_gone


def test_connect_address():
    assert _connect_address("[::]:1234") == "localhost:1234"
    assert _connect_address("0.0.0.0:1234") == "localhost:1234"
    assert _connect_address("10.1.2.3:1234") == "10.1.2.3:1234"
