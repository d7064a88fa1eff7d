"""The run file: reading, checking and writing it against its schema (engine.runschema: the single source of its
keys, defaults, types, ranges, allowed values and help, re-exported here).

A run file is TOML. `load()` reads it with tomllib and checks every key against SECTIONS; `dumps()` writes it
back with tomli-w, one comment line of help above each key, so that a written file explains itself and
reads back to exactly the same values.
"""
from __future__ import annotations

import copy
import difflib
import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import tomli_w

from .errors import BadInput

from .runschema import (NAME_RE, REQUIRED, SCHEMA_VERSION, SECTION_KEYS, SECTIONS, TOP, TOP_KEYS,  # noqa: F401
                        TRACKERS, Key)


class Section:
    """Attribute access to one section's values."""

    def __init__(self, values: dict):
        self.__dict__.update(values)

    def __repr__(self) -> str:
        return f"Section({self.__dict__})"


class RunConfig:
    """A checked run file. `cfg.train.learning_rate` reads a value; `cfg.values` is the whole nested dict."""

    def __init__(self, values: dict, path: str | None = None, text: str | None = None):
        self.values = values
        self.path = path
        self.text = text  # the file as read, to name the line of a key in later errors

    def line_of(self, section: str | None, key: str) -> int | None:
        return find_line(self.text, section, key)

    def __getattr__(self, item):
        values = self.__dict__.get("values", {})
        if item in SECTIONS:
            return Section(values[item])
        if item in TOP_KEYS:
            return values[item]
        raise AttributeError(item)

    def to_dict(self) -> dict:
        return copy.deepcopy(self.values)


# ---------------------------------------------------------------------------- locating keys in the text

_SECTION_LINE = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\s*(#.*)?$")
_KEY_LINE = re.compile(r"^\s*[\"']?([A-Za-z0-9_\-]+)[\"']?\s*=")


def find_line(text: str | None, section: str | None, key: str | None = None) -> int | None:
    """1-based line of `key` in `[section]` (or of the section header when key is None)."""
    if not text:
        return None
    current = None
    for no, line in enumerate(text.splitlines(), 1):
        m = _SECTION_LINE.match(line)
        if m:
            current = m.group(1).strip("\"' ")
            if key is None and current == section:
                return no
            continue
        if key is not None and current == section:
            m = _KEY_LINE.match(line)
            if m and m.group(1) == key:
                return no
    return None


def _suggest(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


# ---------------------------------------------------------------------------- checking

def _check_value(k: Key, value, where: dict):
    def bad(msg):
        raise BadInput(f"{msg}; expected {k.describe()}.", **where)

    t = k.type
    if t == "bool":
        if not isinstance(value, bool):
            bad(f"{value!r} is not true or false")
    elif t == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            bad(f"{value!r} is not an integer")
    elif t == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            bad(f"{value!r} is not a number")
        if value != value or value in (float("inf"), float("-inf")):
            bad(f"{value!r} is not a finite number")
        value = float(value) if not isinstance(value, int) else value
    elif t == "str":
        if not isinstance(value, str):
            bad(f"{value!r} is not a string")
    elif t in ("list[int]", "list[str]"):
        inner = int if t == "list[int]" else str
        if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, inner) for v in value):
            bad(f"{value!r} is not {k.describe()}")
    elif t == "str|list[str]":
        if not (isinstance(value, str) or (isinstance(value, list) and value and all(isinstance(v, str) for v in value))):
            bad(f"{value!r} is not a string or a non-empty list of strings")
    if k.choices and value not in k.choices:
        raise BadInput(f"{value!r} is not allowed; expected {k.describe()}.", **where)
    if k.min is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < k.min or (k.min_open and value == k.min) or (k.max is not None and value > k.max):
            bad(f"{value!r} is out of range")
    return value


def validate(raw: dict, *, path: str | None = None, text: str | None = None) -> RunConfig:
    """Check a parsed run file and fill in defaults. Raises BadInput naming the file, line and key."""

    def where(section, key=None):
        return {"path": path, "line": find_line(text, section, key) if section or key else None,
                "key": f"{section}.{key}" if section and key else (key or section)}

    data: dict = {}
    for key, value in raw.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise BadInput(f"'{key}' must be a [{key}] section, not a value.", path=path,
                               line=find_line(text, None, key), key=key)
            continue
        if key not in TOP_KEYS:
            if isinstance(value, dict):
                raise BadInput(f"unknown section [{key}].{_suggest(key, SECTIONS)} Sections are: "
                               + ", ".join(f"[{s}]" for s in SECTIONS) + ".",
                               path=path, line=find_line(text, key), key=key)
            raise BadInput(f"unknown key '{key}'.{_suggest(key, list(TOP_KEYS) + [f'{s}.{n}' for s in SECTIONS for n in SECTION_KEYS[s]])}",
                           path=path, line=find_line(text, None, key), key=key)
        data[key] = _check_value(TOP_KEYS[key], value, {"path": path, "line": find_line(text, None, key), "key": key})
    for k in TOP:
        data.setdefault(k.name, copy.deepcopy(k.default))

    for section, keys in SECTION_KEYS.items():
        given = raw.get(section, {})
        out = {}
        for key, value in given.items():
            if key not in keys:
                elsewhere = [s for s in SECTION_KEYS if key in SECTION_KEYS[s]]
                hint = f" '{key}' belongs in [{elsewhere[0]}]." if elsewhere else _suggest(key, keys)
                raise BadInput(f"unknown key in [{section}].{hint} Keys here: {', '.join(keys)}.",
                               **where(section, key))
            out[key] = _check_value(keys[key], value, where(section, key))
        for k in keys.values():
            if k.name not in out:
                if k.default is REQUIRED:
                    raise BadInput(f"[{section}] needs '{k.name}': {k.help}", path=path,
                                   line=find_line(text, section), key=f"{section}.{k.name}")
                out[k.name] = copy.deepcopy(k.default)
        data[section] = out

    _check_semantics(data, path, text)
    return RunConfig(data, path=path, text=text)


