"""A small Hugging Face hub on 127.0.0.1 for tests: enough of its HTTP API for the real
huggingface_hub client (repo info, recursive tree listing with LFS sha256, resolve with
HEAD and ranges), private and gated repos that need a token, and files whose connection
drops half way. Every request is recorded (method, path, lower-cased headers) for assertions.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from fnmatch import fnmatch
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

LFS_PATTERNS = ("*.safetensors", "*.bin", "*.wav", "*.parquet")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    token: str | None = None  # requests must carry "Authorization: Bearer <token>"
    gated: bool = False  # without the token: 401 GatedRepo rather than 401 RepoNotFound
    drop: set[str] = field(default_factory=set)  # paths whose GET body is cut off half way
    corrupt: set[str] = field(default_factory=set)  # paths served with one byte flipped

    def add_commit(self, files: dict[str, bytes], ref: str = "main") -> str:
        sha = hashlib.sha1(json.dumps(sorted((k, git_blob_id(v)) for k, v in files.items())).encode())
        sha.update(str(len(self.commits)).encode())
        commit = sha.hexdigest()
        self.commits[commit] = dict(files)
        self.refs[ref] = commit
        return commit

    def resolve(self, rev: str) -> str | None:
        if rev in self.commits:
            return rev
        return self.refs.get(rev)


class FakeHub:
    """Start with ``with FakeHub() as hub:``; ``hub.url`` is the HF_ENDPOINT to use."""

    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def add_repo(self, repo_id: str, files: dict[str, bytes], repo_type: str = "model", **kw) -> Repo:
        repo = Repo(repo_id, repo_type, **kw)
        repo.add_commit(files)
        self.repos[(repo_type, repo_id)] = repo
        return repo

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve_params(hub: FakeHub, params: dict, gated: set[str] = frozenset(), token: str | None = None) -> None:
    """A repo for every model and dataset in ``params`` with a ``repo``, at its pinned revision,
    holding one small file per allow pattern; the repos in ``gated`` need ``token``."""
    for kind, section in (("model", "models"), ("dataset", "datasets")):
        for spec in params[section].values():
            if not spec.get("repo"):
                continue
            files = {}
            for pattern in spec.get("allow_patterns") or ["*.json"]:
                path = pattern.replace("*", "x")
                assert fnmatch(path, pattern)
                files[path] = f"{spec['repo']} {path}\n".encode() * (3000 if "safetensors" in path else 1)
            repo = hub.add_repo(
                spec["repo"], files, repo_type=kind, token=token if spec["repo"] in gated else None,
                gated=spec["repo"] in gated,
            )  # fmt: skip
            repo.commits = {spec["revision"]: files}  # the commit params.yaml pins
            repo.refs = {"main": spec["revision"]}


def _make_handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def do_HEAD(self) -> None:
            self._route(head=True)

        def do_GET(self) -> None:
            self._route(head=False)

        # -- routing -------------------------------------------------------------------
        def _route(self, head: bool) -> None:
            path = urlsplit(self.path).path
            hub.requests.append((self.command, path, {k.lower(): v for k, v in self.headers.items()}))
            parts = [unquote(p) for p in path.strip("/").split("/")]
            if parts[:1] == ["api"] and len(parts) >= 6:
                repo_type = parts[1].rstrip("s")
                repo = self._repo(repo_type, f"{parts[2]}/{parts[3]}")
                if repo is None:
                    return
                if parts[4] == "revision":
                    return self._revision(repo, "/".join(parts[5:]))
                if parts[4] == "tree":
                    return self._tree(repo, parts[5], "/".join(parts[6:]))
            resolve_at = 3 if parts[:1] == ["datasets"] else 2
            repo_type = "dataset" if resolve_at == 3 else "model"
            offset = 1 if repo_type == "dataset" else 0
            if len(parts) > resolve_at + 1 and parts[resolve_at] == "resolve":
                repo = self._repo(repo_type, f"{parts[offset]}/{parts[offset + 1]}")
                if repo is None:
                    return
                return self._file(repo, parts[resolve_at + 1], "/".join(parts[resolve_at + 2 :]), head)
            self._error(404, "EntryNotFound", "no such route")

        def _repo(self, repo_type: str, repo_id: str) -> Repo | None:
            repo = hub.repos.get((repo_type, repo_id))
            if repo is None:
                self._error(401, "RepoNotFound", "Repository not found")
                return None
            if repo.token is not None and self.headers.get("Authorization") != f"Bearer {repo.token}":
                if repo.gated:
                    self._error(401, "GatedRepo", "Access to this repo is restricted")
                else:
                    self._error(401, "RepoNotFound", "Repository not found")
                return None
            return repo

        # -- endpoints -----------------------------------------------------------------
        def _revision(self, repo: Repo, rev: str) -> None:
            commit = repo.resolve(rev)
            if commit is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            files = repo.commits[commit]
            self._json(
                {
                    "_id": "0" * 24,
                    "id": repo.repo_id,
                    "sha": commit,
                    "private": repo.token is not None,
                    "gated": "manual" if repo.gated else False,
                    "siblings": [{"rfilename": p} for p in sorted(files)],
                },
                commit,
            )

        def _tree(self, repo: Repo, rev: str, prefix: str) -> None:
            commit = repo.resolve(rev)
            if commit is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            entries, folders = [], set()
            for path, data in sorted(repo.commits[commit].items()):
                if prefix and not path.startswith(prefix.rstrip("/") + "/"):
                    continue
                entry = {"type": "file", "oid": git_blob_id(data), "size": len(data), "path": path}
                if _is_lfs(path):
                    sha = hashlib.sha256(data).hexdigest()
                    entry["lfs"] = {"oid": sha, "size": len(data), "pointerSize": 134}
                entries.append(entry)
                folders.update("/".join(path.split("/")[:i]) for i in range(1, path.count("/") + 1))
            dirs = [{"type": "directory", "oid": "0" * 40, "size": 0, "path": d} for d in sorted(folders)]
            self._json(dirs + entries, commit)

        def _file(self, repo: Repo, rev: str, path: str, head: bool) -> None:
            commit = repo.resolve(rev)
            if commit is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            data = repo.commits[commit].get(path)
            if data is None:
                return self._error(404, "EntryNotFound", f"{path} does not exist")
            etag = hashlib.sha256(data).hexdigest() if _is_lfs(path) else git_blob_id(data)
            start = 0
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes=") and not head:
                start = int(rng[6:].split("-")[0] or 0)
            body = data[start:]
            self.send_response(206 if start else 200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", f'"{etag}"')
            self.send_header("X-Repo-Commit", commit)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if head:
                return
            if path in repo.corrupt:
                body = bytes([body[0] ^ 0xFF]) + body[1:]
            if path in repo.drop:
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.wfile.write(body)

        # -- helpers -------------------------------------------------------------------
        def _json(self, payload, commit: str | None = None) -> None:
            body = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if commit:
                self.send_header("X-Repo-Commit", commit)
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, code: str, message: str) -> None:
            body = json.dumps({"error": message}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    return Handler


def _is_lfs(path: str) -> bool:
    return any(fnmatch(path, p) for p in LFS_PATTERNS)
