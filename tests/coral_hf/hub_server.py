"""A small in-memory Hugging Face Hub on 127.0.0.1 for the publisher and importer tests.

It answers the requests ``huggingface_hub`` 2.4 makes for regular (non-LFS,
non-Xet) uploads and downloads of model repos, as read from its source:

- ``POST /api/repos/create`` (``create_repo``; 409 when it exists),
- ``POST /api/models/{id}/branch/{branch}`` (``create_branch``),
- ``POST /api/validate-yaml`` (``create_commit`` checks a README's metadata),
- ``POST /api/models/{id}/preupload/{rev}`` (answers ``uploadMode: regular`` for
  every file, so no LFS or Xet transfer is ever asked for),
- ``POST /api/models/{id}/commit/{rev}`` (the NDJSON commit: header, base64 files),
- ``GET /api/models/{id}/revision/{rev}`` (``repo_info`` / ``model_info``),
- ``GET /api/models/{id}/tree/{rev}`` (``list_repo_tree``, one page),
- ``HEAD`` / ``GET /{id}/resolve/{rev}/{path}`` (``hf_hub_download``).

Anything else is answered 404 and recorded in ``unhandled``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

_ID = r"(?P<repo>[^/]+/[^/]+)"


def git_blob_id(data: bytes) -> str:
    """The git object id of a file's content (what the Hub calls its ``oid``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class HubCommit:
    oid: str
    files: dict[str, bytes]
    summary: str
    description: str
    parent: str | None


@dataclass
class HubRepo:
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, HubCommit] = field(default_factory=dict)

    def resolve(self, revision: str) -> HubCommit | None:
        oid = self.branches.get(revision, revision)
        return self.commits.get(oid)


