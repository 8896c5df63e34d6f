"""A private git remote on 127.0.0.1: `git http-backend` (git's own smart-HTTP CGI) behind a
small http.server that refuses every request without the right token, as a hosted git service
does for a private repository.

The token is accepted as a Bearer token or in HTTP basic auth, as the user name or the password
(GitHub and Azure take it as the password, `x-token-auth:<token>` on Bitbucket, `oauth2:` on
GitLab). Each request is logged as method, path and status: never a header or a credential.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BACKEND_TIMEOUT = 120


def accepted(authorization: str, token: str) -> bool:
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() == token
    if scheme.lower() != "basic":
        return False
    try:
        user, _, password = base64.b64decode(value.strip()).decode().partition(":")
    except ValueError:
        return False
    return token in (user, password)


def handler_class(root: Path, token: str, log: Path) -> type[http.server.BaseHTTPRequestHandler]:
    class GitHandler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self) -> None:
            self.serve()

        def do_POST(self) -> None:
            self.serve()

        def log_message(self, format: str, *args: object) -> None:
            with log.open("a", encoding="utf-8") as out:
                out.write(f"{self.command} {self.path.split('?')[0]} {args[1:2]}\n")

        def serve(self) -> None:
            if not accepted(self.headers.get("Authorization", ""), token):
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="private git"')
                self.end_headers()
                return
            path, _, query = self.path.partition("?")
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            env = {
                "GIT_PROJECT_ROOT": str(root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "PATH_INFO": path,
                "QUERY_STRING": query,
                "REQUEST_METHOD": self.command,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(body)),
                "REMOTE_ADDR": "127.0.0.1",
                "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
            }
            result = subprocess.run(
                [shutil.which("git") or "git", "http-backend"],
                input=body,
                env=env,
                capture_output=True,
                timeout=BACKEND_TIMEOUT,
                check=False,
            )
            head, _, payload = result.stdout.partition(b"\r\n\r\n")
            status = 200
            headers = []
            for line in head.decode("latin-1").splitlines():
                name, _, value = line.partition(":")
                if name.lower() == "status":
                    status = int(value.split()[0])
                else:
                    headers.append((name, value.strip()))
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

    return GitHandler


@dataclass
class GitRemote:
    root: Path
    url: str
    log: Path

    def repository_url(self, name: str) -> str:
        return f"{self.url}/{name}.git"

    def create(self, name: str) -> Path:
        """A bare repository to push to."""
        bare = self.root / f"{name}.git"
        subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
        return bare


@contextlib.contextmanager
def private_git_remote(root: Path, token: str, log: Path) -> Iterator[GitRemote]:
    """Serve the bare repositories under root on a free port until the block exits."""
    root.mkdir(parents=True, exist_ok=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler_class(root, token, log))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield GitRemote(root, f"http://127.0.0.1:{server.server_address[1]}", log)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
