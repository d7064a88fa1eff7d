"""The Hugging Face Hub, as rigtune uses it: a model's config.json for planning (a few KB), the size of its
weights from the repository listing, and a download of the weights that shows progress, checks free space
first and resumes where it was cut off. Plain Python (huggingface_hub, no torch), so the command line and
the wizard can call it.

huggingface_hub does the talking: it honours HF_ENDPOINT, HF_TOKEN (or `hf auth login`), HF_HUB_OFFLINE and
HF_HOME / HF_HUB_CACHE, and turns the hub's answers into typed errors, which become one clear paragraph here.
The weights are fetched by rigtune itself into the hub's own cache layout (blobs/, snapshots/, refs/), so that
transformers and every other tool find them there: huggingface_hub (2.x) drops a partial file when a transfer
fails, and a 16 GB download cut off at 90% should not start again from zero. Each file goes to
blobs/<etag>.rigtune-part, continues with an HTTP Range request, and is checked against the listing's
sha256 (LFS files) or git blob id (small files) before it takes its place.

HF_ENDPOINT may point at a broken or hostile mirror, so its answers are untrusted input: the commit must be 40
hex digits and an etag 40 or 64 (the listing's blobId and lfs.sha256, or the resolve answer's X-Linked-Etag /
ETag where the listing lacks them), file names may hold no absolute path, `..` part or backslash, and every path
rigtune writes is checked to stay inside the repository's cache folder. Anything else is a clear error, before a
byte is written.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import quote

from .errors import BadInput, Failed
from .hubbase import (GIB, MIRROR, Progress, _http, _is_network, cache_dir, endpoint, explain, fmt_progress,  # noqa: F401
                      hex_hash, inside, is_hex, offline, page, repo_folder, safe_name, shown)

PART = ".rigtune-part"
CHUNK = 1 << 20
RETRIES = 3                     # a dropped connection is retried from where it stopped, this many times per file
SPACE_MARGIN = 1 * GIB          # kept free beyond the download
WEIGHTS = (".safetensors",)     # rigtune loads safetensors only: nothing pickled from the internet
NOT_WEIGHTS = (".bin", ".pth", ".pt", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx", ".ot", ".tflite", ".npz")


# ---------------------------------------------------------------------------- config and listing

def cached_file(repo: str, filename: str, revision: str | None = None) -> Path | None:
    from huggingface_hub import try_to_load_from_cache
    try:
        hit = try_to_load_from_cache(repo, filename, revision=revision)
    except ValueError:  # an id or revision the hub client refuses (HFValidationError): nothing of it is cached
        return None
    return Path(hit) if isinstance(hit, str) else None


def fetch_config(repo: str, revision: str | None = None, key: str = "--model") -> Path:
    """config.json of a hub model (from the cache when there; HF_HUB_OFFLINE honoured). The listing is asked
    first: it fails at once when the hub cannot be reached or the id does not exist. The file itself comes
    through rigtune's own checked download (`download` with a listing of that one file), never through a
    client that would name cache files after the endpoint's unchecked headers."""
    cached = cached_file(repo, "config.json", revision)
    if cached is not None:
        return cached
    info, commit = _checked_info(repo, revision, key)
    config = next((s for s in info.siblings or [] if s.rfilename == "config.json"), None)
    if config is None:
        raise BadInput(f"{repo} has no config.json: it is not a transformers model repository.", key=key)
    one = Listing(repo=repo, commit=commit, files=(_listed_file(repo, commit, config),))
    return download(repo, revision, key=key, lst=one) / "config.json"


_INFO: dict = {}


def model_info(repo: str, revision: str | None = None):
    """The hub's model_info with every file's size and hash, asked once per process for a repository: planning
    a hub id needs it twice (the fast-failing probe before config.json, then the weights' size)."""
    from huggingface_hub import HfApi
    key = (endpoint(), repo, revision)
    if key not in _INFO:
        _INFO[key] = HfApi(endpoint=endpoint()).model_info(repo, revision=revision, files_metadata=True)
    return _INFO[key]


@dataclass(frozen=True)
class File:
    name: str
    size: int
    etag: str          # the blob's name in the cache: the LFS sha256, or the git blob id of a small file
    lfs: bool


@dataclass(frozen=True)
class Listing:
    repo: str
    commit: str
    files: tuple       # of File: what rigtune downloads (weights, config, tokenizer)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def weight_bytes(self) -> int:
        return sum(f.size for f in self.files if f.name.endswith(WEIGHTS))


