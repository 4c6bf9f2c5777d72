"""A tiny HTTP file host on 127.0.0.1 for download tests: Range requests, cut connections,
servers that ignore Range, and HTTP errors, all on demand."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

_RANGE = re.compile(r"bytes=(\d+)-$")


@dataclass
class Behaviour:
    """How the server answers; change the fields between requests."""

    cut_after: Optional[int] = None  # close the connection after this many body bytes
    ignore_range: bool = False  # answer 200 with the whole file even when a Range is asked
    status: Optional[int] = None  # answer every request with this HTTP status
    requests: list[dict] = field(default_factory=list)  # method, path, headers of each request


class FileServer:
    """Serves `files` (name -> bytes) at `http://127.0.0.1:<port>/<name>` in a thread."""

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.behaviour = Behaviour()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                b = server.behaviour
                b.requests.append({"path": self.path, "headers": dict(self.headers)})
                name = self.path.rsplit("/", 1)[-1]
                if b.status is not None or name not in server.files:
                    self.send_response(b.status or 404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = server.files[name]
                start, code = 0, 200
                match = _RANGE.match(self.headers.get("Range", ""))
                if match and not b.ignore_range:
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    code = 206
                body = data[start:]
                self.send_response(code)
                if code == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if b.cut_after is not None:
                    self.wfile.write(body[:b.cut_after])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def __enter__(self) -> "FileServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