class LocalHub:
    """The server; ``endpoint`` is its URL. Use as a context manager."""

    def __init__(self) -> None:
        self.repos: dict[str, HubRepo] = {}
        self.requests: list[str] = []
        self.unhandled: list[str] = []
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hub._handle(self, "GET")

            def do_HEAD(self) -> None:
                hub._handle(self, "HEAD")

            def do_POST(self) -> None:
                hub._handle(self, "POST")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> LocalHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- dispatch ------------------------------------------------------------------

    def _handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        path = urlsplit(request.path).path
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        self.requests.append(f"{method} {path}")
        routes = [
            ("POST", r"/api/repos/create", self._create_repo),
            ("POST", r"/api/validate-yaml", self._validate_yaml),
            ("POST", rf"/api/models/{_ID}/branch/(?P<rev>[^/]+)", self._create_branch),
            ("POST", rf"/api/models/{_ID}/preupload/(?P<rev>[^/]+)", self._preupload),
            ("POST", rf"/api/models/{_ID}/commit/(?P<rev>[^/]+)", self._commit),
            ("GET", rf"/api/models/{_ID}/revision/(?P<rev>[^/]+)", self._info),
            ("GET", rf"/api/models/{_ID}/tree/(?P<rev>[^/]+)", self._tree),
            ("GET", rf"/{_ID}/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self._resolve),
            ("HEAD", rf"/{_ID}/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self._resolve),
        ]
        for verb, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if verb == method and match:
                args = {key: unquote(value) for key, value in match.groupdict().items()}
                with self._lock:
                    status, headers, payload = handler(body=body, **args)
                break
        else:
            self.unhandled.append(f"{method} {path}")
            status, headers, payload = 404, {}, {"error": f"no route for {method} {path}"}
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        if not isinstance(payload, bytes):
            headers = {"Content-Type": "application/json", **headers}
        if status >= 400 and "X-Error-Message" not in headers:
            headers["X-Error-Message"] = (
                str(payload.get("error", "")) if isinstance(payload, dict) else ""
            )
        request.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(data))}.items():
            request.send_header(key, value)
        request.end_headers()
        if method != "HEAD":
            request.wfile.write(data)

    # -- endpoints -----------------------------------------------------------------

    def _create_repo(self, body: bytes) -> tuple[int, dict[str, str], Any]:
        request = json.loads(body)
        repo_id = f"{request['organization']}/{request['name']}"
        url = {"url": f"{self.endpoint}/{repo_id}", "name": repo_id}
        if repo_id in self.repos:
            return 409, {}, {"error": "You already created this model repo", **url}
        first = HubCommit(_oid(repo_id, "initial"), {}, "initial commit", "", None)
        self.repos[repo_id] = HubRepo({"main": first.oid}, {first.oid: first})
        return 200, {}, url

    def _validate_yaml(self, body: bytes) -> tuple[int, dict[str, str], Any]:
        return 200, {}, {"errors": [], "warnings": []}

    def _repo(self, repo: str) -> HubRepo | None:
        return self.repos.get(repo)

    def _create_branch(self, body: bytes, repo: str, rev: str) -> tuple[int, dict[str, str], Any]:
        hub_repo = self._repo(repo)
        if hub_repo is None:
            return 404, {"X-Error-Code": "RepoNotFound"}, {"error": "Repository not found"}
        if rev in hub_repo.branches:
            return 409, {}, {"error": "Reference already exists"}
        start = (json.loads(body) if body else {}).get("startingPoint") or "main"
        hub_repo.branches[rev] = hub_repo.branches.get(start, start)
        return 200, {}, {}

    def _preupload(self, body: bytes, repo: str, rev: str) -> tuple[int, dict[str, str], Any]:
        hub_repo = self._repo(repo)
        if hub_repo is None:
            return 404, {"X-Error-Code": "RepoNotFound"}, {"error": "Repository not found"}
        current = hub_repo.resolve(rev)
        files = []
        for item in json.loads(body)["files"]:
            existing = current.files.get(item["path"]) if current else None
            files.append(
                {
                    "path": item["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": git_blob_id(existing) if existing is not None else None,
                }
            )
        return 200, {}, {"files": files, "commitOid": current.oid if current else None}

    def _commit(self, body: bytes, repo: str, rev: str) -> tuple[int, dict[str, str], Any]:
        hub_repo = self._repo(repo)
        if hub_repo is None:
            return 404, {"X-Error-Code": "RepoNotFound"}, {"error": "Repository not found"}
        parent = hub_repo.resolve(rev)
        files = dict(parent.files) if parent else {}
        header: dict[str, Any] = {}
        for line in body.splitlines():
            item = json.loads(line)
            value = item["value"]
            if item["key"] == "header":
                header = value
            elif item["key"] == "file" and value.get("encoding") == "base64":
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "deletedFile":
                files.pop(value["path"], None)
            else:
                return 400, {}, {"error": f"unsupported commit operation {item['key']!r}"}
        oid = _oid(repo, rev, header.get("summary", ""), *sorted(files), str(len(hub_repo.commits)))
        hub_repo.commits[oid] = HubCommit(
            oid,
            files,
            header.get("summary", ""),
            header.get("description", ""),
            parent.oid if parent else None,
        )
        hub_repo.branches[rev] = oid
        url = f"{self.endpoint}/{repo}/commit/{oid}"
        return 200, {}, {"commitUrl": url, "commitOid": oid, "pullRequestUrl": None}

    def _info(self, body: bytes, repo: str, rev: str) -> tuple[int, dict[str, str], Any]:
        hub_repo = self._repo(repo)
        if hub_repo is None:
            return 404, {"X-Error-Code": "RepoNotFound"}, {"error": "Repository not found"}
        commit = hub_repo.resolve(rev)
        if commit is None:
            return 404, {"X-Error-Code": "RevisionNotFound"}, {"error": f"Invalid rev id: {rev}"}
        siblings = [{"rfilename": name} for name in sorted(commit.files)]
        return 200, {}, {"id": repo, "modelId": repo, "sha": commit.oid, "siblings": siblings}

    def _tree(self, body: bytes, repo: str, rev: str) -> tuple[int, dict[str, str], Any]:
        hub_repo = self._repo(repo)
        commit = hub_repo.resolve(rev) if hub_repo else None
        if commit is None:
            return 404, {"X-Error-Code": "RevisionNotFound"}, {"error": f"Invalid rev id: {rev}"}
        return (
            200,
            {},
            [
                {"type": "file", "path": name, "size": len(data), "oid": git_blob_id(data)}
                for name, data in sorted(commit.files.items())
            ],
        )

    def _resolve(
        self, body: bytes, repo: str, rev: str, file: str
    ) -> tuple[int, dict[str, str], Any]:
        hub_repo = self._repo(repo)
        commit = hub_repo.resolve(rev) if hub_repo else None
        if commit is None:
            return 404, {"X-Error-Code": "RevisionNotFound"}, {"error": f"Invalid rev id: {rev}"}
        if file not in commit.files:
            return 404, {"X-Error-Code": "EntryNotFound"}, {"error": f"{file} not found"}
        data = commit.files[file]
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{git_blob_id(data)}"'}
        return 200, {"Content-Type": "application/octet-stream", **headers}, data


def _oid(*parts: str) -> str:
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()
