"""Writing what training produces: checkpoints (adapter, optimizer state, trainer state and a manifest) and the
final adapter. Each is written into a temporary directory, fsynced, then renamed, so it is complete or absent.
Nothing is pickled: tensors go to safetensors, the rest to JSON. The plain-Python side of checkpoints
(manifests, verifying, resume checks, pruning) is engine.checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .. import checkpoint as C
from ..events import ADAPTER, CHECKPOINTS


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


# ---------------------------------------------------------------------------- save and load

def save_checkpoint(run_dir: Path, step: int, model, optimizer, trainer_state: dict, keep: int, shape: dict,
                    data_fingerprint: str, faults=None, adapter_state: dict | None = None,
                    optimizer_state: dict | None = None) -> Path:
    """Write checkpoints/step-NNNNNN complete or not at all, then prune to the newest `keep`. Raises
    checkpoint.DiskFull (after cleaning up) when the disk fills, however the library reports it. With sharded
    adapters the caller passes them and the optimizer state gathered whole (engine.torchside.fsdp): the files
    are the same as one process writes."""
    from safetensors.torch import save_file
    root = run_dir / CHECKPOINTS
    root.mkdir(exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True, **({"state_dict": adapter_state} if adapter_state else {}))
        tensors, meta = flatten_state(optimizer_state if optimizer_state is not None else optimizer.state_dict())
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(meta))
        if faults is not None:
            faults.save(step)
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))
        C.write_manifest(tmp, {"step": step, "shape": shape, "dataset": data_fingerprint})

    C.write_complete(tmp, final, write, f"checkpoint step {step}")
    for old in C.complete(run_dir)[:-keep]:
        C.remove(old)
    return final


def load_checkpoint(path: Path, model, optimizer, sharded_params: list | None = None) -> dict:
    """Put a checkpoint's adapter and optimizer state into `model` and `optimizer`; its trainer state. With
    sharded adapters (`sharded_params`, the optimizer's parameters) each rank takes its slice of the whole
    tensors, so a checkpoint written by any number of ranks resumes on any other."""
    from safetensors.torch import load_file
    meta = json.loads((path / "optimizer.json").read_text())
    state = unflatten_state(load_file(str(path / "optimizer.safetensors")), meta)
    load_adapter_weights(model, path / "adapter_model.safetensors", sharded_params is not None)
    if sharded_params is not None:
        from . import fsdp
        state = fsdp.shard_optimizer_state(state, sharded_params)
    optimizer.load_state_dict(state)
    return json.loads((path / "trainer_state.json").read_text())


def load_adapter_weights(model, file: Path, sharded: bool) -> None:
    """An adapter file's tensors (peft's names) into the model's adapters; with sharded adapters each rank takes
    its slice of the whole tensors."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    adapter = load_file(str(file))
    if not sharded:
        set_peft_model_state_dict(model, adapter)
        return
    from . import fsdp
    names = _peft_names(model)  # the file's names are peft's (no adapter name): the model's names for them
    fsdp.load_full_adapter_state(model, {names[k]: v for k, v in adapter.items() if k in names})


def _peft_names(model) -> dict:
    """{name in peft's adapter file: the model's parameter name} for the trainable parameters."""
    from peft.utils import get_peft_model_state_dict
    out = {}
    for n, p in model.named_parameters():
        if p.requires_grad:
            (k,) = get_peft_model_state_dict(model, state_dict={n: p}).keys()
            out[k] = n
    return out


def save_adapter(run_dir: Path, model, adapter_state: dict | None = None) -> Path:
    """adapter/, replaced atomically: written next to it, then renamed over the old one. `adapter_state`: the
    adapter gathered whole when it is sharded."""
    final = run_dir / ADAPTER
    extra = {"state_dict": adapter_state} if adapter_state else {}
    C.write_complete(run_dir / ".tmp-adapter", final,
                     lambda tmp: model.save_pretrained(tmp, safe_serialization=True, **extra), "the adapter")
    return final