def _check_semantics(d: dict, path, text):
    def fail(msg, section, key):
        raise BadInput(msg, path=path, line=find_line(text, section, key),
                       key=f"{section}.{key}" if section else key)

    name = d["name"]
    if not NAME_RE.match(name) or set(name) == {"."} or name.startswith("."):
        fail(f"name {name!r} could leave output_root or hide the run; use letters, digits, '.', '_' and '-', "
             "not starting with '.'.", None, "name")
    if not d["output_root"].strip():
        fail("output_root is empty; give a folder such as \"runs\".", None, "output_root")
    hw = d["hardware"]
    if hw["strategy"] == "single" and hw["num_processes"] != 1:
        fail(f"strategy 'single' runs one process, but num_processes = {hw['num_processes']}; "
             "use strategy = \"ddp\" or num_processes = 1.", "hardware", "num_processes")
    if hw["strategy"] == "ddp" and hw["num_processes"] * hw["num_machines"] < 2:
        fail("strategy 'ddp' needs at least 2 processes in all; set num_processes = 2 or more, "
             "or use strategy = \"single\".", "hardware", "num_processes")
    if hw["gpus"] and hw["strategy"] != "single" and len(hw["gpus"]) != hw["num_processes"]:
        fail(f"{len(hw['gpus'])} GPUs listed but num_processes = {hw['num_processes']}; "
             "use one process per GPU.", "hardware", "num_processes")
    if hw["gpus"] and hw["strategy"] == "single" and len(hw["gpus"]) != 1:
        fail(f"strategy 'single' trains on one GPU but gpus = {hw['gpus']}; list one GPU or use "
             "strategy = \"ddp\".", "hardware", "gpus")
    if len(set(hw["gpus"])) != len(hw["gpus"]) or any(g < 0 for g in hw["gpus"]):
        fail(f"gpus = {hw['gpus']} must be distinct CUDA indices ≥ 0.", "hardware", "gpus")
    if hw["machine_rank"] >= hw["num_machines"]:
        fail(f"machine_rank {hw['machine_rank']} must be below num_machines ({hw['num_machines']}).",
             "hardware", "machine_rank")
    if hw["num_machines"] > 1 and not hw["main_process_ip"]:
        fail("a multi-machine job needs main_process_ip, the address of machine rank 0.", "hardware", "main_process_ip")
    if hw["num_machines"] > 1 and not hw["main_process_port"]:
        fail("a multi-machine job needs a fixed main_process_port (for example 29500).", "hardware", "main_process_port")
    if hw["strategy"] == "fsdp" and d["model"]["quantization"] != "none" and d["model"]["compute_dtype"] == "float16":
        fail("FSDP needs the 4-bit weights stored in the model's dtype, and float16 training would need them "
             "in float32 (silently corrupted otherwise); use compute_dtype = \"bfloat16\" (RTX 30xx and newer) "
             "or \"float32\".", "model", "compute_dtype")
    for tracker in d["train"]["report_to"]:
        if tracker not in TRACKERS:
            fail(f"report_to lists {tracker!r}; trackers are {', '.join(repr(t) for t in TRACKERS)}."
                 + _suggest(tracker, TRACKERS), "train", "report_to")
    if d["train"]["method"] == "dpo" and d["train"]["beta"] == 0:
        fail("dpo needs beta > 0 (at 0 its loss no longer depends on the policy, and ipo divides by it); try 0.1.",
             "train", "beta")
    if d["train"]["kernels"] == "liger" and not hw["gpus"]:
        fail("kernels = \"liger\" runs Triton kernels on a CUDA GPU, and this run trains on the CPU (gpus = []); "
             "use kernels = \"auto\" or \"none\".", "train", "kernels")
    if hw["strategy"] == "fsdp" and d["train"]["optimizer"] == "paged_adamw_8bit":
        fail("paged 8-bit optimizers break FSDP checkpoint saving; use optimizer = \"adamw_8bit\" (the same "
             "8-bit state, not paged) or \"adamw_torch\".", "train", "optimizer")
    if hw["cpu_offload"] and hw["strategy"] != "fsdp":
        fail("cpu_offload offloads FSDP shards; it needs strategy = \"fsdp\" (or set it to false).",
             "hardware", "cpu_offload")
    m = d["model"]
    if not m["base"].strip():
        fail("model.base is empty; give a Hugging Face id or a local folder.", "model", "base")
    if not d["data"]["path"].strip():
        fail("data.path is empty; give a dataset file, folder or Hugging Face dataset id.", "data", "path")
    from .rewards import check_values
    check_values(d, fail)  # [rewards]: the pattern compiles, format has one, grpo has a reward


