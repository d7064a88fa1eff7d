"""Datasets: read records, detect their format, turn them into token ids with a loss mask, split, pack.

Every record becomes an `Example`: either a conversation (a list of messages, each with a role, text and
whether its tokens are trained) or a raw text. Conversations are rendered through the tokenizer's chat
template (DEFAULT_CHAT_TEMPLATE when it has none); only assistant tokens carry labels unless
train_on_prompt is set.
"""
from __future__ import annotations

import csv
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BadInput

FORMATS = ("alpaca", "sharegpt", "messages", "text")
FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")
IGNORE = -100

# ChatML, the template used when a tokenizer has none. Tools (sharegpt "tools") go into the system turn.
DEFAULT_CHAT_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n"
    "{% if messages[0].role == 'system' %}{{ messages[0].content }}\n\n{% endif %}"
    "You may call these tools by answering with a JSON object {\"name\": ..., \"arguments\": ...}:\n"
    "{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}<|im_end|>\n"
    "{% elif messages[0].role == 'system' %}<|im_start|>system\n{{ messages[0].content }}<|im_end|>\n"
    "{% endif %}"
    "{% for m in messages %}{% if not (loop.first and m.role == 'system') %}"
    "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "function_call": "assistant", "observation": "tool", "tool": "tool"}
MESSAGE_ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Example:
    messages: list | None = None      # [{"role", "content", "train": bool}]
    tools: list | None = None
    text: str | None = None
    source: str = ""                   # "file:record" for messages
    expect: list | None = None         # held-out checks: words a right answer contains (answered())


@dataclass
class Encoded:
    input_ids: list
    labels: list

    @property
    def trained(self) -> int:  # the first token is never predicted, so it never counts
        return sum(1 for t in self.labels[1:] if t != IGNORE)


@dataclass
class DataReport:
    format: str
    records: int
    train_examples: int
    eval_examples: int
    truncated: int = 0
    dropped_empty: int = 0
    lengths: list = field(default_factory=list)
    files: list = field(default_factory=list)

    def spread(self) -> str:
        """'median M, p95 P, max X' of the token lengths ('' when there are none)."""
        ls = sorted(self.lengths)
        return (f"median {ls[min(len(ls) - 1, len(ls) // 2)]}, p95 {ls[min(len(ls) - 1, int(0.95 * len(ls)))]}, "
                f"max {ls[-1]}") if ls else ""

    def summary(self) -> str:
        s = (f"format {self.format}: {self.records} records ({self.train_examples} train, {self.eval_examples} eval)")
        if self.lengths:
            s += f"; tokens per example: {self.spread()}"
        s += f"; {self.truncated} truncated to max_seq_len"
        if self.dropped_empty:
            s += f"; {self.dropped_empty} dropped (nothing left to train on)"
        return s


# ---------------------------------------------------------------------------- reading files

def _read_json(path: Path):
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadInput(f"broken JSON ({e.msg}, column {e.colno}); a .json dataset is one array of objects.",
                       path=str(path), line=e.lineno) from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) == 1:
            data = lists[0]
    if not isinstance(data, list):
        raise BadInput("a .json dataset must be an array of objects (use .jsonl for one object per line).",
                       path=str(path))
    return [(str(path), i + 1, r) for i, r in enumerate(data)], "record"


def _read_jsonl(path: Path):
    out = []
    with path.open(encoding="utf-8") as f:
        for no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append((str(path), no, json.loads(line)))
            except json.JSONDecodeError as e:
                raise BadInput(f"broken JSON line ({e.msg}, column {e.colno}); each line must be one JSON object.",
                               path=str(path), line=no) from None
    return out, "line"


def _read_csv(path: Path):
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        return [(str(path), reader.line_num, dict(row)) for row in reader], "line"


def _read_parquet(path: Path):
    import pyarrow.parquet as pq
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for a bad file
        raise BadInput(f"cannot read parquet ({e}).", path=str(path)) from None
    return [(str(path), i + 1, r) for i, r in enumerate(rows)], "row"


READERS = {".json": _read_json, ".jsonl": _read_jsonl, ".csv": _read_csv, ".parquet": _read_parquet}
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def read_records(path: str) -> tuple[list, list]:
    """[(file, position, record)] and the files read. Raises BadInput for anything unreadable."""
    p = Path(path).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix in FILE_SUFFIXES and f.is_file())
        if not files:
            raise BadInput(f"folder has no {', '.join(FILE_SUFFIXES)} files.", path=str(p))
    elif p.is_file():
        if p.suffix not in READERS:
            raise BadInput(f"unsupported file type '{p.suffix}'; use {', '.join(FILE_SUFFIXES)} or a folder of them.",
                           path=str(p))
        files = [p]
    elif _HF_ID.match(path) and not path.startswith((".", "/", "~")) and not Path(path).suffix in READERS:
        return _read_hub(path), [path]
    else:
        raise BadInput("dataset not found; give a .json/.jsonl/.parquet/.csv file, a folder of them, "
                       "or a Hugging Face dataset id (owner/name).", path=str(p))
    records = []
    for f in files:
        try:
            recs, _ = READERS[f.suffix](f)
        except UnicodeDecodeError:
            raise BadInput("is not UTF-8 text.", path=str(f)) from None
        records.extend(recs)
    return records, [str(f) for f in files]


