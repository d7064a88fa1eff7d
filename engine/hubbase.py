"""What engine.hub builds on, plain and small: where the hub and its cache are, its errors as one paragraph,
the checks every answer of an endpoint passes before it names a file (HF_ENDPOINT may point at a broken or
hostile mirror), and download progress as a line."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import BadInput, Failed

GIB = 1024 ** 3
HEX = re.compile(r"[0-9a-f]+")


def endpoint() -> str:
    from huggingface_hub import constants
    return constants.ENDPOINT.rstrip("/")


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE), as huggingface_hub read it."""
    from huggingface_hub import constants
    return bool(constants.HF_HUB_OFFLINE)


def cache_dir() -> Path:
    from huggingface_hub import constants
    return Path(constants.HF_HUB_CACHE)


def repo_folder(repo: str) -> Path:
    return cache_dir() / ("models--" + repo.replace("/", "--"))


def page(repo: str) -> str:
    return f"{endpoint()}/{repo}"


# ---------------------------------------------------------------------------- errors, in one paragraph

def explain(e: Exception, repo: str, key: str = "model.base") -> Exception:
    """The hub client's error as rigtune's: BadInput (exit 2) with what to do, or the error itself."""
    from huggingface_hub import errors as E
    if isinstance(e, E.GatedRepoError):
        return BadInput(f"{repo} is gated: accept its licence at {page(repo)} while logged in, then let this machine "
                        "download as you: run `hf auth login`, or set HF_TOKEN to a token with read access. "
                        "(If you have accepted, access may still be pending: the page says.)", key=key)
    if isinstance(e, E.RevisionNotFoundError):
        return BadInput(f"{repo} has no revision by that name ({page(repo)}/tree lists branches and tags); set "
                        "model.revision to a branch, tag or commit, or leave it empty.", key="model.revision")
    if isinstance(e, E.RepositoryNotFoundError):
        return BadInput(f"{repo} was not found on {endpoint()}. Check the spelling (an id is 'owner/name', as on "
                        "the model's page). A private repository needs `hf auth login` or HF_TOKEN.", key=key)
    if isinstance(e, (E.OfflineModeIsEnabled, E.LocalEntryNotFoundError)):
        why = "HF_HUB_OFFLINE is set" if offline() else f"{endpoint()} cannot be reached"
        return BadInput(f"{why} and {repo} is not in the Hugging Face cache ({cache_dir()}); run `rigtune fetch "
                        f"{repo}` once where the hub can be reached, or give a local model folder.", key=key)
    if isinstance(e, E.EntryNotFoundError):
        return BadInput(f"{repo} has no config.json: it is not a transformers model repository.", key=key)
    if isinstance(e, E.HfHubHTTPError):
        return Failed(f"the hub answered {getattr(e.response, 'status_code', '?')} for {repo}: "
                      f"{str(e).splitlines()[0][:200]}")
    if _is_network(e):
        return BadInput(f"{endpoint()} cannot be reached ({type(e).__name__}) and {repo} is not in the Hugging Face "
                        f"cache ({cache_dir()}); check the network (or HF_ENDPOINT), or give a local model folder.",
                        key=key)
    return e


def _http():
    """The HTTP library huggingface_hub uses (httpx2 in 2.x, httpx in 1.x)."""
    try:
        import httpx2 as http
    except ImportError:  # pragma: no cover - huggingface_hub 1.x
        import httpx as http
    return http


def _is_network(e: Exception) -> bool:
    return isinstance(e, (_http().TransportError, ConnectionError, TimeoutError))


# ---------------------------------------------------------------------------- the endpoint's answers, checked

MIRROR = "HF_ENDPOINT may point at a broken or hostile mirror; nothing was written outside the Hugging Face cache."


def shown(value, limit: int = 80) -> str:
    text = repr(value) if not isinstance(value, Exception) else str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def is_hex(value, sizes=(40, 64)) -> bool:
    return isinstance(value, str) and len(value) in sizes and HEX.fullmatch(value.lower()) is not None


def hex_hash(value, sizes, what: str) -> str:
    """`value` in lower case when it is a hex hash of one of `sizes` digits, else Failed naming the endpoint: the
    commit and the etags become folder and file names in the cache."""
    if not is_hex(value, sizes):
        digits = " or ".join(map(str, sizes))
        raise Failed(f"{endpoint()} answered {what} as {shown(value)}, which is not a {digits}-digit hex hash; "
                     f"rigtune names cache files after it and accepts nothing else. {MIRROR}")
    return value.lower()


def safe_name(name, repo: str) -> str:
    """A file name from the listing that stays where it is put: relative, no `..` (or `.`, or empty) part, no
    backslash, no NUL."""
    parts = name.split("/") if isinstance(name, str) else [""]
    if (not isinstance(name, str) or name.startswith("/") or "\\" in name or "\0" in name
            or any(p in ("", ".", "..") for p in parts)):
        raise Failed(f"{endpoint()} listed a file of {repo} named {shown(name)}: rigtune writes no file whose name "
                     f"is an absolute path or has a '..' part or a backslash. {MIRROR}")
    return name


def inside(path: Path, root: Path, repo: str) -> Path:
    """`path`, when it lies strictly under `root` (compared as written: the names were checked before, and a cache
    whose blobs/ the user moved elsewhere through a symlink stays usable); else Failed."""
    p, r = os.path.abspath(path), os.path.abspath(root)
    if p == r or os.path.commonpath([p, r]) != r:
        raise Failed(f"a download of {repo} from {endpoint()} would write {p}, outside {r}; refused. {MIRROR}")
    return path


# ---------------------------------------------------------------------------- progress

@dataclass
class Progress:
    bytes_done: int
    bytes_total: int
    files_done: int
    files_total: int
    speed: float        # bytes per second over the transfer so far (0 before the first second)

    @property
    def eta_s(self) -> float | None:
        return (self.bytes_total - self.bytes_done) / self.speed if self.speed > 0 else None


def fmt_progress(p: Progress) -> str:
    """'3.21 / 16.06 GiB  20%  112.4 MB/s  ETA 1 min 55 s  (2 of 7 files)'."""
    pct = 100 * p.bytes_done / p.bytes_total if p.bytes_total else 100
    speed = f"{p.speed / 1e6:6.1f} MB/s" if p.speed else "   -- MB/s"
    eta = p.eta_s
    eta_text = "--" if eta is None else (f"{eta:.0f} s" if eta < 60 else f"{eta // 60:.0f} min {eta % 60:02.0f} s"
                                         if eta < 3600 else f"{eta // 3600:.0f} h {eta % 3600 // 60:02.0f} min")
    return (f"{p.bytes_done / GIB:6.2f} / {p.bytes_total / GIB:.2f} GiB  {pct:3.0f}%  {speed}  ETA {eta_text}  "
            f"({p.files_done} of {p.files_total} files)")
