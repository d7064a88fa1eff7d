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


def raw_chat_template(folder: Path, config: dict | None = None) -> str | list | None:
    """The chat template as the model ships it: one template, or a list of named ones ({"name", "template"}) -
    chat_template.jinja with any additional_chat_templates/NAME.jinja beside it (transformers' files), else the
    config's "chat_template" (a string or such a list). GGUF keeps the named ones (tokenizer.chat_template.NAME)."""
    folder = Path(folder)
    if (folder / "chat_template.jinja").is_file():
        default = (folder / "chat_template.jinja").read_text()
        named = [{"name": p.stem, "template": p.read_text()}
                 for p in sorted((folder / "additional_chat_templates").glob("*.jinja"))]
        return [{"name": "default", "template": default}] + named if named else default
    return (tokenizer_config(folder) if config is None else config).get("chat_template") or None


def chat_template(folder: Path, config: dict | None = None) -> str | None:
    """The model's chat template: the default of raw_chat_template's named ones (else the first)."""
    template = raw_chat_template(folder, config)
    if isinstance(template, list):
        template = next((t["template"] for t in template if t.get("name") == "default"),
                        template[0]["template"] if template else None)
    return template or None


# ---------------------------------------------------------------------------- the one overwrite rule

EXPORT_MARK = ".rigtune-export"  # inside a folder export: {"kind", "run", "written"}
GGUF_MARK = "rigtune.export"     # a GGUF's metadata key holding the kind: "gguf" or "gguf-lora"
RUN_FILE_HEAD = "# rigtune run file"  # engine.runfile.dumps's first line
OUTPUTS = {"merged": "merged export", "gguf": "gguf export", "gguf-lora": "gguf-lora export",
           "ollama": "ollama export", "run": "run file"}


def mark_export(folder: Path, kind: str, run_dir: Path) -> None:
    """Say inside a folder export what wrote it, so that a later --force knows it may replace it."""
    import time
    (Path(folder) / EXPORT_MARK).write_text(json.dumps({"kind": kind, "run": str(run_dir),
                                                         "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))


def output_kind(path: Path) -> str | None:
    """Which rigtune output is at `path` (a key of OUTPUTS), or None: a folder by its EXPORT_MARK, a GGUF by its
    GGUF_MARK (a GGUF from anywhere else, a downloaded model say, is not rigtune's), a run file by its first line."""
    path = Path(path)
    if path.is_dir():
        try:
            mark = json.loads((path / EXPORT_MARK).read_text())
        except (OSError, ValueError):
            return None
        return mark.get("kind") if isinstance(mark, dict) and mark.get("kind") in ("merged", "ollama") else None
    try:
        with open(path, "rb") as f:
            head = f.read(len(RUN_FILE_HEAD))
    except OSError:
        return None
    if head.startswith(b"GGUF"):
        return _gguf_kind(path)
    return "run" if head == RUN_FILE_HEAD.encode() else None


def _gguf_kind(path: Path) -> str | None:
    try:
        import gguf
        field = gguf.GGUFReader(str(path)).get_field(GGUF_MARK)
        kind = field.contents() if field is not None else None
    except Exception:  # a GGUF the reader cannot parse: not something rigtune wrote
        return None
    return kind if kind in ("gguf", "gguf-lora") else None


def refuse_overwrite(out: Path, force: bool, kind: str | None = None) -> None:
    """An output that exists is replaced only with --force, and then (given its `kind`, a key of OUTPUTS) only
    if it is an earlier rigtune output of that kind: never another folder or file."""
    out = Path(out)
    if not (out.exists() or out.is_symlink()):
        return
    if not force:
        raise BadInput("already exists; choose another --out or add --force to replace it.", path=str(out))
    if kind is None:
        return
    found = None if out.is_symlink() else output_kind(out)
    if found == kind:
        return
    what = ("a symbolic link" if out.is_symlink() else f"an earlier rigtune {OUTPUTS[found]}" if found
            else f"a {'folder' if out.is_dir() else 'file'} rigtune did not write")
    raise BadInput(f"this is {what}; --force replaces only an earlier rigtune {OUTPUTS[kind]}. Choose another "
                   "--out, or move it away yourself.", path=str(out))


# ---------------------------------------------------------------------------- a starting adapter

def start_adapter(cfg) -> Path | None:
    """The folder of [model] adapter (a run directory - its adapter/ - or an adapter folder itself), checked
    against the run file's [lora] settings; None when the run starts from a fresh adapter. BadInput names the
    key and what would be valid."""
    if not cfg.model.adapter:
        return None
    where = {"path": cfg.path, "line": cfg.line_of("model", "adapter"), "key": "model.adapter"}
    given = Path(cfg.model.adapter).expanduser()
    folder = given / "adapter" if (given / "adapter" / "adapter_config.json").is_file() else given
    if not (folder / "adapter_config.json").is_file() or not (folder / "adapter_model.safetensors").is_file():
        raise BadInput(f"{given} holds no LoRA adapter (adapter_config.json and adapter_model.safetensors); give a "
                       "finished run's directory or its adapter/ folder.", **where)
    try:
        saved = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError) as e:
        raise BadInput(f"{folder / 'adapter_config.json'} is not readable JSON ({e}).", **where) from None
    targets = cfg.lora.target_modules
    theirs = saved.get("target_modules")
    same_targets = targets == "all-linear" or sorted(targets) == sorted(theirs or [])
    if saved.get("r") != cfg.lora.r or float(saved.get("lora_alpha", 0)) != float(cfg.lora.alpha) or not same_targets:
        raise BadInput(f"the adapter in {folder} was trained with r {saved.get('r')}, alpha {saved.get('lora_alpha')} "
                       f"and target_modules {theirs}; set [lora] r, alpha and target_modules to the same to start "
                       "from it.", **where)
    return folder
