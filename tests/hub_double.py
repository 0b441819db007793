"""A stand-in for the Hugging Face Hub at the network edge, on 127.0.0.1: the Hub cannot be reached from here.

It answers the HTTP calls huggingface_hub makes to load a repo by id (`/api/models/{id}`, its `tree`, and
`/{id}/resolve/{revision}/{file}` with the `ETag` and `X-Repo-Commit` headers, and `X-Error-Code` on a miss),
serving local folders as repos at one commit. Everything above HTTP (download, cache, snapshot, the remote code's
import) is huggingface_hub's and transformers' own.
"""

import contextlib
import hashlib
import http.server
import json
import threading
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubHandler(http.server.BaseHTTPRequestHandler):
    repos: dict[str, Path] = {}
    requests: list[str] = []

    def log_message(self, *args):  # quiet; `requests` keeps what was asked
        pass

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        self.requests.append(f"{self.command} {self.path}")
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts[:2] == ["api", "models"]:
            return self._api(parts[2:])
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._file("/".join(parts[:2]), "/".join(parts[4:]))
        self._send(404, b"{}")

    def _api(self, parts: list[str]):
        folder = self.repos.get("/".join(parts[:2]))
        if folder is None:
            return self._send(404, b"{}", {"X-Error-Code": "RepoNotFound"})
        if len(parts) > 2 and parts[2] == "tree":  # tree/{revision}/{path}: a folder's entries
            where = folder.joinpath(*parts[4:])
            if not where.is_dir():
                return self._send(404, b"{}", {"X-Error-Code": "EntryNotFound"})
            entries = [
                {"type": "file" if p.is_file() else "directory", "path": str(p.relative_to(folder)), "oid": "0" * 40}
                | ({"size": p.stat().st_size} if p.is_file() else {})
                for p in sorted(where.iterdir())
            ]
            return self._send(200, json.dumps(entries).encode())
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        info = {"id": "/".join(parts[:2]), "sha": COMMIT, "siblings": [{"rfilename": name} for name in files]}
        self._send(200, json.dumps(info).encode())

    def _file(self, repo: str, name: str):
        folder = self.repos.get(repo)
        if folder is None:
            return self._send(404, b"", {"X-Error-Code": "RepoNotFound"})
        path = folder / name
        if not path.is_file():
            return self._send(404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT})
        data = path.read_bytes()
        self._send(200, data, {"ETag": f'"{hashlib.sha1(data).hexdigest()}"', "X-Repo-Commit": COMMIT})

    def _send(self, status: int, body: bytes, headers: dict | None = None):
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


@contextlib.contextmanager
def hub_serving(repos: dict[str, Path]):
    """Serve `repos` (repo id -> folder); yield (the endpoint for HF_ENDPOINT, the list of requests made)."""
    handler = type("Handler", (HubHandler,), {"repos": dict(repos), "requests": []})
    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{site.server_address[1]}", handler.requests
    finally:
        site.shutdown()
        site.server_close()
