"""What a run file's model.base names: a local model folder or a Hugging Face hub id. Plain Python, so the
command line can check a run file without loading anything."""
from __future__ import annotations

import re
from pathlib import Path

from .errors import BadInput

# a hub id: "name" or "owner/name", letters, digits, '-', '_', '.', at most 96 characters each, not ending in
# '-' or '.' and without '--' or '..' (the hub's own rule: huggingface_hub refuses anything else with an exception,
# which a half-typed id in the wizard's model field must never reach)
_PART = r"(?!.*(?:--|\.\.))[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
HUB_ID = re.compile(rf"^(?:{_PART}/)?{_PART}$")
DEMO_MODEL = "rigtune:tiny-demo"  # the placeholder presets use (engine.runvalues), built at launch
# in a folder that holds a model's config.json and no weights: loading it gives random weights of that shape
# (engine.probe builds such folders; engine.torchside.shape loads them)
SHAPE_MARK = "rigtune-shape.json"


def is_local_model(base: str) -> bool:
    return Path(base).expanduser().is_dir()


def looks_like_path(base: str, cwd: Path | None = None) -> bool:
    """Absolute, ./, ../ or ~, or a relative path whose parent folder exists here (models/mine)."""
    if base.startswith(("/", "./", "../", "~")) or base in (".", ".."):
        return True
    parent = Path(base).parent
    return str(parent) != "." and ((cwd or Path.cwd()) / parent).is_dir()


def check_base(cfg, cwd: Path | None = None) -> None:
    """Refuse a model.base that can be neither: a path that does not exist, or text no hub id can be. A hub id
    that is not downloaded yet is fine here (it downloads at launch)."""
    base = cfg.model.base
    where = {"path": cfg.path, "line": cfg.line_of("model", "base"), "key": "model.base"}
    if base == DEMO_MODEL or is_local_model(str((cwd or Path.cwd()) / Path(base).expanduser())):
        return
    if looks_like_path(base, cwd):
        p = Path(base).expanduser()
        shown = p if p.is_absolute() else (cwd or Path.cwd()) / p
        what = "is a file, not a model folder" if shown.is_file() else "does not exist"
        raise BadInput(f"{shown} {what}; give the folder of a saved model (with its config.json) or a Hugging "
                       "Face id such as meta-llama/Llama-3.1-8B.", **where)
    if not HUB_ID.match(base):
        raise BadInput(f"{base!r} is neither a local folder nor a Hugging Face id (an id is 'name' or 'owner/name': "
                       "letters, digits, '-', '_', '.').", **where)
