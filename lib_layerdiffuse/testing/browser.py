"""The system's headless Chromium driven by Playwright, and the web app on a free local port,
for end-to-end tests. Playwright's own browser download is never used: the browser comes from
the system (Debian's `chromium`; `.ci/run` installs it) or `LAYERDIFFUSE_BROWSER`."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from typing import Iterator, Optional

BROWSER_ENV = "LAYERDIFFUSE_BROWSER"
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# headless as root in a container, and no calls home: the machine's network is closed
FLAGS = ("--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
         "--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage")


def find_browser() -> Optional[str]:
    """Path of a Chromium-family browser: `LAYERDIFFUSE_BROWSER`, else the first one on PATH."""
    explicit = os.environ.get(BROWSER_ENV)
    if explicit:
        return explicit
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def launch_chromium(playwright, executable: str):
    return playwright.chromium.launch(executable_path=executable, headless=True, args=list(FLAGS))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(backend) -> Iterator[str]:
    """Serve the app for `backend` on a free loopback port; yields its URL, closes it after."""
    from ..app.page import serve

    port = free_port()
    page = serve(backend, port=port, block=False)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        page.close()
