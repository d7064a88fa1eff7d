"""A small HTTP server that speaks the part of the Hugging Face Hub's API that rigtune and huggingface_hub
call, for model repositories made of local folders. Tests reach it through HF_ENDPOINT.

  GET  /api/models/OWNER/NAME[/revision/REV][?blobs=true]   the repository listing (model_info)
  HEAD /OWNER/NAME/resolve/REV/FILE                         file metadata (hf_hub_download)
  GET  /OWNER/NAME/resolve/REV/FILE                         the file, with Range (206) support

Answers as the hub does: X-Repo-Commit, ETag (the git blob id, or the sha256 of an LFS file, with
X-Linked-Etag and X-Linked-Size), 401 with X-Error-Code GatedRepo for a gated repository without a
token, 404 with X-Error-Code RepoNotFound for a missing one. `cut` makes the next GETs of a file stop after
some bytes and drop the connection; `requests` records (method, path, Range header) of every request.

Switches for a broken or hostile mirror: on a Repo, `sha` (the commit its listing gives), `patch` (file name ->
{"blobId" or "lfs.sha256": value} put into that file's listing entry), `extra` (names listed besides the real
files), `blob_ids = False` (the listing gives names only, even to ?blobs=true), `header_etag` (file name -> the
ETag and X-Linked-Etag its resolve answers send) and `served` (file name -> the bytes sent instead of the real
ones, the headers unchanged); on the server, `ignore_range` (every GET answers 200 with the whole file).
"""
from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

LFS_SUFFIXES = (".safetensors",)


class Repo:
    def __init__(self, folder: Path, gated: bool = False):
        self.folder, self.gated = Path(folder), gated
        self.claimed: dict = {}  # file name -> the size the listing claims (a repository too big for the disk)
        self.sha: str | None = None          # hostile switches: see the module's docstring
        self.patch: dict = {}
        self.extra: list = []
        self.blob_ids = True
        self.header_etag: dict = {}
        self.served: dict = {}
        self.files = {}
        for p in sorted(self.folder.iterdir()):
            if p.is_file():
                data = p.read_bytes()
                lfs = p.name.endswith(LFS_SUFFIXES)
                etag = hashlib.sha256(data).hexdigest() if lfs else \
                    hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
                self.files[p.name] = {"data": data, "lfs": lfs, "etag": etag}
        self.commit = hashlib.sha1("".join(sorted(f["etag"] for f in self.files.values())).encode()).hexdigest()

    def listing(self, blobs: bool) -> dict:
        siblings = []
        for name, f in self.files.items():
            s = {"rfilename": name}
            if blobs and self.blob_ids:
                size = self.claimed.get(name, len(f["data"]))
                s.update(size=size, blobId=f["etag"] if not f["lfs"] else hashlib.sha1(name.encode()).hexdigest())
                if f["lfs"]:
                    s["lfs"] = {"size": size, "sha256": f["etag"], "pointerSize": 134}
            for key, value in self.patch.get(name, {}).items():
                *path, last = key.split(".")
                target = s
                for part in path:
                    target = target[part]
                target[last] = value
            siblings.append(s)
        siblings += [{"rfilename": name} for name in self.extra]
        return {"id": None, "modelId": None, "sha": self.sha or self.commit, "private": False,
                "gated": "manual" if self.gated else False, "siblings": siblings, "tags": []}


class HubServer:
    def __init__(self):
        self.repos: dict = {}
        self.requests: list = []
        self.cut: dict = {}        # file name -> (bytes to send before dropping, how many more times)
        self.ignore_range = False  # a server that answers a resumed request with 200 and the whole file
        self.token = "hf_test_token"
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                server.handle(self, head=True)

            def do_GET(self):
                server.handle(self, head=False)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def add(self, repo_id: str, folder: Path, gated: bool = False) -> Repo:
        self.repos[repo_id] = Repo(folder, gated)
        return self.repos[repo_id]

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    # ------------------------------------------------------------------ answers
    def _error(self, h, status: int, code: str, message: str, head: bool):
        body = json.dumps({"error": message}).encode()
        h.send_response(status)
        h.send_header("X-Error-Code", code)
        h.send_header("X-Error-Message", message)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def handle(self, h, head: bool):
        url = urlparse(h.path)
        path = unquote(url.path)
        self.requests.append((h.command, path, h.headers.get("Range")))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id = "/".join(parts[2:4])
            repo = self.repos.get(repo_id)
            if repo is None:
                return self._error(h, 404, "RepoNotFound", "Repository not found", head)
            body = repo.listing("blobs=true" in (url.query or ""))
            body["id"] = body["modelId"] = repo_id
            data = json.dumps(body).encode()
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            if not head:
                h.wfile.write(data)
            return
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id, name = "/".join(parts[:2]), "/".join(parts[4:])
            repo = self.repos.get(repo_id)
            if repo is None:
                return self._error(h, 404, "RepoNotFound", "Repository not found", head)
            if repo.gated and h.headers.get("Authorization") != f"Bearer {self.token}":
                return self._error(h, 401, "GatedRepo", "Access to model is restricted. You must have access "
                                                        "to it and be authenticated to access it.", head)
            f = repo.files.get(name)
            if f is None:
                return self._error(h, 404, "EntryNotFound", "Entry not found", head)
            return self._file(h, repo, f, head)
        return self._error(h, 404, "NotFound", "Not found", head)

    def _file(self, h, repo: Repo, f: dict, head: bool):
        name = next(n for n, v in repo.files.items() if v is f)
        data, start = f["data"], 0
        rng = h.headers.get("Range")
        if rng and rng.startswith("bytes=") and not self.ignore_range:
            start = int(rng[6:].split("-")[0] or 0)
        etag = repo.header_etag.get(name, f["etag"])
        h.send_response(206 if start else 200)
        h.send_header("X-Repo-Commit", repo.commit)
        h.send_header("ETag", f'"{etag}"')
        if f["lfs"]:
            h.send_header("X-Linked-Etag", f'"{etag}"')
            h.send_header("X-Linked-Size", str(len(data)))
        if not head:
            data = repo.served.get(name, data)
        h.send_header("Accept-Ranges", "bytes")
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.send_header("Content-Length", str(len(data) - start))
        h.end_headers()
        if head:
            return
        cut = self.cut.get(name)
        if cut and cut[1] > 0:
            self.cut[name] = (cut[0], cut[1] - 1)
            h.wfile.write(data[start:start + cut[0]])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)  # drop it mid-body, as a lost network does
            return
        h.wfile.write(data[start:])
