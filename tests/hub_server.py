"""A small in-memory Hugging Face Hub for tests: the API subset huggingface_hub 2.4 uses to push and pull a model.

    POST /api/repos/create                        create_repo (409 when it exists)
    POST /api/validate-yaml                       README.md metadata check before a commit
    POST /api/models/{repo}/branch/{branch}       create_branch
    POST /api/models/{repo}/preupload/{rev}       upload mode per file ("regular" or "lfs"), remote oid
    POST /{repo}.git/info/lfs/objects/batch       LFS batch API (basic transfer) -> PUT /_lfs/{oid}, verify
    POST /api/models/{repo}/commit/{rev}          NDJSON commit: header, file (base64), lfsFile, deletedFile
    GET  /api/models/{repo}[/revision/{rev}]      model_info / repo_info (sha, siblings, cardData)
    GET  /api/models/{repo}/tree/{rev}[/{path}]   list_repo_tree (recursive)
    HEAD|GET /{repo}/resolve/{rev}/{path}         downloads, with X-Repo-Commit and ETag / X-Linked-Etag

Errors carry the X-Error-Code headers huggingface_hub maps to its exceptions (RepoNotFound, RevisionNotFound,
EntryNotFound). Xet is not spoken: clients must run with HF_HUB_DISABLE_XET=1 (plain HTTP + LFS). Writes
need an `Authorization: Bearer` token; every request is logged in `HubState.requests`.

Run it alone for a manual check: `python tests/hub_server.py --port 8765`.
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

# Paths the Hub's default .gitattributes stores in LFS; binary samples and files over 10 MB go there too.
LFS_PATTERNS = (
    "*.safetensors",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.h5",
    "*.msgpack",
    "*.onnx",
    "*.model",
    "*.zip",
    "*.tar.*",
    "*.png",
    "*.jpg",
)
LFS_MIN_SIZE = 10 * 1024 * 1024
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
REPO_ID = re.compile(r"^(?:[\w\-.]{1,96}/)?[\w\-.]{1,96}$")
RELATIONS = ("adapter", "merge", "quantized", "finetune")


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class Blob:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def oid(self) -> str:
        """Git object id: of the pointer file for LFS blobs, as on the Hub."""
        return git_sha1(lfs_pointer(self.sha256, len(self.data))) if self.lfs else git_sha1(self.data)


@dataclass
class Commit:
    oid: str
    parent: str | None
    message: str
    files: dict[str, Blob]
    date: str


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        oid = self.branches.get(revision, revision)
        return self.commits.get(oid)


def metadata_of(readme: bytes) -> dict:
    """The YAML block at the top of a README.md ({} when there is none)."""
    text = readme.decode("utf-8", errors="replace")
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.DOTALL)
    if not match:
        return {}
    data = yaml.safe_load(match.group(1))
    return data if isinstance(data, dict) else {}


def validate_metadata(meta: dict) -> list[str]:
    """The checks the Hub makes that matter here: model ids are ids, not paths; known relation; list fields."""
    errors = []
    bases = meta.get("base_model")
    for base in [bases] if isinstance(bases, str) else bases or []:
        if not isinstance(base, str) or not REPO_ID.match(base) or base.startswith((".", "/")):
            errors.append(f'"base_model" must be a Hub model id, got {base!r}')
    relation = meta.get("base_model_relation")
    if relation is not None and relation not in RELATIONS:
        errors.append(f'"base_model_relation" must be one of {RELATIONS}, got {relation!r}')
    if relation is not None and not bases:
        errors.append('"base_model_relation" needs "base_model"')
    datasets = meta.get("datasets")
    for dataset in [datasets] if isinstance(datasets, str) else datasets or []:
        if not isinstance(dataset, str) or not REPO_ID.match(dataset):
            errors.append(f'"datasets" must hold Hub dataset ids, got {dataset!r}')
    for key in ("tags", "datasets"):
        if key in meta and not isinstance(meta[key], (list, str)):
            errors.append(f'"{key}" must be a list')
    return errors


class HubState:
    """Repos, LFS objects and the request log, shared by the handler threads."""

    def __init__(self, user: str = "user") -> None:
        self.user = user
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.tokens: set[str] = set()
        self.lock = threading.Lock()
        self._counter = 0

    def new_commit(self, repo: Repo, parent: str | None, message: str, files: dict[str, Blob]) -> Commit:
        self._counter += 1
        seed = f"{repo.repo_id}:{parent}:{message}:{self._counter}:{sorted((p, b.oid) for p, b in files.items())}"
        date = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), parent, message, files, date)
        repo.commits[commit.oid] = commit
        return commit

    def create_repo(self, repo_id: str, private: bool = False) -> Repo:
        repo = Repo(repo_id, private)
        first = self.new_commit(repo, None, "initial commit", {".gitattributes": Blob(GITATTRIBUTES, False)})
        repo.branches["main"] = first.oid
        self.repos[repo_id] = repo
        return repo

    def seed_folder(self, repo_id: str, folder: str | Path, private: bool = False) -> Repo:
        """Put a local folder on the server as a repo (e.g. a base model), without going through HTTP."""
        repo = self.create_repo(repo_id, private)
        files = dict(repo.resolve("main").files)
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                rel = path.relative_to(folder).as_posix()
                data = path.read_bytes()
                files[rel] = Blob(data, is_lfs(rel, data[:512], len(data)))
        repo.branches["main"] = self.new_commit(repo, repo.branches["main"], "seed", files).oid
        return repo

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """Path -> content at a revision, for assertions."""
        return {p: b.data for p, b in self.repos[repo_id].resolve(revision).files.items()}


def is_lfs(path: str, sample: bytes, size: int) -> bool:
    name = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(name, p) for p in LFS_PATTERNS) or size >= LFS_MIN_SIZE or b"\0" in sample


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects; every response sets Content-Length
    state: HubState  # set on the subclass made per server

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet: the request log is kept in state
        pass

    # ------------------------------------------------------------------ plumbing

    @property
    def base(self) -> str:
        return f"http://{self.headers.get('Host')}"

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, payload, headers: dict | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, status: int, code: str | None, message: str, headers: dict | None = None, head=False) -> None:
        extra = {"X-Error-Message": message, **({"X-Error-Code": code} if code else {}), **(headers or {})}
        body = json.dumps({"error": message}).encode()
        self._send(status, body, {"Content-Type": "application/json", **extra}, head=head)

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        if token:
            self.state.tokens.add(token)
        return token

    def _repo(self, repo_id: str, *, write: bool = False, head: bool = False) -> Repo | None:
        repo = self.state.repos.get(repo_id)
        token = self._token()
        if repo is None or (repo.private and not token) or (write and not token):
            self._error(404 if repo is None or not write else 401, "RepoNotFound", "Repository not found", head=head)
            return None
        return repo

    def _repo_at(self, repo_id: str, revision: str, *, write: bool = False, head: bool = False):
        """(repo, commit) at `revision`, or None once the 404/401 answer is sent."""
        repo = self._repo(repo_id, write=write, head=head)
        if repo is None:
            return None
        commit = repo.resolve(revision)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head=head)
            return None
        return repo, commit

    def _route(self, method: str) -> None:
        split = urlsplit(self.path)
        self.query = parse_qs(split.query)
        raw = split.path
        self.state.requests.append((method, raw))
        parts = [unquote(p) for p in raw.strip("/").split("/")]
        with self.state.lock:
            try:
                self._dispatch(method, raw, parts)
            except Exception as err:  # surface server bugs to the client instead of hanging it
                self._error(500, None, f"test hub error: {err!r}")

    def do_GET(self) -> None:  # noqa: N802
        self._route("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._route("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._route("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._route("PUT")

    # ------------------------------------------------------------------ endpoints

    def _dispatch(self, method: str, raw: str, parts: list[str]) -> None:
        if method == "POST" and parts == ["api", "repos", "create"]:
            return self._create_repo()
        if method == "POST" and parts == ["api", "validate-yaml"]:
            return self._validate_yaml()
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id = "/".join(parts[2:4])
            rest = parts[4:]
            if method == "GET" and not rest:
                return self._info(repo_id, "main")
            if method == "GET" and rest[0] == "revision" and len(rest) == 2:
                return self._info(repo_id, rest[1])
            if method == "GET" and rest[0] == "tree" and len(rest) >= 2:
                return self._tree(repo_id, rest[1], "/".join(rest[2:]))
            if method == "POST" and rest[0] == "preupload" and len(rest) == 2:
                return self._preupload(repo_id, rest[1])
            if method == "POST" and rest[0] == "commit" and len(rest) == 2:
                return self._commit(repo_id, rest[1])
            if method == "POST" and rest[0] == "branch" and len(rest) == 2:
                return self._branch(repo_id, rest[1])
        if method == "POST" and raw.endswith(".git/info/lfs/objects/batch"):
            return self._lfs_batch()
        if parts[0] == "_lfs" and len(parts) >= 2:
            return self._lfs_object(method, parts[1], verify=parts[2:] == ["verify"])
        if method in ("GET", "HEAD") and len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]), head=method == "HEAD")
        self._error(404, None, f"test hub: no route for {method} {raw}")

    def _create_repo(self) -> None:
        if not self._token():
            return self._error(401, None, "Invalid credentials in Authorization header")
        payload = json.loads(self._body())
        if payload.get("type", "model") != "model":
            return self._error(400, None, "this test hub only holds model repos")
        repo_id = f"{payload.get('organization') or self.state.user}/{payload['name']}"
        url = f"{self.base}/{repo_id}"
        if repo_id in self.state.repos:
            return self._json(409, {"error": "You already created this model repo", "url": url})
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        self.state.create_repo(repo_id, private)
        self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _validate_yaml(self) -> None:
        payload = json.loads(self._body())
        try:
            meta = metadata_of(payload["content"].encode())
        except yaml.YAMLError as err:
            return self._json(400, {"errors": [{"message": f"Invalid YAML: {err}"}]})
        errors = validate_metadata(meta)
        if errors:
            return self._json(400, {"errors": [{"message": m} for m in errors]})
        warnings = [] if meta else [{"message": "Empty or missing yaml metadata in repo card"}]
        self._json(200, {"errors": [], "warnings": warnings})

    def _info(self, repo_id: str, revision: str) -> None:
        found = self._repo_at(repo_id, revision)
        if found is None:
            return
        repo, commit = found
        readme = commit.files.get("README.md")
        meta = metadata_of(readme.data) if readme else {}
        self._json(
            200,
            {
                "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0],
                "sha": commit.oid,
                "lastModified": commit.date,
                "createdAt": repo.commits[min(repo.commits, key=lambda o: repo.commits[o].date)].date,
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": list(meta.get("tags") or []),
                "pipeline_tag": meta.get("pipeline_tag"),
                "library_name": meta.get("library_name"),
                "cardData": meta or None,
                "siblings": [{"rfilename": p} for p in sorted(commit.files)],
            },
        )

    def _tree(self, repo_id: str, revision: str, path: str) -> None:
        found = self._repo_at(repo_id, revision)
        if found is None:
            return
        repo, commit = found
        recursive = self.query.get("recursive", ["false"])[0].lower() == "true"
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        entries, folders = [], set()
        for file_path, blob in sorted(commit.files.items()):
            if not file_path.startswith(prefix):
                continue
            rel_parts = file_path[len(prefix) :].split("/")
            for depth in range(1, len(rel_parts)):
                if recursive or depth == 1:
                    folders.add(prefix + "/".join(rel_parts[:depth]))
            if recursive or len(rel_parts) == 1:
                entry = {"type": "file", "oid": blob.oid, "size": len(blob.data), "path": file_path}
                if blob.lfs:
                    pointer = lfs_pointer(blob.sha256, len(blob.data))
                    entry["lfs"] = {"oid": blob.sha256, "size": len(blob.data), "pointerSize": len(pointer)}
                entries.append(entry)
        if prefix and not entries and not folders:
            return self._error(404, "EntryNotFound", f"{path} does not exist on {revision}")
        dirs = [{"type": "directory", "oid": git_sha1(f.encode()), "size": 0, "path": f} for f in sorted(folders)]
        self._json(200, dirs + entries)

    def _preupload(self, repo_id: str, revision: str) -> None:
        found = self._repo_at(repo_id, revision, write=True)
        if found is None:
            return
        repo, commit = found
        files = []
        for item in json.loads(self._body())["files"]:
            sample = base64.b64decode(item["sample"])
            lfs = is_lfs(item["path"], sample, item["size"])
            existing = commit.files.get(item["path"])
            oid = None
            if existing is not None and existing.lfs == lfs:
                oid = existing.sha256 if lfs else existing.oid  # what the client compares with its local oid
            files.append(
                {"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
            )
        self._json(200, {"files": files, "commitOid": commit.oid})

    def _lfs_batch(self) -> None:
        if not self._token():
            return self._error(401, None, "Invalid credentials in Authorization header")
        payload = json.loads(self._body())
        objects = []
        for obj in payload["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.state.lfs:  # already stored => no actions, the client skips it
                href = f"{self.base}/_lfs/{obj['oid']}"
                entry["actions"] = {"upload": {"href": href}, "verify": {"href": f"{href}/verify"}}
            objects.append(entry)
        self._json(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def _lfs_object(self, method: str, oid: str, verify: bool) -> None:
        if method == "PUT" and not verify:
            data = self._body()
            if hashlib.sha256(data).hexdigest() != oid:
                return self._error(400, None, "sha256 mismatch")
            self.state.lfs[oid] = data
            return self._send(200)
        if method == "POST" and verify:
            payload = json.loads(self._body())
            ok = oid in self.state.lfs and len(self.state.lfs[oid]) == payload.get("size")
            return self._json(200, {"ok": True}) if ok else self._error(404, None, "object not uploaded")
        self._error(405, None, "method not allowed")

    def _commit(self, repo_id: str, revision: str) -> None:
        repo = self._repo(repo_id, write=True)
        if repo is None:
            return
        if self.query.get("create_pr"):
            return self._error(400, None, "this test hub does not open pull requests")
        if self.headers.get("Content-Type") != "application/x-ndjson":
            return self._error(400, None, "expected application/x-ndjson")
        if revision not in repo.branches:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        parent = repo.resolve(revision)
        files = dict(parent.files)
        header = None
        for line in self._body().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
                if value.get("parentCommit") and value["parentCommit"] != parent.oid:
                    return self._error(412, None, "parentCommit is not the head of the branch")
            elif key == "file":
                files[value["path"]] = Blob(base64.b64decode(value["content"]), False)
            elif key == "lfsFile":
                if value["oid"] not in self.state.lfs:
                    return self._error(400, None, f"LFS object {value['oid']} of {value['path']} was not uploaded")
                files[value["path"]] = Blob(self.state.lfs[value["oid"]], True)
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    return self._error(404, "EntryNotFound", "A file with this name doesn't exist")
            elif key == "deletedFolder":
                files = {p: b for p, b in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
            else:
                return self._error(400, None, f"unknown commit operation {key}")
        if header is None or not header.get("summary"):
            return self._error(400, None, "missing commit header")
        if "README.md" in files:
            errors = validate_metadata(metadata_of(files["README.md"].data))
            if errors:
                return self._error(400, None, "; ".join(errors))
        commit = self.state.new_commit(repo, parent.oid, header["summary"], files)
        repo.branches[revision] = commit.oid
        self._json(
            200,
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{self.base}/{repo_id}/commit/{commit.oid}",
                "pullRequestUrl": None,
            },
        )

    def _branch(self, repo_id: str, branch: str) -> None:
        repo = self._repo(repo_id, write=True)
        if repo is None:
            return
        payload = json.loads(self._body() or b"{}")
        if branch in repo.branches:
            return self._error(409, None, f"Reference already exists: refs/heads/{branch}")
        start = repo.resolve(payload.get("startingPoint") or "main")
        if start is None:
            return self._error(404, "RevisionNotFound", "Invalid starting point")
        repo.branches[branch] = start.oid
        self._send(200, b"{}", {"Content-Type": "application/json"})

    def _resolve(self, repo_id: str, revision: str, path: str, head: bool) -> None:
        found = self._repo_at(repo_id, revision, head=head)
        if found is None:
            return
        repo, commit = found
        blob = commit.files.get(path)
        if blob is None:
            headers = {"X-Repo-Commit": commit.oid}
            return self._error(404, "EntryNotFound", f"{path} does not exist", headers=headers, head=head)
        headers = {"X-Repo-Commit": commit.oid, "Content-Type": "application/octet-stream"}
        if blob.lfs:  # the Hub answers LFS files with the content's sha256 (and a CDN redirect, not needed here)
            headers.update(
                {"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": len(blob.data), "ETag": f'"{blob.sha256}"'}
            )
        else:
            headers["ETag"] = f'"{blob.oid}"'
        self._send(200, blob.data, headers, head=head)


class HubServer:
    """A HubState served on 127.0.0.1 from a daemon thread: `with HubServer() as hub: hub.url`."""

    def __init__(self, port: int = 0, user: str = "user") -> None:
        self.state = HubState(user)
        handler = type("BoundHandler", (Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="test-hub", daemon=True)

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the test Hub until interrupted.")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--seed",
        nargs=2,
        action="append",
        metavar=("REPO_ID", "FOLDER"),
        default=[],
        help="serve a local folder as a repo, e.g. a base model",
    )
    args = parser.parse_args()
    with HubServer(args.port) as hub:
        for repo_id, folder in args.seed:
            hub.state.seed_folder(repo_id, folder)
        print(f"test hub on {hub.url} (HF_ENDPOINT={hub.url} HF_HUB_DISABLE_XET=1)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
