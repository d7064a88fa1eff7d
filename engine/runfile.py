"""The run file: the single source of its keys, defaults, types, ranges, allowed values and help.

A run file is TOML. `load()` reads it with tomllib and checks every key against SCHEMA; `dumps()` writes it
back with tomli-w, one comment line of help above each key, so that a written file explains itself and
reads back to exactly the same values.
"""
from __future__ import annotations

import copy
import difflib
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import tomli_w

from .errors import BadInput

SCHEMA_VERSION = 1
TRACKERS = ("tensorboard", "wandb", "mlflow")  # through accelerate's tracker API; each used only when installed
REQUIRED = object()  # default of a key the user must give
NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass(frozen=True)
class Key:
    name: str
    type: str  # int | float | bool | str | list[int] | list[str] | str|list[str]
    default: Any
    help: str
    choices: tuple = ()
    min: float | None = None
    max: float | None = None
    min_open: bool = False  # True: value must be strictly greater than min

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        kind = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
                "list[int]": "a list of integers", "list[str]": "a list of strings",
                "str|list[str]": "a string or a list of strings"}[self.type]
        if self.min is not None and self.max is not None:
            return f"{kind} {'>' if self.min_open else 'from'} {self.min:g} {'and ≤' if self.min_open else 'to'} {self.max:g}"
        if self.min is not None:
            return f"{kind} {'>' if self.min_open else '≥'} {self.min:g}"
        return kind


TOP = [
    Key("schema_version", "int", SCHEMA_VERSION, "Run-file format version.", choices=(SCHEMA_VERSION,)),
    Key("name", "str", "run", "Run name; the run directory is output_root/name. Letters, digits, '.', '_', '-'."),
    Key("output_root", "str", "runs", "Folder that holds run directories (relative paths are taken from the current directory)."),
]

