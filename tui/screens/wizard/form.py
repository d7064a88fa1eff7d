"""The setup step's form: which run-file key each field edits, and reading a field's text as a value."""
from __future__ import annotations

from engine import runfile

# field id -> (section, key, kind); kind "str" takes the text as is, anything else is read as a TOML value
FIELDS = [
    ("name", None, "name", "str", "run name"),
    ("r", "lora", "r", "toml", "LoRA r"),
    ("alpha", "lora", "alpha", "toml", "LoRA alpha"),
    ("targets", "lora", "target_modules", "targets", "LoRA targets"),
    ("seq", "data", "max_seq_len", "toml", "max seq len"),
    ("mbs", "train", "micro_batch_size", "toml", "micro-batch"),
    ("accum", "train", "gradient_accumulation_steps", "toml", "grad accum"),
    ("epochs", "train", "epochs", "toml", "epochs"),
    ("steps", "train", "max_steps", "toml", "max steps (0=epochs)"),
    ("lr", "train", "learning_rate", "toml", "learning rate"),
]
# the choices come from the run-file schema
SELECTS = [
    ("method", "train", "method", list(runfile.SECTION_KEYS["train"]["method"].choices), "method"),
    ("optimizer", "train", "optimizer", list(runfile.SECTION_KEYS["train"]["optimizer"].choices), "optimizer"),
    ("strategy", "hardware", "strategy", list(runfile.SECTION_KEYS["hardware"]["strategy"].choices), "strategy"),
]
SWITCHES = [("gc", "train", "gradient_checkpointing", "grad checkpointing"),
            ("offload", "hardware", "cpu_offload", "CPU offload")]


def get_value(values, section, key):
    return values[section][key] if section else values[key]


def text_of(value) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


BAD = object()


def toml_value(text: str):
    import tomllib
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return BAD


def key_of(section, key):
    return runfile.SECTION_KEYS[section][key] if section else runfile.TOP_KEYS[key]


def field_of(dotted: str | None) -> str:
    """The form field showing a run-file key's error."""
    if not dotted:
        return "name"
    section, _, key = dotted.partition(".")
    for fid, s, k, *_ in FIELDS + SELECTS:
        if (s, k) == (section, key) or (s is None and k == dotted):
            return fid
    for fid, s, k, _ in SWITCHES:
        if (s, k) == (section, key):
            return fid
    return {"model": "model", "data": "data", "hardware": "strategy"}.get(section, "name")