def wanted(names: list, trust_remote_code: bool = False) -> list:
    """The files a training run needs from a repository: the top-level safetensors weights (no consolidated.*
    copy), and the small files beside them (config, tokenizer, chat template, generation settings). Subfolders
    (original/, onnx/) and pickled or other-format weights are left out; .py files only with trust_remote_code."""
    out = []
    for name in names:
        if "/" in name or name.startswith("."):
            continue
        low = name.lower()
        if low.endswith(WEIGHTS):
            if not low.startswith("consolidated"):
                out.append(name)
        elif low.endswith(NOT_WEIGHTS) or (low.endswith(".py") and not trust_remote_code):
            continue
        elif low.endswith((".json", ".jinja", ".model", ".txt", ".tiktoken", ".py", ".vocab")):
            out.append(name)
    return out


def _checked_info(repo: str, revision: str | None, key: str):
    """The repository's listing and its commit (40 hex digits), or one clear error."""
    if offline():
        raise explain(_offline_error(), repo, key)
    from huggingface_hub.utils import logging as hf_logging
    hf_logging.set_verbosity_error()  # its retry notices are not for rigtune's users; the error below is
    try:
        info = model_info(repo, revision)
    except Exception as e:
        err = explain(e, repo, key)
        if err is e and isinstance(e, (KeyError, TypeError, ValueError)):  # JSON huggingface_hub could not read
            raise Failed(f"{endpoint()} answered a listing of {repo} that cannot be read ({type(e).__name__}: "
                         f"{shown(e)}). {MIRROR}") from None
        raise err from None
    return info, hex_hash(info.sha, (40,), f"the commit of {repo}")


def listing(repo: str, revision: str | None = None, trust_remote_code: bool = False,
            key: str = "model.base") -> Listing:
    """What `download` would fetch, with sizes, from the hub's listing (model_info with blobs)."""
    info, commit = _checked_info(repo, revision, key)
    siblings = info.siblings or []
    for s in siblings:
        safe_name(s.rfilename, repo)
    by_name = {s.rfilename: s for s in siblings}
    files = [_listed_file(repo, commit, by_name[name]) for name in wanted(list(by_name), trust_remote_code)]
    if not any(f.name.endswith(WEIGHTS) for f in files):
        raise BadInput(f"{repo} has no safetensors weights at its top level ({page(repo)}/tree/main); rigtune "
                       "loads safetensors only, never pickled weights from the internet.", key=key)
    return Listing(repo=repo, commit=commit, files=tuple(files))


# ---------------------------------------------------------------------------- listed files, checked (engine.hubbase)

def _listed_file(repo: str, commit: str, s) -> File:
    """One listed file, its size and etag checked; where the listing lacks them (a mirror that leaves out blob
    ids), they come from the resolve answer's headers, as huggingface_hub takes them."""
    name = s.rfilename
    lfs = s.lfs is not None
    etag = (s.lfs.sha256 if lfs else s.blob_id) or None
    size = s.lfs.size if lfs else s.size
    if etag is None or size is None:
        meta = _file_metadata(repo, commit, name)
        if etag is None:
            etag = meta.etag
            lfs = lfs or is_hex(etag, (64,))  # X-Linked-Etag: the sha256 of an LFS file; ETag: a git blob id
            where = f"the ETag / X-Linked-Etag of {repo}/{name}"
        else:
            where = f"the etag of {repo}/{name}"
        size = meta.size if size is None else size
    else:
        where = f"the {'lfs.sha256' if lfs else 'blobId'} of {repo}/{name}"
    etag = hex_hash(etag, (64,) if lfs else (40, 64), where)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise Failed(f"{endpoint()} answered the size of {repo}/{name} as {shown(size)}, not a byte count. {MIRROR}")
    return File(name=name, size=size, etag=etag, lfs=lfs)


def _url(repo: str, commit: str, name: str) -> str:
    return f"{endpoint()}/{repo}/resolve/{commit}/{quote(name)}"


def _file_metadata(repo: str, commit: str, name: str):
    """The resolve endpoint's answer to HEAD (etag, size), through huggingface_hub."""
    from huggingface_hub import get_hf_file_metadata
    try:
        return get_hf_file_metadata(_url(repo, commit, name), endpoint=endpoint())
    except Exception as e:
        raise _file_error(e, repo, name) from None


def _file_error(e: Exception, repo: str, name: str) -> Exception:
    from huggingface_hub.errors import EntryNotFoundError
    if isinstance(e, EntryNotFoundError):  # explain() would say "no config.json": it is another file here
        return Failed(f"{endpoint()} lists {name} in {repo} but answers 404 for it; {MIRROR}")
    return explain(e, repo)


def _ref(folder: Path, revision: str | None) -> Path | None:
    """refs/<revision> (a branch like refs/pr/1 nests), or None when the name would lead out of refs/."""
    name = revision or "main"
    parts = name.split("/")
    if "\\" in name or "\0" in name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        return None
    return folder / "refs" / name


def _offline_error():
    from huggingface_hub.errors import OfflineModeIsEnabled
    return OfflineModeIsEnabled("offline")


