"""The files of a model folder that several parts read - the tokenizer's config, its special tokens and its
chat template - read in one place, plain Python (the wizard's preview, export and GGUF all use it), and the
one rule for writing an output over an existing one."""
from __future__ import annotations

import json
from pathlib import Path

from .errors import BadInput


def tokenizer_config(folder: Path) -> dict:
    """tokenizer_config.json of a model folder, or {} when it has none."""
    path = Path(folder) / "tokenizer_config.json"
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text())
    except ValueError as e:
        raise BadInput(f"not valid JSON ({e}).", path=str(path)) from None
    return value if isinstance(value, dict) else {}


def special_token(config: dict, name: str) -> str | None:
    """A special token's text from a tokenizer config ("eos_token": "</s>" or {"content": "</s>", ...})."""
    value = config.get(name)
    return value.get("content") if isinstance(value, dict) else value


def chat_template(folder: Path, config: dict | None = None) -> str | None:
    """The model's chat template: chat_template.jinja beside the tokenizer, else the config's (the default of
    a list of named templates)."""
    folder = Path(folder)
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    template = (tokenizer_config(folder) if config is None else config).get("chat_template")
    if isinstance(template, list):
        template = next((t["template"] for t in template if t.get("name") == "default"),
                        template[0]["template"] if template else None)
    return template or None


def refuse_overwrite(out: Path, force: bool) -> None:
    """An output that exists is replaced only with --force."""
    if Path(out).exists() and not force:
        raise BadInput("already exists; choose another --out or add --force to replace it.", path=str(out))
