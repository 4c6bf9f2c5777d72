"""Can this machine reach a download host? One TCP connection with a short timeout.

Libraries that download (huggingface_hub, pooch) retry for 15 to 30 seconds before they give
up on a closed network, and then report it with their own internals. Asking once, quickly,
lets the app and the command line say at once that the host cannot be reached, choose what
works without it (the weight-free cutout, the Hugging Face cache) and never start those retries.
Nothing is cached here: each caller keeps the answer as long as it needs it.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

PROBE_TIMEOUT = 3.0  # seconds; a reachable host answers a TCP handshake far sooner


@dataclass(frozen=True)
class Reach:
    """The answer for one URL's host: `ok`, else `reason` in plain words."""

    url: str
    ok: bool
    reason: str = ""

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or self.url


def _plain(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return "its name does not resolve: no network or no DNS"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "no answer within a few seconds"
    if isinstance(exc, ConnectionRefusedError):
        return "the connection was refused"
    return f"{type(exc).__name__}: {exc}"


def probe(url: str, timeout: float = PROBE_TIMEOUT) -> Reach:
    """Whether a TCP connection to the host and port of `url` opens within `timeout` seconds."""
    parts = urlsplit(url)
    if not parts.hostname:
        return Reach(url, False, "not a URL with a host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return Reach(url, False, "the URL has an invalid port")
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return Reach(url, True)
    except Exception as exc:  # OSError of every kind; the test suite's network guard raises RuntimeError
        return Reach(url, False, _plain(exc))