def cached_snapshot(repo: str, revision: str | None = None) -> Path | None:
    """The cached snapshot folder of a complete download (every weight file its index names, or a single
    model.safetensors), or None."""
    folder = repo_folder(repo)
    ref = _ref(folder, revision)
    if ref is None:
        return None
    try:
        commit = ref.read_text().strip() if ref.is_file() else (revision or "")
    except (OSError, UnicodeDecodeError):
        return None
    if not is_hex(commit, (40,)):  # refs/ names the snapshot folder: a commit hash, nothing else
        return None
    snap = folder / "snapshots" / commit.lower()
    if not (snap / "config.json").exists():
        return None
    index = snap / "model.safetensors.index.json"
    if index.exists():
        import json
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError):
            return None
        return snap if all((snap / s).exists() for s in shards) else None
    return snap if (snap / "model.safetensors").exists() else None


# ---------------------------------------------------------------------------- the download

def free_bytes(path: Path) -> int:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def missing(lst: Listing) -> tuple[list, int]:
    """(files not yet in the cache, bytes still to transfer counting what partial files hold)."""
    blobs = repo_folder(lst.repo) / "blobs"
    todo, left = [], 0
    for f in lst.files:
        if (blobs / f.etag).exists():
            continue
        todo.append(f)
        part = blobs / (f.etag + PART)
        left += f.size - (part.stat().st_size if part.exists() else 0)
    return todo, max(0, left)


def check_space(lst: Listing, key: str = "model.base") -> None:
    _, left = missing(lst)
    free = free_bytes(cache_dir())
    if left + SPACE_MARGIN > free:
        raise BadInput(f"{lst.repo} needs {left / GIB:.1f} GiB more in the Hugging Face cache ({cache_dir()}) and "
                       f"only {free / GIB:.1f} GiB is free there; free some space, or point HF_HOME (or "
                       "HF_HUB_CACHE) at a disk with room.", key=key)


def check_download(base: str, revision: str | None = None, trust_remote_code: bool = False) -> None:
    """Before a run of a hub model starts: it is reachable (not gated, not missing) and what is still to
    download fits on the cache disk (nothing to check when the cache has it all)."""
    if cached_snapshot(base, revision) is None:
        check_space(listing(base, revision, trust_remote_code))


def download(repo: str, revision: str | None = None, on_progress: Callable[[Progress], None] | None = None,
             trust_remote_code: bool = False, every_s: float = 0.5, key: str = "model.base",
             lst: Listing | None = None) -> Path:
    """The model's snapshot folder in the Hugging Face cache, downloading what is missing. Offline, the cached
    snapshot or a clear error. on_progress is called at most every `every_s` seconds and at each file's end.
    `lst`: the repository's listing when the caller already asked for it."""
    if _ref(repo_folder(repo), revision) is None:
        raise BadInput(f"{revision!r} is not a branch, tag or commit name; set model.revision to one, or leave it "
                       "empty.", key="model.revision")
    if offline():
        snap = cached_snapshot(repo, revision)
        if snap is None:
            raise explain(_offline_error(), repo, key)
        return snap
    try:
        lst = lst or listing(repo, revision, trust_remote_code, key)
    except BadInput:
        snap = cached_snapshot(repo, revision)
        if snap is not None:  # the hub cannot be reached (or refuses), but the weights are here already
            return snap
        raise
    folder = repo_folder(repo)
    blobs = inside(folder / "blobs", folder, repo)
    snap = inside(folder / "snapshots" / hex_hash(lst.commit, (40,), f"the commit of {repo}"), folder / "snapshots",
                  repo)
    ref = inside(_ref(folder, revision), folder / "refs", repo)
    for f in lst.files:  # every path this download writes, checked before the first byte
        inside(blobs / hex_hash(f.etag, (40, 64), f"the etag of {repo}/{f.name}"), blobs, repo)
        inside(blobs / (f.etag + PART), blobs, repo)
        inside(snap / safe_name(f.name, repo), snap, repo)
    check_space(lst, key)
    blobs.mkdir(parents=True, exist_ok=True)
    todo, left = missing(lst)
    total = lst.total_bytes
    done = total - left
    state = {"done": done, "files": len(lst.files) - len(todo), "t0": time.time(), "start": done, "last": 0.0}

    def report(force: bool = False):
        now = time.time()
        if on_progress is None or (not force and now - state["last"] < every_s):
            return
        state["last"] = now
        took = now - state["t0"]
        speed = (state["done"] - state["start"]) / took if took >= 1 else 0.0
        on_progress(Progress(state["done"], total, state["files"], len(lst.files), speed))

    report(force=True)
    for f in todo:
        _fetch_file(repo, lst.commit, f, blobs, state, report)
        state["files"] += 1
        report(force=True)
    snap.mkdir(parents=True, exist_ok=True)  # only once every blob is in: a failed download leaves no snapshot
    for f in lst.files:
        _link(snap / f.name, blobs / f.etag)
    if revision != lst.commit:
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(lst.commit)
    return snap


