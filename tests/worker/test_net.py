"""The worker's free-port picker: the OS's choice, or a port inside the asked range that binds."""

from __future__ import annotations

import socket

from kuberl.worker.net import SGLANG_MAX_PORT, free_port


def test_a_range_is_respected_and_the_port_binds() -> None:
    for _ in range(20):
        port = free_port(20000, SGLANG_MAX_PORT)
        assert 20000 <= port < SGLANG_MAX_PORT
        with socket.socket() as s:
            s.bind(("", port))


def test_without_a_range_the_os_picks_a_bindable_port() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("", port))
