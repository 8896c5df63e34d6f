"""A git remote over HTTP on 127.0.0.1 that requires a token, as a private Git host does: git's
own `git http-backend` (the smart HTTP protocol) behind a small threaded server that answers
401 to any request without `Authorization: Basic <user>:<token>`."""

from __future__ import annotations

import base64
import contextlib
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

BACKEND_TIMEOUT = 120  # seconds one request's `git http-backend` may take


@dataclass
class GitRemote:
    url: str  # http://127.0.0.1:<port>/<name>.git, no credential in it
    token: str
    requests: list[tuple[str, int]]  # (path, status) of every request, for the test to read

    def header(self, token: str | None = None) -> str:
        """The Authorization header a client with this token (or another) sends."""
        basic = base64.b64encode(f"x-access-token:{token or self.token}".encode()).decode()
        return f"Authorization: Basic {basic}"


def handler(root: Path, token: str, log: list[tuple[str, int]]) -> type[BaseHTTPRequestHandler]:
    expected = base64.b64encode(f"x-access-token:{token}".encode()).decode()
    git = shutil.which("git") or "git"

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # quiet: the test reads log
            pass

        def do_GET(self) -> None:
            self.serve()

        def do_POST(self) -> None:
            self.serve()

        def serve(self) -> None:
            parts = urlsplit(self.path)
            if self.headers.get("Authorization") != f"Basic {expected}":
                log.append((parts.path, 401))
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            environ = {
                "GIT_PROJECT_ROOT": str(root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "REQUEST_METHOD": self.command,
                "PATH_INFO": parts.path,
                "QUERY_STRING": parts.query,
                "CONTENT_TYPE": self.headers.get("Content-Type") or "",
                "CONTENT_LENGTH": str(length),
                "GIT_PROTOCOL": self.headers.get("Git-Protocol") or "",
                "REMOTE_USER": "x-access-token",
                "REMOTE_ADDR": "127.0.0.1",
                "PATH": "/usr/bin:/bin",
            }
            result = subprocess.run(
                [git, "http-backend"],
                input=body,
                env=environ,
                capture_output=True,
                timeout=BACKEND_TIMEOUT,
                check=False,
            )
            head, _, payload = result.stdout.partition(b"\r\n\r\n")
            status, headers = 200, []
            for line in head.decode("latin-1").split("\r\n"):
                name, _, value = line.partition(":")
                if name.lower() == "status":
                    status = int(value.split()[0])
                elif name:
                    headers.append((name, value.strip()))
            log.append((parts.path, status))
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler


@contextlib.contextmanager
def git_remote(repo: Path, root: Path, token: str) -> Iterator[GitRemote]:
    """Serve a bare copy of REPO (every branch and commit) at a token-protected URL."""
    root.mkdir(parents=True, exist_ok=True)
    name = f"{repo.name}.git"
    subprocess.run(
        ["git", "clone", "-q", "--bare", str(repo), str(root / name)], check=True, timeout=60
    )
    log: list[tuple[str, int]] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler(root, token, log))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield GitRemote(f"http://127.0.0.1:{server.server_port}/{name}", token, log)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
