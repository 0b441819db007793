"""A stand-in for the Hugging Face Hub at the network edge, on 127.0.0.1: the Hub cannot be reached from here.

It answers the HTTP calls huggingface_hub makes to load a repo by id (`/api/models/{id}`, its `tree`, and
`/{id}/resolve/{revision}/{file}` with the `ETag` and `X-Repo-Commit` headers, and `X-Error-Code` on a miss; a
dataset's under `/api/datasets/` and `/datasets/`, served from the repo `datasets/{id}`), serving local folders as
repos at one commit, and those it makes to publish (`/api/repos/create`, a branch,
`preupload` answered "regular" for every file, and the NDJSON `commit`, whose files it keeps). Everything above
HTTP (download, cache, snapshot, the remote code's import, the upload's plan) is huggingface_hub's and
transformers' own; the Hub's card validator is not (every card passes).
"""

import base64
import contextlib
import hashlib
import http.server
import json
import os
import threading
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REFUSED_TOKEN = "hf_refused"  # a token the stand-in answers 401 to, as the Hub does a revoked one


class HubHandler(http.server.BaseHTTPRequestHandler):
    repos: dict[str, Path] = {}
    requests: list[str] = []
    created: dict[str, dict] = {}  # repo id -> what `create_repo` asked for
    uploaded: dict[str, dict[str, bytes]] = {}  # "type/repo id@revision" -> path -> content, from commits

    def log_message(self, *args):  # quiet; `requests` keeps what was asked
        pass

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        self.requests.append(f"{self.command} {self.path}")
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts[:2] in (["api", "models"], ["api", "datasets"]):  # a dataset repo is served as `datasets/{id}`
            return self._api(parts[2:], "datasets/" if parts[1] == "datasets" else "")
        kind = "datasets/" if parts[0] == "datasets" else ""
        parts = parts[1:] if kind else parts
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._file(kind + "/".join(parts[:2]), "/".join(parts[4:]))
        self._send(404, b"{}")

    def do_POST(self):
        self.requests.append(f"POST {self.path}")
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Authorization") == f"Bearer {REFUSED_TOKEN}":
            return self._send(401, b'{"error": "Invalid credentials in Authorization header"}')
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts[:2] == ["api", "validate-yaml"]:  # the Hub's card validator cannot run here: every card passes
            return self._send(200, b"{}")
        if parts[:3] == ["api", "repos", "create"]:
            asked = json.loads(body)
            repo = f"{asked['organization']}/{asked['name']}" if asked.get("organization") else asked["name"]
            self.created[repo] = asked
            return self._send(200, json.dumps({"url": f"http://{self.headers['Host']}/{repo}", "name": repo}).encode())
        if parts[0] == "api" and len(parts) >= 6 and parts[4] in ("preupload", "commit", "branch"):
            kind, repo, revision = parts[1], "/".join(parts[2:4]), "/".join(parts[5:]) or "main"
            if parts[4] == "branch":
                return self._send(200, b"{}")
            if parts[4] == "preupload":  # every file sent inline (the Hub would send large ones through LFS/Xet)
                files = [
                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                    for f in json.loads(body)["files"]
                ]
                return self._send(200, json.dumps({"files": files}).encode())
            target = self.uploaded.setdefault(f"{kind}/{repo}@{revision}", {})
            for line in body.decode().splitlines():
                operation = json.loads(line)
                if operation["key"] == "file":
                    target[operation["value"]["path"]] = base64.b64decode(operation["value"]["content"])
            return self._send(
                200,
                json.dumps(
                    {"commitUrl": f"http://{self.headers['Host']}/{repo}/commit/{COMMIT}", "commitOid": COMMIT}
                ).encode(),
            )
        self._send(404, b"{}")

    def _api(self, parts: list[str], kind: str = ""):
        folder = self.repos.get(kind + "/".join(parts[:2]))
        if folder is None:
            return self._send(404, b"{}", {"X-Error-Code": "RepoNotFound"})
        if len(parts) > 2 and parts[2] == "tree":  # tree/{revision}/{path}: a folder's entries (all below: recursive)
            where = folder.joinpath(*parts[4:])
            if not where.is_dir():
                return self._send(404, b"{}", {"X-Error-Code": "EntryNotFound"})
            found = where.rglob("*") if "recursive=true" in self.path.lower() else where.iterdir()
            entries = [
                {"type": "file" if p.is_file() else "directory", "path": str(p.relative_to(folder)), "oid": "0" * 40}
                | ({"size": p.stat().st_size} if p.is_file() else {})
                for p in sorted(found)
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
    """Serve `repos` (repo id -> folder); yield (the endpoint for HF_ENDPOINT, the handler class, whose `requests`,
    `created` and `uploaded` say what was asked and sent)."""
    handler = type("Handler", (HubHandler,), {"repos": dict(repos), "requests": [], "created": {}, "uploaded": {}})
    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{site.server_address[1]}", handler
    finally:
        site.shutdown()
        site.server_close()


def reaching(endpoint: str, home: Path, **extra: str) -> dict[str, str]:
    """This process's environment for a child that goes online to the stand-in, with fresh caches in `home` (the
    Hub's, and transformers' modules cache, which would otherwise keep code copied from a repo of the same name)."""
    return {
        **os.environ,
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(home),
        "HF_MODULES_CACHE": str(home / "modules"),
        "HF_HUB_OFFLINE": "0",
        **extra,
    }