# ---------------------------------------------------------------------------- reading and writing

_TOML_POS = re.compile(r"\(at line (\d+), column (\d+)\)")


def _find_duplicate(text: str):
    """(line, name) of the first key or [section] that appears twice, else None."""
    seen_sections, seen_keys, current = set(), set(), None
    for no, line in enumerate(text.splitlines(), 1):
        m = _SECTION_LINE.match(line)
        if m:
            current = m.group(1).strip("\"' ")
            if current in seen_sections:
                return no, f"[{current}]"
            seen_sections.add(current)
            continue
        m = _KEY_LINE.match(line)
        if m:
            full = (current, m.group(1))
            if full in seen_keys:
                return no, (f"{current}." if current else "") + m.group(1)
            seen_keys.add(full)
    return None


def parse_text(text: str, path: str | None = None) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        dup = _find_duplicate(text)
        if dup and ("overwrite" in msg or "twice" in msg):
            raise BadInput(f"'{dup[1]}' is defined twice; keep one of them.", path=path, line=dup[0],
                           key=dup[1].strip("[]")) from None
        m = _TOML_POS.search(msg)
        line = int(m.group(1)) if m else (max(1, len(text.splitlines())) if "end of document" in msg else None)
        bare = re.sub(r"\s*\(at [^)]*\)", "", msg).strip().rstrip(".")
        raise BadInput(f"not valid TOML ({bare}). Check quotes around strings and '=' between key and value.",
                       path=path, line=line) from None


def loads(text: str, path: str | None = None) -> RunConfig:
    return validate(parse_text(text, path), path=path, text=text)


def load(path) -> RunConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput("run file not found; give the path of a .toml run file "
                       "(rigtune init --preset cpu-demo writes one).", path=str(path)) from None
    except IsADirectoryError:
        raise BadInput("is a folder; give the path of a .toml run file.", path=str(path)) from None
    except UnicodeDecodeError:
        raise BadInput("is not UTF-8 text; a run file is TOML.", path=str(path)) from None
    return loads(text, str(path))


def missing_trackers(names) -> list:
    """The trackers in `names` whose package is not installed here (training goes on without them)."""
    import importlib.util
    return [t for t in names if importlib.util.find_spec(t) is None]


def defaults(**overrides) -> dict:
    """A complete run-file dict with every default; `overrides` is {section: {key: value}} or {top_key: value}."""
    data = {k.name: copy.deepcopy(k.default) for k in TOP}
    for s, keys in SECTIONS.items():
        data[s] = {k.name: (None if k.default is REQUIRED else copy.deepcopy(k.default)) for k in keys}
    for key, value in overrides.items():
        if isinstance(value, dict):
            data[key].update(value)
        else:
            data[key] = value
    return data


def _comment(k: Key) -> str:
    extra = f" [{'|'.join(map(str, k.choices))}]" if k.choices and len(k.choices) > 1 else ""
    return f"# {k.help}{extra}\n"


def dumps(cfg: RunConfig | dict, header: str | None = None) -> str:
    """TOML text of a complete run file, with one line of help above each key."""
    data = cfg.values if isinstance(cfg, RunConfig) else cfg
    out = ["# rigtune run file. Check it with: rigtune check FILE; train with: rigtune train FILE\n"]
    if header:
        out += [f"# {line}\n" for line in header.splitlines()]
    out.append("\n")
    for k in TOP:
        out += [_comment(k), tomli_w.dumps({k.name: data[k.name]})]
    for s, keys in SECTIONS.items():
        out.append(f"\n[{s}]\n")
        for k in keys:
            value = data[s].get(k.name)
            if value is None:
                continue
            out += [_comment(k), tomli_w.dumps({k.name: value})]
    return "".join(out)


def save(cfg: RunConfig | dict, path, header: str | None = None) -> Path:
    """Write atomically (temp file + rename) so a crash never leaves half a run file."""
    import os
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(dumps(cfg, header), encoding="utf-8")
    os.replace(tmp, p)
    return p


def run_dir(cfg: RunConfig, cwd: Path | None = None) -> Path:
    root = Path(cfg.output_root).expanduser()
    if not root.is_absolute():
        root = (cwd or Path.cwd()) / root
    return root / cfg.name
