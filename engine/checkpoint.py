"""Checkpoints that are complete or absent, and that prove what they are.

checkpoints/step-NNNNNN/ holds the adapter (safetensors), the optimizer state (safetensors + JSON, nothing
pickled), trainer_state.json and manifest.json: every file's size and SHA-256, the training-shape keys of
the run file and a fingerprint of the dataset. It is written into .tmp-step-NNNNNN, fsynced, then renamed.
Resume takes the newest checkpoint whose manifest verifies, and refuses a changed dataset or shape.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

from .errors import BadInput

CHECKPOINTS = "checkpoints"
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
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------- optimizer state without pickle

def flatten_state(state: dict):
    """Optimizer state as (tensors for safetensors, the rest as JSON with {"__tensor__": key} in their place)."""
    import torch
    tensors = {}

    def walk(obj, path):
        if isinstance(obj, torch.Tensor):
            tensors[path] = obj.detach().to("cpu").contiguous().clone()
            return {"__tensor__": path}
        if isinstance(obj, dict):
            return {"__dict__": [[k, walk(v, f"{path}.{k}")] for k, v in obj.items()]}
        if isinstance(obj, (list, tuple)):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(obj)]
        return obj

    return tensors, walk(state, "s")


def unflatten_state(tensors: dict, meta):
    if isinstance(meta, dict) and "__tensor__" in meta:
        return tensors[meta["__tensor__"]]
    if isinstance(meta, dict) and "__dict__" in meta:  # keeps integer keys integers
        return {k: unflatten_state(tensors, v) for k, v in meta["__dict__"]}
    if isinstance(meta, list):
        return [unflatten_state(tensors, v) for v in meta]
    return meta


# ---------------------------------------------------------------------------- save

def save(run_dir: Path, step: int, model, optimizer, trainer_state: dict, keep: int, shape: dict,
         data_fingerprint: str, fault=None) -> Path:
    """Write checkpoints/step-NNNNNN complete or not at all. Raises DiskFull (after cleaning up) on ENOSPC."""
    from safetensors.torch import save_file
    root = run_dir / CHECKPOINTS
    root.mkdir(exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tensors, meta = flatten_state(optimizer.state_dict())
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(meta))
        if fault is not None:
            fault("save", step)
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))
        files = {}
        for f in sorted(tmp.iterdir()):
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
            files[f.name] = {"size": f.stat().st_size, "sha256": _sha256(f)}
        manifest = {"step": step, "files": files, "shape": shape, "dataset": data_fingerprint}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        with open(tmp / MANIFEST, "rb") as fh:
            os.fsync(fh.fileno())
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno == errno.ENOSPC:
            raise DiskFull(f"disk full while saving checkpoint step {step} in {root} "
                           f"({shutil.disk_usage(root).free / 2**20:.0f} MiB free); the last good checkpoint is "
                           "kept. Free some space, then resume with --resume.") from None
        raise
    if final.exists():  # the same step saved before a crash: replace it
        _remove(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    for old in complete(run_dir)[:-keep]:
        _remove(old)
    return final


def _remove(path: Path) -> None:
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


def load(path: Path, model, optimizer) -> dict:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    set_peft_model_state_dict(model, load_file(str(path / "adapter_model.safetensors")))
    meta = json.loads((path / "optimizer.json").read_text())
    optimizer.load_state_dict(unflatten_state(load_file(str(path / "optimizer.safetensors")), meta))
    return json.loads((path / "trainer_state.json").read_text())


def estimate_bytes(adapter_params: int, keep: int, optimizer: str) -> int:
    """Disk a run's checkpoints and adapter take: adapter fp32 + optimizer state, keep+1 times over, plus
    the final adapter and room for the temp directory of the next save."""
    per = adapter_params * (4 + (8 if optimizer == "adamw_torch" else 2))
    return per * (keep + 1) + adapter_params * 4
