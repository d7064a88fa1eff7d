"""Checkpoints that are complete or absent, and that prove what they are.

checkpoints/step-NNNNNN/ holds the adapter (safetensors), the optimizer state (safetensors + JSON, nothing
pickled), trainer_state.json and manifest.json: every file's size and SHA-256, the training-shape keys of
the run file and a fingerprint of the dataset. It is written into .tmp-step-NNNNNN, fsynced, then renamed.
Resume takes the newest checkpoint whose manifest verifies, and refuses a changed dataset or shape.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

from .errors import BadInput
from .events import CHECKPOINTS

MANIFEST = "manifest.json"
# run-file keys that fix the data order, the optimizer state's shape or what the adapter means
SHAPE_KEYS = [("model", "base"), ("model", "revision"), ("model", "quantization"), ("lora", "r"),
              ("lora", "alpha"), ("lora", "target_modules"), ("data", "path"), ("data", "format"),
              ("data", "max_seq_len"), ("data", "packing"), ("data", "eval_fraction"), ("data", "train_on_prompt"),
              ("train", "optimizer"), ("train", "seed"), ("hardware", "num_processes"), ("hardware", "num_machines")]


class DiskFull(Exception):
    """A save ran out of space; the half-written directory is gone and the last good checkpoint is intact."""


def shape_of(cfg) -> dict:
    """The shape keys, plus the effective batch: an OOM fallback trades micro-batch for accumulation and
    keeps their product, so only the product is compared."""
    v = cfg.values if hasattr(cfg, "values") else cfg
    shape = {f"{s}.{k}": v[s][k] for s, k in SHAPE_KEYS}
    shape["train.effective_batch"] = v["train"]["micro_batch_size"] * v["train"]["gradient_accumulation_steps"]
    return shape


def dataset_fingerprint(files: list) -> str:
    """SHA-256 over the dataset files' names and contents (a hub id stands for itself)."""
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(str(f).encode() + b"\0")
        p = Path(f)
        if p.is_file():
            with open(p, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path):
    """Make a rename in `path` durable. Some filesystems cannot fsync a directory (EINVAL, ENOTSUP): there the
    rename is as durable as that filesystem makes it, which is safe to accept. Any other failure is raised."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- writing complete-or-absent

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# how libraries that wrap the OS error report it: safetensors' Rust writer ("IoError(Os { code: 28, kind:
# StorageFull, message: \"No space left on device\" })"), torch.save ("file write failed"), tokenizers
DISK_FULL_TEXT = ("no space left on device", "disk quota exceeded", "storagefull", "quotaexceeded")


def is_disk_full(e: BaseException) -> bool:
    """True if `e`, or an error it was raised from, says the disk (or the user's quota) is full."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
            return True
        if any(t in str(e).lower() for t in DISK_FULL_TEXT):
            return True
        e = e.__cause__ or e.__context__
    return False


AFTER_SAVE = "the last good checkpoint is kept. Free some space, then resume with --resume."
AFTER_EXPORT = "nothing half-written was left there. Free some space, then export again."


def disk_full_message(what: str, where: Path, after: str = AFTER_SAVE) -> str:
    try:
        free = f" ({shutil.disk_usage(where).free / 2**20:.0f} MiB free)"
    except OSError:  # the folder is gone: say nothing about its free space rather than fail here
        free = ""
    return f"disk full while saving {what} in {where}{free}; {after}"


def write_complete(tmp: Path, final: Path, write, what: str, after: str = AFTER_SAVE) -> Path:
    """Run write(tmp) into a fresh temporary directory, fsync it, then rename it to `final` (replacing an
    older one atomically). On any failure the temporary directory is removed and `final` is as it was; a
    full disk, however the writing library reports it, becomes DiskFull with one clear sentence."""
    shutil.rmtree(tmp, ignore_errors=True)

    def fill() -> None:
        tmp.mkdir(parents=True)
        write(tmp)
    _fill(tmp, fill, lambda: shutil.rmtree(tmp, ignore_errors=True), what, final.parent, after)
    if final.exists():  # the same step saved before a crash, or the previous adapter: replace it
        remove(final)
    os.rename(tmp, final)
    _fsync_dir(final.parent)
    return final


def write_file_complete(final: Path, write, what: str, after: str = AFTER_EXPORT) -> Path:
    """write_complete for a single file: write(tmp) to a temporary file beside `final` (.tmp-NAME), fsync it,
    then rename it over `final`. On any failure the temporary file is removed and `final` is as it was."""
    tmp = final.with_name(f".tmp-{final.name}")
    tmp.unlink(missing_ok=True)  # what an export killed midway left
    _fill(tmp, lambda: write(tmp), lambda: tmp.unlink(missing_ok=True), what, final.parent, after)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    return final


def _fill(tmp: Path, fill, discard, what: str, where: Path, after: str) -> None:
    """fill(), then fsync every file at or under `tmp`; on any failure discard() it, and a full disk is DiskFull."""
    try:
        fill()
        for f in [tmp] if tmp.is_file() else tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
    except BaseException as e:
        discard()
        if is_disk_full(e):
            raise DiskFull(disk_full_message(what, where, after)) from None
        raise


def write_manifest(folder: Path, fields: dict) -> None:
    """manifest.json: every file's size and SHA-256, plus `fields` (step, shape, dataset)."""
    files = {f.name: {"size": f.stat().st_size, "sha256": _sha256(f)} for f in sorted(folder.iterdir())}
    (folder / MANIFEST).write_text(json.dumps({**fields, "files": files}, indent=1))


def remove(path: Path) -> None:
    """Delete a checkpoint so that a kill at any moment leaves it whole or gone: renamed out of the step-*
    names first (one atomic step), then deleted; clean_temp finishes the job after a crash."""
    doomed = path.with_name(f".tmp-delete-{path.name}")
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def complete(run_dir) -> list:
    """Renamed (so fully written) checkpoint directories, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))


def clean_temp(run_dir) -> list:
    """Remove the half-written (.tmp-step-*) and half-deleted (.tmp-delete-*) directories a killed trainer
    left; returns their names."""
    root = Path(run_dir) / CHECKPOINTS
    gone = []
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".tmp-"):
                shutil.rmtree(p, ignore_errors=True)
                gone.append(p.name)
    return gone


# ---------------------------------------------------------------------------- verify and resume

def verify(path: Path) -> str | None:
    """None if the checkpoint's files match its manifest, else the reason it does not."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        return "no manifest.json"
    except ValueError:
        return "manifest.json is not valid JSON"
    for name, meta in manifest.get("files", {}).items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != meta["size"]:
            return f"{name} is {f.stat().st_size} bytes, the manifest says {meta['size']}"
        if _sha256(f) != meta["sha256"]:
            return f"{name} does not match its SHA-256"
    return None


def newest_verified(run_dir) -> tuple[Path | None, list]:
    """The newest checkpoint that verifies, and [(name, reason)] for the newer ones skipped."""
    skipped = []
    for path in reversed(complete(run_dir)):
        reason = verify(path)
        if reason is None:
            return path, skipped
        skipped.append((path.name, reason))
    return None, skipped


def changes(path: Path, shape: dict, data_fingerprint: str) -> list:
    """What differs between a checkpoint and the run about to resume it, as sentences."""
    manifest = json.loads((path / MANIFEST).read_text())
    out = []
    old = manifest.get("shape", {})
    for key in sorted(set(old) | set(shape)):
        if old.get(key) != shape.get(key):
            out.append(f"{key} was {old.get(key)!r}, now {shape.get(key)!r}")
    if manifest.get("dataset") != data_fingerprint:
        out.append("the dataset's content changed")
    return out


def check_resume(run_dir, cfg, data_files: list, allow_changes: bool) -> tuple[Path | None, list]:
    """The checkpoint to resume from (or None) and the skipped ones; BadInput if the run changed."""
    path, skipped = newest_verified(run_dir)
    if path is None or allow_changes:
        return path, skipped
    diff = changes(path, shape_of(cfg), dataset_fingerprint(data_files))
    if diff:
        raise BadInput(f"refusing to resume {path.name}: " + "; ".join(diff) + ". Resuming would mix two "
                       "different trainings; start a new run (another name), or pass --resume --allow-changes "
                       "if you mean it.", path=getattr(cfg, "path", None))
    return path, skipped


def estimate_bytes(adapter_params: int, keep: int, optimizer: str) -> int:
    """Disk a run's checkpoints and adapter take: adapter fp32 + optimizer state, keep+1 times over, plus
    the final adapter and room for the temp directory of the next save."""
    per = adapter_params * (4 + (8 if optimizer == "adamw_torch" else 2))
    return per * (keep + 1) + adapter_params * 4
