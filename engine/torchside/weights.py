"""The base model's files on this machine, for the exports (engine.torchside.export and gguf_export): its
folder - a local one, or the Hugging Face cache's snapshot of the run's [model] revision, found by engine.hub,
the one place that reads that cache - and its safetensors shards."""
from __future__ import annotations

import json
from pathlib import Path

from .. import hub
from ..errors import BadInput


def base_folder(model) -> Path:
    """The folder of `model` (a run's [model] section: base, revision): a local folder as it is, a hub id as the
    cached snapshot of its revision (main when none is set); a clear BadInput when the weights are not here."""
    p = Path(model.base).expanduser()
    if p.is_dir():
        return p
    revision = model.revision or None
    snap = hub.cached_snapshot(model.base, revision)
    if snap is None:
        asked = f"{model.base} at revision {revision}" if revision else model.base
        fetch = f"rigtune fetch {model.base}" + (f" --revision {revision}" if revision else "")
        raise BadInput(f"the base model's weights ({asked}) are not on this machine; they are downloaded when the "
                       f"run trains - export or chat on the machine that trained it, or run `{fetch}` here first.",
                       key="model.base")
    return snap


def loading_from(cfg, folder: Path):
    """`cfg` with model.base the folder that holds its weights on this machine (a hub id's cached snapshot), for
    the loaders; its revision is cleared, that folder being the revision."""
    from .. import runfile
    values = cfg.to_dict()
    values["model"].update(base=str(folder), revision="")
    return runfile.RunConfig(values, path=cfg.path, text=cfg.text)


def shards(folder: Path) -> list:
    """The safetensors files of a model folder, in order (those its index names, or every *.safetensors)."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        return sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()})
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise BadInput(f"no safetensors weights in {folder}; rigtune exports from safetensors only.", key="model.base")
    return files
