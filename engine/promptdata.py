"""Prompts for GRPO: records whose prompt the model answers during training, and whose other fields the [rewards]
read (engine.rewards). One [data] format, "prompt", detected (format "auto") when a record has "prompt" and no
chosen/rejected:

    {"prompt": str or [messages], "<answer_field>": str or number, "system"?: str, ...any field your reward reads}

A message is {role, content} or {from, value}, as in engine.data; the prompt must end with the turn to answer
(user or tool), not an assistant turn. The answer field is required only while an answer-reading reward (exact,
numeric) has weight > 0; with numeric, it must be a number. Each record becomes a `Prompt`: its messages and the
raw record, which the rewards are given as it was read.

A prompt is rendered with the chat template and its generation prompt (engine.data's template and rendering).
It keeps at most max_seq_len - max_completion_length tokens, so that prompt and answer fit max_seq_len: a longer
one loses its beginning (its end holds the question and the generation prompt), keeping a leading BOS token, and
the report counts it.

engine.prefdata reads prompts through here for method grpo, so `rigtune check`, the launch and the trainer
refuse the same data the same way.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import data as D
from . import rewards as R
from .errors import BadInput

FORMAT = "prompt"
METHODS = ("grpo",)   # the [train] methods that train on prompts
LAYOUT = ('{"prompt": "..." or [{role, content}, ...], "answer": ..., "system"?: "..."} with the answer under '
          "[rewards] answer_field")


@dataclass
class Prompt:
    messages: list        # engine.data messages [{"role", "content", "train": False}], ending with the turn answered
    record: dict          # the record as read: what the rewards are given
    source: str = ""      # "file:record"
    ids: list | None = None   # its token ids, with the generation prompt (set by prepare; see prompt_ids)

    @property
    def question(self) -> str:
        """The turn the model answers (the prompt's last message), e.g. for a table of samples."""
        return self.messages[-1]["content"]


class PromptReport(D.DataReport):
    """engine.data's report for prompts: records, train_examples and eval_examples count prompts, lengths holds
    each prompt's tokens (after any cut), truncated counts the prompts cut from the left."""

    prompts = property(lambda self: self.records)
    budget: int = 0       # the most tokens a prompt keeps: max_seq_len - max_completion_length

    def summary(self) -> str:
        s = f"format {self.format}: {self.records} prompts ({self.train_examples} train, {self.eval_examples} eval)"
        if self.lengths:
            s += f"; prompt tokens (with the generation prompt): {self.spread()}"
        return s + (f"; {self.truncated} prompts cut from the left to {self.budget} tokens (max_seq_len - "
                    "max_completion_length)")


# ---------------------------------------------------------------------------- records to prompts

def is_prompt(rec) -> bool:
    return isinstance(rec, dict) and "prompt" in rec and "chosen" not in rec and "rejected" not in rec


def to_prompt(rec, file: str, pos) -> Prompt:
    """One record as a Prompt, or BadInput naming the record and key and what would be valid."""
    if not isinstance(rec, dict):
        raise BadInput(f"a record must be an object, got {type(rec).__name__}.", path=file, record=pos)
    raw = rec.get("prompt")
    if raw is None:
        raise BadInput(f"missing field 'prompt': a grpo record has the prompt to answer ({LAYOUT}).", path=file,
                       record=pos, key="prompt")
    system = D._need_str(rec, "system", file, pos, optional=True)
    msgs = [{"role": "system", "content": system, "train": False}] if system else []
    if isinstance(raw, str):
        if not raw.strip():
            raise BadInput("the prompt is empty; it needs the question to answer.", path=file, record=pos,
                           key="prompt")
        msgs.append({"role": "user", "content": raw, "train": False})
    elif isinstance(raw, list):
        msgs += messages(raw, file, pos, "prompt")
    else:
        raise BadInput(f"'prompt' must be a string or a list of {{role, content}} messages, got "
                       f"{type(raw).__name__}.", path=file, record=pos, key="prompt")
    return Prompt(check_prompt(msgs, file, pos, "prompt"), rec, f"{file}:{pos}")


def check_prompt(msgs: list, file, pos, key: str) -> list:
    """A prompt's messages, refused when nothing is asked or an assistant turn comes last."""
    if not msgs or all(m["role"] == "system" for m in msgs):
        raise BadInput("the prompt is empty; it needs the turn the answers reply to.", path=file, record=pos, key=key)
    if msgs[-1]["role"] == "assistant":
        raise BadInput("the prompt ends with an assistant turn; it must end with the turn the answers reply to "
                       "(user or tool).", path=file, record=pos, key=key)
    return msgs


def messages(raw, file, pos, key: str) -> list:
    """A list of {role, content} or {from, value} messages (or one such object) as engine.data messages."""
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise BadInput(f"'{key}' must be a non-empty list of {{role, content}} messages.", path=file, record=pos,
                       key=key)
    out = []
    for i, m in enumerate(raw):
        k = f"{key}[{i}]"
        if not isinstance(m, dict):
            raise BadInput("each message must be an object {role, content}.", path=file, record=pos, key=k)
        who = m.get("role", m.get("from"))
        if who not in D.SHAREGPT_ROLES:
            raise BadInput(f"role is {who!r}; expected one of {', '.join(D.MESSAGE_ROLES)}.", path=file, record=pos,
                           key=k + ".role")
        content = m.get("content", m.get("value"))
        if content is None:
            raise BadInput("missing field 'content'.", path=file, record=pos, key=k + ".content")
        out.append({"role": D.SHAREGPT_ROLES[who], "content": D._content_text(content, file, pos, k + ".content"),
                    "train": False})
    return out


def check_answers(prompts: list, rewards) -> None:
    """Each record has the answer the active exact/numeric rewards compare with (a number for numeric), else
    BadInput naming the file, record and key. `rewards`: the run's [rewards] (cfg.rewards)."""
    r = rewards
    using = [n for n in R.ANSWER_REWARDS if getattr(r, R.WEIGHT_KEY[n]) > 0]
    if not using:
        return
    field, which = r.answer_field, " and ".join(using)
    for p in prompts:
        file, _, pos = p.source.rpartition(":")
        where = {"path": file, "record": int(pos) if pos.isdigit() else pos, "key": field}
        value = p.record.get(field)
        if value is None:
            raise BadInput(f"missing field '{field}': the {which} reward{'s' if len(using) > 1 else ''} compare"
                           f"{'' if len(using) > 1 else 's'} each answer with it ([rewards] answer_field = "
                           f"\"{field}\"). Give every record one, or set answer_field to the field that holds it.",
                           **where)
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise BadInput(f"'{field}' must be a string or a number, got {type(value).__name__}.", **where)
        if "numeric" in using and R.parse_number(value) is None:
            raise BadInput(f"'{field}' is {value!r}, not a number, and the numeric reward compares numbers (write "
                           "it like 1234, -3.5 or 1,234; or set [rewards] numeric = 0).", **where)


# ---------------------------------------------------------------------------- reading

def detect_format(records, path: str = "") -> str:
    """"prompt" for records with a prompt; else what engine.data (or prefdata's 'chosen'/'rejected') would call
    them, for the message that refuses them."""
    first = records[0][2]
    if is_prompt(first):
        return FORMAT
    if isinstance(first, dict) and ("chosen" in first or "rejected" in first):
        return "preference"
    try:
        return D.detect_format(records, path)
    except BadInput as e:
        if not isinstance(first, dict):
            raise
        raise BadInput(e.bare + " Prompts for grpo have 'prompt' (format prompt).", path=e.path,
                       record=e.record) from None


def load(path: str, fmt: str = "auto", method: str = "grpo") -> tuple[list, str, list]:
    """(Prompts, "prompt", files read) from a dataset for `method` (grpo); BadInput when it holds another kind of
    data (key train.method) or a record is bad. No answer-field check: load_for_run adds it."""
    records, files = D.read_records(path)
    if not records:
        raise BadInput("dataset is empty; it needs at least one record.", path=path)
    if fmt == "auto":
        fmt = detect_format(records, path)
    if fmt != FORMAT:
        raise BadInput(f"[train] method = \"{method}\" samples answers to prompts and rewards them, but this dataset "
                       f"is {fmt} data (its records have no 'prompt'). Give records {LAYOUT}, with [data] format = "
                       "\"auto\" or \"prompt\"; or set another method for this data.", path=path, key="train.method")
    return [to_prompt(r, f, pos) for f, pos, r in records], fmt, files


def load_for_run(cfg, path: str | None = None) -> tuple[list, str, list]:
    """load() of data.path (or `path`, e.g. eval_path), with every record's answer checked for the active rewards."""
    if cfg.data.train_on_prompt:
        raise BadInput(f"train_on_prompt does not apply to method \"{cfg.train.method}\": only the sampled answers "
                       "train. Set it to false.", path=cfg.path, line=cfg.line_of("data", "train_on_prompt"),
                       key="data.train_on_prompt")
    prompts, fmt, files = load(path or cfg.data.path, cfg.data.format, cfg.train.method)
    check_answers(prompts, cfg.rewards)
    return prompts, fmt, files


def split(cfg, prompts: list) -> tuple[list, list]:
    """(train, held-out) prompts: all of data.path and the eval_path file when one is set, else the same
    deterministic eval_fraction as engine.data.split."""
    if cfg.data.eval_path:
        return list(prompts), load_for_run(cfg, cfg.data.eval_path)[0]
    train_idx, eval_idx = D.split_indices(len(prompts), cfg.data.eval_fraction, cfg.train.seed)
    return [prompts[i] for i in train_idx], [prompts[i] for i in eval_idx]


# ---------------------------------------------------------------------------- tokens

def budget(cfg) -> int:
    """The most tokens a prompt keeps: what max_seq_len leaves beside the longest answer."""
    return cfg.data.max_seq_len - cfg.train.max_completion_length


def prompt_ids(tokenizer, prompt: Prompt, max_tokens: int | None = None) -> list:
    """The prompt's token ids through the chat template, ending with the generation prompt; when longer than
    max_tokens, its last max_tokens (a leading BOS token kept as the first)."""
    return _cut(tokenizer, _ids(tokenizer, prompt), max_tokens)[0]


def _ids(tokenizer, prompt: Prompt) -> list:
    D.ensure_chat_template(tokenizer)
    try:
        text = D._render(tokenizer, prompt.messages, None, True)
    except Exception as e:  # jinja errors from model templates (e.g. a role the template refuses)
        raise BadInput(f"the tokenizer's chat template cannot render this prompt ({str(e)[:200]}).",
                       path=prompt.source) from None
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _cut(tokenizer, ids: list, max_tokens: int | None) -> tuple[list, bool]:
    if max_tokens is None or len(ids) <= max_tokens:
        return ids, False
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and ids[0] == bos and max_tokens > 1:
        return [bos] + ids[len(ids) - max_tokens + 1:], True
    return ids[len(ids) - max_tokens:], True


def prepare(cfg, tokenizer, prompts: list | None = None, files: list | None = None):
    """(train Prompts, held-out Prompts, PromptReport), each Prompt's ids set (cut to budget(cfg))."""
    if prompts is None:
        prompts, _, files = load_for_run(cfg)
    train, evals = split(cfg, prompts)
    report = PromptReport(format=FORMAT, records=len(prompts), train_examples=len(train), eval_examples=len(evals),
                          files=list(files or []))
    report.budget = budget(cfg)
    for p in train + evals:
        p.ids, cut = _cut(tokenizer, _ids(tokenizer, p), report.budget)
        report.truncated += cut
        report.lengths.append(len(p.ids))
    return train, evals, report


def prepare_for_run(cfg, tokenizer) -> tuple[list, list, PromptReport, list]:
    """What the trainer needs: (train Prompts, held-out Prompts, report, files read), each Prompt's ids set."""
    prompts, _, files = load_for_run(cfg)
    train, evals, report = prepare(cfg, tokenizer, prompts, files)
    return train, evals, report, files