def _read_hub(dataset_id: str):
    try:
        import datasets
        ds = datasets.load_dataset(dataset_id, split="train")
    except Exception as e:
        raise BadInput(f"could not load Hugging Face dataset '{dataset_id}' ({type(e).__name__}: "
                       f"{str(e).splitlines()[0][:200] if str(e) else ''}). Check the id and the network, or "
                       "download it and give the local file.", path=dataset_id) from None
    return [(dataset_id, i + 1, dict(r)) for i, r in enumerate(ds)]


# ---------------------------------------------------------------------------- formats

def detect_format(records, path: str = "") -> str:
    if not records:
        raise BadInput("dataset is empty; it needs at least one record.", path=path)
    file, pos, first = records[0]
    if not isinstance(first, dict):
        raise BadInput(f"a record must be a JSON object, got {type(first).__name__}.", path=file, record=pos)
    keys = set(first)
    if "conversations" in keys:
        return "sharegpt"
    if "messages" in keys:
        return "messages"
    if "instruction" in keys and "output" in keys:
        return "alpaca"
    if "text" in keys:
        return "text"
    raise BadInput(f"cannot tell the format from its keys {sorted(keys)}. Valid formats: alpaca "
                   "(instruction, input, output), sharegpt (conversations of from/value), messages "
                   "(messages of role/content) or text (text). Set [data] format to say which.",
                   path=file, record=pos)


def _need_str(rec, key, file, pos, optional=False):
    v = rec.get(key)
    if v is None or (optional and v == ""):
        if optional:
            return ""
        raise BadInput(f"missing field '{key}'.", path=file, record=pos, key=key)
    if not isinstance(v, str):
        raise BadInput(f"field '{key}' must be a string, got {type(v).__name__}.", path=file, record=pos, key=key)
    return v


def _content_text(content, file, pos, key):
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type", "text") == "text":
                text = part.get("text", part.get("value"))
                if isinstance(text, str):
                    parts.append(text)
                    continue
            raise BadInput("content parts must be {\"type\": \"text\", \"text\": ...}; other part types "
                           "(images, audio) are not supported.", path=file, record=pos, key=key)
        return "".join(parts)
    raise BadInput(f"'{key}' must be a string or a list of text parts.", path=file, record=pos, key=key)


def _check_turns(msgs, file, pos):
    if not any(m["role"] == "assistant" for m in msgs):
        raise BadInput("conversation has no assistant turn to train on.", path=file, record=pos)


def to_example(rec, fmt: str, file: str, pos) -> Example:
    """One record as an Example. Any format may carry `expect`: the words (a list of strings) that a right
    answer to its prompt contains; rigtune checks held-out records that have it at the final eval."""
    ex = _to_example(rec, fmt, file, pos)
    ex.expect = expect_of(rec, file, pos)
    return ex


def expect_of(rec, file: str, pos) -> list | None:
    """A record's `expect` (held-out checks), checked; None when it has none."""
    expect = rec.get("expect")
    if expect is not None and (not isinstance(expect, list) or not expect
                               or not all(isinstance(w, str) and w.strip() for w in expect)):
        raise BadInput("'expect' must be a non-empty list of words a right answer contains.", path=file,
                       record=pos, key="expect")
    return expect


def answered(completion: str, expect: list) -> bool:
    """The held-out rule: every expected word appears in the completion as a whole word, in any case."""
    return all(re.search(rf"(?<!\w){re.escape(w.strip())}(?!\w)", completion, re.IGNORECASE) for w in expect)