SECTIONS: dict[str, list[Key]] = {
    "hardware": [
        Key("tier", "str", "", "Budget tier this run was planned for (informational): 1500, 3000, this-machine, cpu-demo."),
        Key("gpus", "list[int]", [], "CUDA device indices to train on; [] trains on the CPU."),
        Key("strategy", "str", "single", "single: one process; ddp: one full copy per process; fsdp: shard the model.",
           choices=("single", "ddp", "fsdp")),
        Key("num_processes", "int", 1, "Training processes on this machine (one per GPU; on CPU, gloo ranks).", min=1, max=64),
        Key("cpu_offload", "bool", False, "Offload parameters to CPU RAM (FSDP only)."),
        Key("shard_adapters", "bool", True, "FSDP only: shard the LoRA adapters, their gradients and AdamW state over "
            "the ranks too (8-bit optimizers keep them whole)."),
        Key("num_machines", "int", 1, "Machines taking part in one job.", min=1, max=1024),
        Key("machine_rank", "int", 0, "This machine's rank, 0 for the main one.", min=0, max=1023),
        Key("main_process_ip", "str", "", "Address of machine rank 0 (multi-machine only)."),
        Key("main_process_port", "int", 0, "Port of the rendezvous on rank 0; 0 picks a free one (single machine).", min=0, max=65535),
    ],
    "model": [
        Key("base", "str", REQUIRED, "Base model: a Hugging Face id or a local folder."),
        Key("revision", "str", "", "Hub revision (branch, tag or commit); empty for the default."),
        Key("trust_remote_code", "bool", False, "Run Python code shipped with the model. Only for models you trust."),
        Key("quantization", "str", "nf4", "Base weights: nf4 (QLoRA), fp4, or none (plain LoRA on a 16-bit base).",
           choices=("nf4", "fp4", "none")),
        Key("double_quant", "bool", True, "Quantise the quantisation constants too (saves ~0.4 bit/param)."),
        Key("compute_dtype", "str", "bfloat16", "Dtype of the matmuls and of unquantised weights.",
           choices=("bfloat16", "float16", "float32")),
        Key("attn_implementation", "str", "sdpa", "Attention kernel.", choices=("sdpa", "flash_attention_2", "eager")),
        Key("adapter", "str", "", "Start from this LoRA adapter (a run directory or its adapter/ folder), e.g. an SFT "
            "run's before DPO or ORPO; with the same r, alpha and target_modules. Empty: a fresh adapter."),
    ],
    "lora": [
        Key("r", "int", 16, "LoRA rank.", min=1, max=1024),
        Key("alpha", "float", 32, "LoRA scaling numerator (scale = alpha / r).", min=0, min_open=True, max=1e6),
        Key("dropout", "float", 0.05, "Dropout on the LoRA input.", min=0, max=0.9),
        Key("target_modules", "str|list[str]", "all-linear", "\"all-linear\" or a list of module names such as [\"q_proj\", \"v_proj\"]."),
    ],
    "data": [
        Key("path", "str", REQUIRED, "Dataset: a .json/.jsonl/.parquet/.csv file, a folder of them, or a Hugging Face dataset id."),
        Key("format", "str", "auto", "Record format; auto detects it. preference: chosen/rejected pairs (dpo, orpo); "
            "prompt: prompts whose answers [rewards] check (grpo).",
            choices=("auto", "alpaca", "sharegpt", "messages", "text", "preference", "prompt")),
        Key("max_seq_len", "int", 2048, "Longest sequence in tokens; longer examples are truncated.", min=16, max=1_048_576),
        Key("packing", "bool", True, "Pack several examples into one sequence (they never attend to each other)."),
        Key("eval_fraction", "float", 0.02, "Share of records held out for evaluation (deterministic split).", min=0, max=0.5),
        Key("eval_path", "str", "", "A separate held-out dataset (same kinds of file as path); when set, all of path trains and eval_fraction is not used."),
        Key("train_on_prompt", "bool", False, "Also train on prompt tokens, not only on the assistant's."),
    ],
    "train": [
        Key("micro_batch_size", "int", 4, "Sequences per forward pass per process.", min=1, max=4096),
        Key("gradient_accumulation_steps", "int", 4, "Micro-batches per optimizer step.", min=1, max=65536),
        Key("epochs", "float", 1, "Passes over the training data (used when max_steps = 0).", min=0, min_open=True, max=1000),
        Key("max_steps", "int", 0, "Optimizer steps to run; 0 uses epochs.", min=0, max=100_000_000),
        Key("learning_rate", "float", 2e-4, "Peak learning rate.", min=0, min_open=True, max=1),
        Key("lr_scheduler", "str", "cosine", "Learning-rate schedule after warmup.", choices=("cosine", "linear", "constant")),
        Key("warmup_ratio", "float", 0.03, "Share of steps spent warming up linearly from 0.", min=0, max=1),
        Key("weight_decay", "float", 0.0, "AdamW weight decay.", min=0, max=10),
        Key("max_grad_norm", "float", 1.0, "Clip the gradient norm to this; 0 turns clipping off.", min=0, max=1e6),
        Key("optimizer", "str", "adamw_torch", "adamw_torch (32-bit state), adamw_8bit or paged_adamw_8bit (bitsandbytes).",
           choices=("adamw_torch", "adamw_8bit", "paged_adamw_8bit")),
        Key("gradient_checkpointing", "bool", True, "Recompute activations in backward: much less memory, ~30% slower."),
        Key("seed", "int", 42, "Seed for data order, LoRA init and dropout.", min=0, max=2**32 - 1),
        Key("log_every_steps", "int", 1, "Write a step event every N optimizer steps.", min=1, max=1_000_000),
        Key("eval_every_steps", "int", 50, "Evaluate (and sample one generation) every N steps; 0 only at the end.", min=0, max=100_000_000),
        Key("save_every_steps", "int", 100, "Write a checkpoint every N steps; 0 only at the end.", min=0, max=100_000_000),
        Key("keep_checkpoints", "int", 2, "Newest checkpoints to keep.", min=1, max=1000),
        Key("sample_max_new_tokens", "int", 48, "Tokens generated for the eval sample; 0 turns sampling off.", min=0, max=4096),
        Key("loss_chunk_tokens", "int", 4096, "Cross-entropy only at trained positions, this many at a time, never "
           "holding all fp32 logits; 0 computes full logits.", min=0, max=1_048_576),
        Key("max_bad_steps", "int", 1, "Steps with a NaN/inf loss or gradient (skipped, not applied) before the run stops.",
           min=1, max=1000),
        Key("oom_fallback", "bool", False, "On CUDA out-of-memory: halve micro_batch_size, double accumulation, resume."),
        Key("kernels", "str", "auto", "Fused GPU kernels: auto uses Liger (RMSNorm, RoPE, SwiGLU, fused loss) on a CUDA "
           "GPU when installed; liger requires them; none is plain PyTorch.", choices=("auto", "liger", "none")),
        Key("report_to", "list[str]", [], "Experiment trackers: \"tensorboard\" (event files in RUN_DIR/tensorboard), \"wandb\", \"mlflow\"; each needs its package installed and follows its own settings (WANDB_MODE, MLFLOW_TRACKING_URI)."),
        Key("activation_offload", "bool", False, "Keep the activations saved for backward in CPU RAM instead of GPU "
           "memory: less VRAM, slower steps."),
        Key("method", "str", "sft", "sft: supervised fine-tuning on answers; dpo: direct preference optimization on "
            "chosen/rejected pairs against a reference (the starting model); orpo: odds-ratio preference "
            "optimization, no reference; grpo: reinforcement learning from the [rewards] of sampled answers.",
            choices=("sft", "dpo", "orpo", "grpo")),
        Key("beta", "float", 0.1, "dpo: how far the policy may move from the reference (larger: closer to it); orpo: "
            "the scale of the logged rewards; grpo: the weight of the KL term to the reference (0 turns it off).",
            min=0, max=100),
        Key("loss_type", "str", "sigmoid", "dpo's loss: sigmoid (the DPO paper) or ipo (squared, on per-token "
            "average log-probabilities).", choices=("sigmoid", "ipo")),
        Key("orpo_lambda", "float", 0.1, "orpo: weight of the odds-ratio term beside the chosen answer's "
            "cross-entropy.", min=0, max=100),
        Key("num_generations", "int", 8, "grpo: answers sampled per prompt (the group whose rewards are compared).",
            min=2, max=256),
        Key("max_completion_length", "int", 64, "grpo: longest sampled answer, in tokens.", min=1, max=32768),
        Key("temperature", "float", 1.0, "grpo: sampling temperature of the answers.", min=0, min_open=True, max=10),
        Key("epsilon", "float", 0.2, "grpo: clipping of the policy ratio (PPO-style).", min=0, max=10),
    ],
    "rewards": [
        Key("answer_field", "str", "answer", "grpo: the record field holding the right answer (exact and numeric "
            "compare with it)."),
        Key("pattern", "str", "", "grpo: a regular expression the answer must match (the format reward); its first "
            "group, when it has one, is the answer exact and numeric compare. Empty: the whole answer."),
        Key("exact", "float", 1.0, "grpo: weight of the exact-match reward (1 when the answer equals the record's).",
            min=0, max=1000),
        Key("numeric", "float", 0.0, "grpo: weight of the numeric reward (1 when the answer is a number within "
            "tolerance of the record's).", min=0, max=1000),
        Key("tolerance", "float", 0.0, "grpo: how far a numeric answer may be from the record's and still count.",
            min=0, max=1e12),
        Key("format", "float", 0.0, "grpo: weight of the format reward (1 when the answer matches pattern).",
            min=0, max=1000),
        Key("length", "float", 0.0, "grpo: weight of the length reward (1 at length_target tokens, falling to 0 at "
            "twice or none; with length_target 0: 1 - length / max_completion_length).", min=0, max=1000),
        Key("length_target", "int", 0, "grpo: the answer length the length reward prefers, in tokens (0: shorter "
            "is better).", min=0, max=32768),
        Key("function", "str", "", "grpo: your own reward, FILE.py:NAME, called as NAME(completion, record) and "
            "returning a number (its file relative to the run file; your code, run as written)."),
        Key("function_weight", "float", 1.0, "grpo: weight of function's reward.", min=0, max=1000),
    ],
    "run": [
        Key("electricity_usd_per_kwh", "float", 0.18, "Your electricity price, USD per kWh: what the run's measured "
            "energy costs. The default is the U.S. average residential price the EIA expects for 2026 (18.02 cents/kWh, "
            "Short-Term Energy Outlook, December 2025); put your own bill's.", min=0, max=10),
    ],
}

TOP_KEYS = {k.name: k for k in TOP}
SECTION_KEYS = {s: {k.name: k for k in keys} for s, keys in SECTIONS.items()}


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