def _fetch_file(repo: str, commit: str, f: File, blobs: Path, state: dict, report) -> None:
    """One file into blobs/<etag>: continue the partial file, check its hash, then rename it into place."""
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status
    url = _url(repo, commit, f.name)
    part = blobs / (f.etag + PART)
    for attempt in range(RETRIES + 1):
        have = part.stat().st_size if part.exists() else 0
        if have > f.size:  # not this file's bytes: start again
            part.unlink()
            state["done"] -= have
            have = 0
        if have == f.size:
            break
        headers = build_hf_headers()
        headers["Accept-Encoding"] = "identity"
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            with get_session().stream("GET", url, headers=headers, follow_redirects=True, timeout=30) as r:
                if r.status_code >= 400:
                    r.read()
                    hf_raise_for_status(r)
                start = _range_start(r) if r.status_code == 206 else 0
                if have and start == 0:  # the server ignored the range (200, or 206 from byte 0): the whole file
                    state["done"] -= have
                    have = 0
                elif start != have:
                    raise Failed(f"{endpoint()} answered a request for {f.name} of {repo} from byte {have} with "
                                 f"{r.headers.get('Content-Range')!r}; what arrived before is kept. {MIRROR}")
                written = have
                with open(part, "ab" if have else "wb") as out:
                    for chunk in r.iter_bytes():  # as it arrives: a cut keeps every byte that came
                        chunk = chunk[:f.size + 1 - written]  # one byte past the size is enough to tell
                        out.write(chunk)
                        written += len(chunk)
                        state["done"] += len(chunk)
                        report()
                        if written > f.size:  # more than the listing's size: not this file (checked below)
                            break
                if written > f.size:
                    break
        except Exception as e:
            if isinstance(e, (Failed, BadInput)):
                raise
            if not _is_network(e) and not _is_cut(e):
                raise _file_error(e, repo, f.name) from None
            if attempt == RETRIES:
                got = part.stat().st_size if part.exists() else 0
                raise Failed(f"the download of {repo} was cut off in {f.name} at {got / GIB:.2f} of "
                             f"{f.size / GIB:.2f} GiB ({type(e).__name__}); what arrived is kept: run the same "
                             "command again to resume.") from None
            time.sleep(min(2 ** attempt, 10) * _RETRY_PAUSE)
    if not part.exists():  # an empty file: nothing was asked for
        part.write_bytes(b"")
    got = _digest(part, f)
    if got != f.etag:
        size = part.stat().st_size
        part.unlink()
        state["done"] -= size
        what = "sha256" if f.lfs else "git blob id"
        found = (f"{what} {got[:12]}..." if size == f.size else f"{size} bytes where the listing says {f.size}"
                 if size < f.size else f"more than the {f.size} bytes the listing says")
        raise Failed(f"{f.name} of {repo} from {endpoint()} does not match its {what} {f.etag[:12]}... ({found}); "
                     "the file was deleted and nothing was put in the cache for it. Run the same command again to "
                     "fetch it anew; if it happens again, the endpoint serves other bytes than its listing names.")
    os.replace(part, blobs / f.etag)


_RETRY_PAUSE = 1.0  # seconds, times 1, 2, 4 on the retries


def _range_start(r) -> int | None:
    """The first byte of a 206 answer (its Content-Range), or None when it does not say."""
    m = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (r.headers.get("Content-Range") or "").strip())
    return int(m.group(1)) if m else None


def _is_cut(e: Exception) -> bool:
    http = _http()
    return isinstance(e, (http.RemoteProtocolError, http.ReadError, http.ReadTimeout))


def _digest(path: Path, f: File) -> str:
    """The file's hash as its etag is made: the sha256 of an LFS file, the git blob id (sha1, or sha256 for a
    64-digit id) of a small one; "" when its size is not the listed one."""
    size = path.stat().st_size
    if size != f.size:
        return ""
    h = hashlib.sha256() if f.lfs else (hashlib.sha1 if len(f.etag) == 40 else hashlib.sha256)(b"blob %d\0" % size)
    with open(path, "rb") as src:
        while block := src.read(8 * CHUNK):
            h.update(block)
    return h.hexdigest()


def _link(pointer: Path, blob: Path) -> None:
    """snapshots/<commit>/<name> -> ../../blobs/<etag>, as huggingface_hub lays out its cache."""
    pointer.parent.mkdir(parents=True, exist_ok=True)
    if pointer.is_symlink() or pointer.exists():
        pointer.unlink()
    try:
        pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    except OSError:  # a filesystem without symlinks
        shutil.copyfile(blob, pointer)
