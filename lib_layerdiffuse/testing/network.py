"""Make any attempt to reach a host other than this machine fail loudly (for tests)."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from typing import Any, Iterator

_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


class NetworkAccessError(RuntimeError):
    """Raised instead of connecting anywhere but loopback."""


def _is_loopback(host: Any) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).strip("[]")
    if host.lower() in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _refuse(host: Any, port: Any = None) -> None:
    raise NetworkAccessError(
        f"blocked an attempt to reach {host}:{port}; tests must never touch the network "
        "(serve test data from 127.0.0.1 instead)")


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """Within the block only loopback addresses can be resolved or connected to."""
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def guarded(real):  # noqa: ANN001, ANN202 - wraps socket.connect / connect_ex
        def method(self, address):  # noqa: ANN001, ANN202
            host = address[0] if isinstance(address, tuple) else None
            if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(host):
                _refuse(*address[:2])
            return real(self, address)
        return method

    def getaddrinfo(host, port, *args, **kwargs):  # noqa: ANN001
        if not _is_loopback(host):
            _refuse(host, port)
        return real_getaddrinfo(host, port, *args, **kwargs)

    socket.socket.connect = guarded(real_connect)
    socket.socket.connect_ex = guarded(real_connect_ex)
    socket.getaddrinfo = getaddrinfo
    try:
        yield
    finally:
        socket.socket.connect = real_connect
        socket.socket.connect_ex = real_connect_ex
        socket.getaddrinfo = real_getaddrinfo