def _to_example(rec, fmt: str, file: str, pos) -> Example:
    if not isinstance(rec, dict):
        raise BadInput(f"a record must be an object, got {type(rec).__name__}.", path=file, record=pos)
    src = f"{file}:{pos}"
    if fmt == "text":
        return Example(text=_need_str(rec, "text", file, pos), source=src)
    if fmt == "alpaca":
        instruction = _need_str(rec, "instruction", file, pos)
        inp = _need_str(rec, "input", file, pos, optional=True)
        output = _need_str(rec, "output", file, pos)
        system = _need_str(rec, "system", file, pos, optional=True)
        msgs = [{"role": "system", "content": system, "train": False}] if system else []
        msgs += [{"role": "user", "content": instruction + ("\n\n" + inp if inp else ""), "train": False},
                 {"role": "assistant", "content": output, "train": True}]
        return Example(messages=msgs, source=src)
    if fmt == "sharegpt":
        conv = rec.get("conversations")
        if not isinstance(conv, list) or not conv:
            raise BadInput("'conversations' must be a non-empty list of {from, value}.", path=file, record=pos,
                           key="conversations")
        msgs = []
        system = rec.get("system")
        if isinstance(system, str) and system:
            msgs.append({"role": "system", "content": system, "train": False})
        for i, turn in enumerate(conv):
            key = f"conversations[{i}]"
            if not isinstance(turn, dict):
                raise BadInput("each turn must be an object {from, value}.", path=file, record=pos, key=key)
            who = turn.get("from", turn.get("role"))
            if who not in SHAREGPT_ROLES:
                raise BadInput(f"'from' is {who!r}; expected one of {', '.join(SHAREGPT_ROLES)}.",
                               path=file, record=pos, key=key + ".from")
            value = turn.get("value", turn.get("content"))
            role = SHAREGPT_ROLES[who]
            msgs.append({"role": role, "content": _content_text(value, file, pos, key + ".value"),
                         "train": role == "assistant"})
        _check_turns(msgs, file, pos)
        tools = rec.get("tools")
        if isinstance(tools, str):
            tools = tools.strip()
            try:
                tools = json.loads(tools) if tools else None
            except json.JSONDecodeError:
                raise BadInput("'tools' is not valid JSON.", path=file, record=pos, key="tools") from None
        if tools is not None and not isinstance(tools, list):
            tools = [tools]
        if tools:
            tools = [t if "type" in t else {"type": "function", "function": t} for t in tools if isinstance(t, dict)]
        return Example(messages=msgs, tools=tools or None, source=src)
    if fmt == "messages":
        raw = rec.get("messages")
        if not isinstance(raw, list) or not raw:
            raise BadInput("'messages' must be a non-empty list of {role, content}.", path=file, record=pos,
                           key="messages")
        msgs = []
        for i, m in enumerate(raw):
            key = f"messages[{i}]"
            if not isinstance(m, dict) or m.get("role") not in MESSAGE_ROLES:
                raise BadInput(f"role must be one of {', '.join(MESSAGE_ROLES)}.", path=file, record=pos,
                               key=key + ".role")
            weight = m.get("loss_weight", 1.0 if m["role"] == "assistant" else 0.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                raise BadInput("loss_weight must be a number (0 masks the message).", path=file, record=pos,
                               key=key + ".loss_weight")
            if "content" not in m:
                raise BadInput("missing field 'content'.", path=file, record=pos, key=key + ".content")
            msgs.append({"role": m["role"], "content": _content_text(m["content"], file, pos, key + ".content"),
                         "train": m["role"] == "assistant" and weight > 0})
        _check_turns(msgs, file, pos)
        return Example(messages=msgs, source=src)
    raise BadInput(f"unknown format {fmt!r}; valid: auto, {', '.join(FORMATS)}.", key="data.format")


def load_examples(path: str, fmt: str = "auto") -> tuple[list, str, list]:
    records, files = read_records(path)
    if not records:
        raise BadInput("dataset is empty; it needs at least one record.", path=path)
    if fmt == "auto":
        fmt = detect_format(records, path)
    return [to_example(r, fmt, f, pos) for f, pos, r in records], fmt, files


# ---------------------------------------------------------------------------- tokens and labels

def ensure_chat_template(tokenizer):
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return tokenizer


def _render(tokenizer, msgs, tools, gen_prompt: bool) -> str:
    plain = [{"role": m["role"], "content": m["content"]} for m in msgs]
    return tokenizer.apply_chat_template(plain, tools=tools, tokenize=False, add_generation_prompt=gen_prompt)


def render_spans(tokenizer, ex: Example, train_on_prompt: bool):
    """The conversation's text and the (start, end) character spans whose tokens are trained."""
    try:
        full = _render(tokenizer, ex.messages, ex.tools, False)
        if train_on_prompt:
            return full, [(0, len(full))]
        spans, cursor = [], 0
        for i, m in enumerate(ex.messages):
            if not m["train"]:
                continue
            before = _render(tokenizer, ex.messages[:i], ex.tools, True) if i else ""
            through = _render(tokenizer, ex.messages[: i + 1], ex.tools, False)
            if full.startswith(before) and full.startswith(through) and len(through) > len(before):
                spans.append((len(before), len(through)))
                cursor = len(through)
            else:  # template rewrites earlier turns: find the reply text itself
                at = full.find(m["content"], cursor)
                if at < 0:
                    raise BadInput("the chat template drops this assistant reply; set [data] train_on_prompt "
                                   "or use another template.", path=ex.source)
                spans.append((at, at + len(m["content"])))
                cursor = at + len(m["content"])
        return full, spans
    except BadInput:
        raise
    except Exception as e:  # jinja errors from model templates (e.g. a role the template refuses)
        raise BadInput(f"the tokenizer's chat template cannot render this record ({str(e)[:200]}).",
                       path=ex.source) from None


def encode(tokenizer, ex: Example, max_seq_len: int, train_on_prompt: bool) -> tuple[Encoded, bool]:
    """Token ids and labels (IGNORE where not trained), truncated to max_seq_len; and whether it was cut."""
    if ex.text is not None:
        ids = tokenizer(ex.text, add_special_tokens=True)["input_ids"]
        if tokenizer.eos_token_id is not None:
            ids = ids + [tokenizer.eos_token_id]
        labels = list(ids)
    else:
        text, spans = render_spans(tokenizer, ex, train_on_prompt)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        labels = [IGNORE] * len(ids)
        for j, (a, b) in enumerate(enc["offset_mapping"]):
            if any(s <= a < e or (a == b and s < a <= e) for s, e in spans):
                labels[j] = ids[j]
    cut = len(ids) > max_seq_len
    return Encoded(ids[:max_seq_len], labels[:max_seq_len]), cut


def split_indices(n: int, eval_fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic train/eval split of n records."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_eval = 0 if eval_fraction <= 0 or n < 2 else min(n - 1, max(1, round(n * eval_fraction)))
    return sorted(order[n_eval:]), sorted(order[:n_eval])


def split(cfg, examples: list) -> tuple[list, list]:
    """(train examples, held-out examples): all of data.path and the eval_path file when one is set, else a
    deterministic eval_fraction of data.path."""
    if cfg.data.eval_path:
        return list(examples), load_examples(cfg.data.eval_path, cfg.data.format)[0]
    train_idx, eval_idx = split_indices(len(examples), cfg.data.eval_fraction, cfg.train.seed)
    return [examples[i] for i in train_idx], [examples[i] for i in eval_idx]


def prepare(cfg, tokenizer, examples=None, fmt=None) -> tuple[list, list, DataReport]:
    """Encoded train and eval examples for a run, with a report of what happened to them."""
    d = cfg.data
    files = []
    if examples is None:
        examples, fmt, files = load_examples(d.path, d.format)
    ensure_chat_template(tokenizer)
    train_part, eval_part = split(cfg, examples)
    report = DataReport(format=fmt, records=len(examples), train_examples=0, eval_examples=0, files=files)

    def enc_all(part):
        out = []
        for ex in part:
            e, cut = encode(tokenizer, ex, d.max_seq_len, d.train_on_prompt)
            report.truncated += cut
            report.lengths.append(len(e.input_ids))
            if e.trained == 0:
                report.dropped_empty += 1
                continue
            out.append(e)
        return out

    train, evals = enc_all(train_part), enc_all(eval_part)
    report.train_examples, report.eval_examples = len(train), len(evals)
    if not train:
        raise BadInput(f"no training example has any token left to train on (records: {len(examples)}); "
                       "check that assistant replies are not empty or cut off by max_seq_len.", path=d.path)
    return train, evals, report


# ---------------------------------------------------------------------------- packing and batches

@dataclass
class Sequence:
    """One training row: several examples end to end; position ids restart at each example."""
    input_ids: list
    labels: list
    position_ids: list

    @property
    def trained(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


def pack(examples: list, max_seq_len: int) -> list:
    """First-fit-decreasing packing into rows of at most max_seq_len tokens."""
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids))
    bins: list[list] = []
    room: list[int] = []
    for i in order:
        n = len(examples[i].input_ids)
        for b in range(max(0, len(bins) - 64), len(bins)):  # recent bins are the ones with room
            if room[b] >= n:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(max_seq_len - n)
    return [_join([examples[i] for i in sorted(b)]) for b in bins]


def _join(parts) -> Sequence:
    ids, labels, pos = [], [], []
    for e in parts:
        ids += e.input_ids
        labels += [IGNORE] + e.labels[1:]  # nothing predicts an example's first token from the one before
        pos += list(range(len(e.input_ids)))
    return Sequence(ids, labels, pos)


def as_sequences(examples: list, max_seq_len: int, packing: bool) -> list:
    return pack(examples, max_seq_len) if packing else [_join([e]) for e in examples]
