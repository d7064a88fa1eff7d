"""Preference pairs for DPO and ORPO: read chosen/rejected records in the layouts people already have, turn each
into a `Pair` (the prompt as engine.data messages, the chosen and the rejected answer), and encode both answers
through the model's chat template with engine.data's own masking, so only the answers' tokens are trained.

Every layout is the one [data] format "preference", detected (format "auto") when a record has "chosen" or
"rejected"; each record is read by its own keys:

    prompt         {"prompt": str, "chosen": str, "rejected": str, "system"?: str}
    conversational {"prompt": [messages] or str, "chosen": [assistant message], "rejected": [assistant message]}
                   (TRL's conversational preference format)
    implicit       {"chosen": [whole conversation], "rejected": [whole conversation]}: the prompt is the messages
                   both share; each must end with its own assistant answer (TRL's implicit prompt)
    ultrafeedback  {"prompt": str, "chosen": [user, assistant], "rejected": [user, assistant], "score_chosen",
                   ...}: as implicit, the prompt taken from the conversations (HuggingFaceH4/ultrafeedback_binarized)
    sharegpt       {"conversations": [{from, value}], "chosen": {from, value}, "rejected": {from, value},
                   "system"?} (LLaMA-Factory's preference data)
    alpaca         {"instruction": str, "input"?: str, "chosen": str, "rejected": str, "system"?} (LLaMA-Factory)

A message is {role, content} or {from, value}; content may be text parts as in engine.data. Any record may carry
`expect` as SFT records do (engine.data.expect_of).
"""
from __future__ import annotations

from dataclasses import dataclass

from . import data as D
from . import promptdata as P
from .errors import BadInput

FORMAT = "preference"
METHODS = ("dpo", "orpo")   # the [train] methods that train on pairs
LAYOUTS = {
    "prompt": "prompt/chosen/rejected strings",
    "conversational": "prompt + chosen/rejected assistant message lists (TRL's conversational form)",
    "implicit": "chosen/rejected whole conversations sharing their prompt (TRL's implicit prompt)",
    "ultrafeedback": "UltraFeedback's binarized layout (prompt, chosen/rejected [user, assistant])",
    "sharegpt": "conversations + chosen/rejected {from, value} (LLaMA-Factory)",
    "alpaca": "instruction/input + chosen/rejected strings (LLaMA-Factory)",
}
VALID = "; ".join(LAYOUTS.values())


@dataclass
class Pair:
    prompt: list          # engine.data messages [{"role", "content", "train": False}], ending with the turn answered
    chosen: str
    rejected: str
    source: str = ""      # "file:record"
    layout: str = ""      # a key of LAYOUTS
    expect: list | None = None

    def example(self, answer: str) -> D.Example:
        """The prompt and `answer` as an engine.data conversation whose only trained turn is the answer."""
        return D.Example(messages=self.prompt + [{"role": "assistant", "content": answer, "train": True}],
                         source=self.source, expect=self.expect)


@dataclass
class EncodedPair:
    chosen: D.Encoded     # prompt + chosen answer; labels IGNORE outside the answer
    rejected: D.Encoded
    source: str = ""

    @property
    def empty(self) -> bool:
        """Either answer has no trained token left (cut off by max_seq_len): the pair cannot be trained."""
        return self.chosen.trained == 0 or self.rejected.trained == 0


class PairReport(D.DataReport):
    """engine.data's report for pairs: records, train_examples and eval_examples count pairs, lengths holds every
    encoded sequence (chosen and rejected each), truncated and dropped_empty count pairs."""

    pairs = property(lambda self: self.records)
    train_pairs = property(lambda self: self.train_examples)
    eval_pairs = property(lambda self: self.eval_examples)
    dropped = property(lambda self: self.dropped_empty)

    def summary(self) -> str:
        s = f"format {self.format}: {self.records} pairs ({self.train_examples} train, {self.eval_examples} eval)"
        if self.lengths:
            s += f"; tokens per sequence (prompt + one answer): {self.spread()}"
        s += f"; {self.truncated} pairs truncated to max_seq_len"
        if self.dropped_empty:
            s += f"; {self.dropped_empty} dropped (an answer with nothing left to train on)"
        return s


# ---------------------------------------------------------------------------- records to pairs

def is_preference(rec) -> bool:
    return isinstance(rec, dict) and ("chosen" in rec or "rejected" in rec)


def detect_format(records, path: str = "") -> str:
    """engine.data.detect_format, with "preference" for records that have chosen/rejected and "prompt" (GRPO's
    prompts, engine.promptdata) for records that have a prompt and neither."""
    if records and is_preference(records[0][2]):
        return FORMAT
    if records and P.is_prompt(records[0][2]):
        return P.FORMAT
    try:
        return D.detect_format(records, path)
    except BadInput as e:
        if not isinstance(records[0][2], dict):  # empty, or not an object: nothing to add
            raise
        raise BadInput(e.bare + " Preference pairs for dpo or orpo have 'chosen' and 'rejected' (format "
                       "preference); prompts for grpo have 'prompt' (format prompt).", path=e.path,
                       record=e.record) from None


def layout_of(rec) -> str:
    """Which preference layout a record is in (a key of LAYOUTS), from its keys and the answers' types."""
    if "conversations" in rec:
        return "sharegpt"
    if "instruction" in rec:
        return "alpaca"
    chosen = rec.get("chosen")
    if not isinstance(chosen, list):
        return "prompt"
    first = chosen[0] if chosen and isinstance(chosen[0], dict) else {}
    if D.SHAREGPT_ROLES.get(first.get("role", first.get("from"))) == "assistant":
        return "conversational"
    return "ultrafeedback" if isinstance(rec.get("prompt"), str) else "implicit"


def to_pair(rec, file: str, pos) -> Pair:
    """One record as a Pair, or BadInput naming the record and key and what would be valid."""
    if not isinstance(rec, dict):
        raise BadInput(f"a record must be an object, got {type(rec).__name__}.", path=file, record=pos)
    for key in ("chosen", "rejected"):
        if rec.get(key) is None:
            raise BadInput(f"missing field '{key}'; a preference record has a chosen and a rejected answer ({VALID}).",
                           path=file, record=pos, key=key)
    layout = layout_of(rec)
    if layout in ("implicit", "ultrafeedback"):
        prompt, chosen, rejected = _split_conversations(rec, file, pos)
    else:
        prompt = _prompt(rec, layout, file, pos)
        chosen, rejected = (_answer(rec, key, layout, file, pos) for key in ("chosen", "rejected"))
    if chosen == rejected:
        raise BadInput("chosen and rejected are the same answer; an identical pair teaches nothing. Drop the record "
                       "or give a worse answer as rejected.", path=file, record=pos, key="rejected")
    return Pair(prompt, chosen, rejected, f"{file}:{pos}", layout, D.expect_of(rec, file, pos))


def _prompt(rec, layout: str, file, pos) -> list:
    system = D._need_str(rec, "system", file, pos, optional=True)
    msgs = [{"role": "system", "content": system, "train": False}] if system else []
    if layout == "sharegpt":
        msgs += P.messages(rec.get("conversations"), file, pos, "conversations")
    elif layout == "alpaca":
        instruction = D._need_str(rec, "instruction", file, pos)
        inp = D._need_str(rec, "input", file, pos, optional=True)
        msgs.append({"role": "user", "content": instruction + ("\n\n" + inp if inp else ""), "train": False})
    elif isinstance(rec.get("prompt"), list):
        msgs += P.messages(rec["prompt"], file, pos, "prompt")
    elif rec.get("prompt") is None:
        raise BadInput("missing field 'prompt': answers given alone need the prompt they answer (a string or a list "
                       "of messages); or give chosen and rejected as whole conversations sharing their prompt.",
                       path=file, record=pos, key="prompt")
    else:
        msgs.append({"role": "user", "content": D._need_str(rec, "prompt", file, pos), "train": False})
    return P.check_prompt(msgs, file, pos, "conversations" if layout == "sharegpt" else "prompt")


def _answer(rec, key: str, layout: str, file, pos) -> str:
    value = rec[key]
    if layout in ("prompt", "alpaca") or isinstance(value, str):
        if not isinstance(value, str):
            other = "chosen" if key == "rejected" else "rejected"
            raise BadInput(f"'{key}' must be a string like '{other}', got {type(value).__name__}.", path=file,
                           record=pos, key=key)
        return value
    msgs = P.messages(value, file, pos, key)
    if len(msgs) != 1 or msgs[0]["role"] != "assistant":
        raise BadInput(f"'{key}' must be one assistant message (got {len(msgs)} message(s), the first from "
                       f"{msgs[0]['role']}); put the turns both answers share in the prompt.", path=file, record=pos,
                       key=key)
    return msgs[0]["content"]


def _split_conversations(rec, file, pos) -> tuple[list, str, str]:
    """(prompt, chosen, rejected) of two whole conversations: the prompt is the messages they share, each answer
    its own last (assistant) turn."""
    convs = {}
    for key in ("chosen", "rejected"):
        msgs = P.messages(rec[key], file, pos, key)
        if msgs[-1]["role"] != "assistant":
            raise BadInput(f"the {key} conversation must end with the assistant's answer, not a {msgs[-1]['role']} "
                           "turn.", path=file, record=pos, key=f"{key}[{len(msgs) - 1}].role")
        convs[key] = msgs
    c, r = convs["chosen"], convs["rejected"]
    n = 0
    while n < min(len(c), len(r)) and (c[n]["role"], c[n]["content"]) == (r[n]["role"], r[n]["content"]):
        n += 1
    if n == len(c) and n == len(r):
        raise BadInput("chosen and rejected are the same conversation; an identical pair teaches nothing.",
                       path=file, record=pos, key="rejected")
    if n == 0:
        raise BadInput("chosen and rejected share no prompt (their first messages differ): as whole conversations "
                       "they must be the same up to their last, assistant, turn.", path=file, record=pos,
                       key="chosen[0]")
    if len(c) != n + 1 or len(r) != n + 1:
        raise BadInput(f"chosen and rejected differ before their last turn (from message {n}); as whole "
                       "conversations they must be the same up to their last, assistant, turn.", path=file,
                       record=pos, key=f"chosen[{n}]")
    return P.check_prompt(c[:n], file, pos, "chosen"), c[n]["content"], r[n]["content"]


# ---------------------------------------------------------------------------- the method and the data

def load(path: str, fmt: str = "auto", method: str = "sft") -> tuple[list, str, list]:
    """(records, format, files read): Pairs for a preference method, Prompts for grpo (engine.promptdata),
    engine.data Examples for sft; BadInput when the data cannot serve the method (key train.method) or a record is
    bad."""
    if method in P.METHODS:
        return P.load(path, fmt, method)
    records, files = D.read_records(path)
    if not records:
        raise BadInput("dataset is empty; it needs at least one record.", path=path)
    if fmt == "auto":
        fmt = detect_format(records, path)
    check_method(method, fmt, path)
    if fmt == FORMAT:
        return [to_pair(r, f, pos) for f, pos, r in records], fmt, files
    return [D.to_example(r, fmt, f, pos) for f, pos, r in records], fmt, files


def check_method(method: str, fmt: str, path: str) -> None:
    if method in METHODS and fmt != FORMAT:
        raise BadInput(f"[train] method = \"{method}\" trains on preference pairs, but this dataset is {fmt} data (its "
                       f"records have no 'chosen' and 'rejected'). Give pairs in one of the preference layouts ({VALID}) "
                       "with [data] format = \"auto\" or \"preference\", or set method = \"sft\".", path=path,
                       key="train.method")
    if fmt == P.FORMAT:
        raise BadInput(f"this dataset holds prompts to be answered (format prompt), with no answers to train "
                       f"method \"{method}\" on: set [train] method = \"grpo\" to train on the [rewards] of sampled "
                       "answers, or give SFT data (alpaca, sharegpt, messages or text) or preference pairs.", path=path,
                       key="train.method")
    if method not in METHODS and fmt == FORMAT:
        raise BadInput(f"this dataset holds preference pairs (chosen/rejected), which method \"{method}\" cannot train "
                       "on: set [train] method = \"dpo\" or \"orpo\", or give the chosen answers as SFT data (alpaca, "
                       "sharegpt, messages or text) to fine-tune on them.", path=path, key="train.method")


def load_for_method(cfg) -> tuple[list, str, list]:
    """The run's dataset as its [train] method needs it: (Pairs, Prompts or Examples, format, files read). What
    `rigtune check`, the launch and the trainer call first, so data that cannot serve the method fails before
    anything."""
    method = cfg.train.method
    if method in P.METHODS:
        return P.load_for_run(cfg)  # prompts, each with the answer its rewards read
    if method in METHODS and cfg.data.train_on_prompt:
        raise BadInput(f"train_on_prompt does not apply to method \"{method}\": only the answers are compared. Set "
                       "it to false.", path=cfg.path, line=cfg.line_of("data", "train_on_prompt"),
                       key="data.train_on_prompt")
    return load(cfg.data.path, cfg.data.format, method)


def split_for_method(cfg, records: list) -> tuple[list, list]:
    """(train, held-out) records: all of data.path and the eval_path file when one is set (read as the method
    needs it), else the same deterministic eval_fraction as engine.data.split."""
    if cfg.train.method in P.METHODS:
        return P.split(cfg, records)
    if cfg.data.eval_path:
        return list(records), load(cfg.data.eval_path, cfg.data.format, cfg.train.method)[0]
    train_idx, eval_idx = D.split_indices(len(records), cfg.data.eval_fraction, cfg.train.seed)
    return [records[i] for i in train_idx], [records[i] for i in eval_idx]


def prepare_for_method(cfg, tokenizer, records: list, fmt: str) -> tuple[list, list, D.DataReport]:
    """engine.data.prepare for SFT records, prepare_pairs for pairs, promptdata.prepare for prompts: (train, eval,
    report)."""
    if fmt == P.FORMAT:
        return P.prepare(cfg, tokenizer, records)
    if fmt == FORMAT:
        return prepare_pairs(cfg, tokenizer, records)
    return D.prepare(cfg, tokenizer, records, fmt)


# ---------------------------------------------------------------------------- tokens

def encode_pair(tokenizer, pair: Pair, max_seq_len: int) -> tuple[EncodedPair, bool]:
    """Both answers after the prompt, through the chat template; only each answer's tokens are trained. Each
    sequence longer than max_seq_len loses its end, as in SFT; `cut` says whether either did."""
    chosen, cut_c = D.encode(tokenizer, pair.example(pair.chosen), max_seq_len, train_on_prompt=False)
    rejected, cut_r = D.encode(tokenizer, pair.example(pair.rejected), max_seq_len, train_on_prompt=False)
    return EncodedPair(chosen, rejected, pair.source), cut_c or cut_r


def prepare_pairs(cfg, tokenizer, pairs: list | None = None, files: list | None = None):
    """(train EncodedPairs, held-out EncodedPairs, PairReport), as engine.data.prepare does for SFT: the same
    split, pairs cut by max_seq_len counted, pairs with an answer left with no trained token dropped."""
    return _prepare(cfg, tokenizer, pairs, files)[:3]


def prepare_for_run(cfg, tokenizer) -> tuple[list, list, PairReport, list, list]:
    """What the trainer needs: (train EncodedPairs, held-out EncodedPairs, report, held-out Pairs as read,
    files read)."""
    pairs, _, files = load_for_method(cfg)
    train, evals, report, held_out = _prepare(cfg, tokenizer, pairs, files)
    return train, evals, report, held_out, files


def _prepare(cfg, tokenizer, pairs, files):
    if pairs is None:
        pairs, _, files = load_for_method(cfg)
    D.ensure_chat_template(tokenizer)
    train_part, eval_part = split_for_method(cfg, pairs)
    report = PairReport(format=FORMAT, records=len(pairs), train_examples=0, eval_examples=0, files=list(files or []))

    def enc_all(part):
        out = []
        for pair in part:
            enc, cut = encode_pair(tokenizer, pair, cfg.data.max_seq_len)
            report.truncated += cut
            report.lengths += [len(enc.chosen.input_ids), len(enc.rejected.input_ids)]
            if enc.empty:
                report.dropped_empty += 1
                continue
            out.append(enc)
        return out

    train, evals = enc_all(train_part), enc_all(eval_part)
    report.train_examples, report.eval_examples = len(train), len(evals)
    if not train:
        raise BadInput(f"no training pair has tokens left to train on in both answers (pairs: {len(pairs)}); check "
                       "that prompts leave room for the answers within max_seq_len.", path=cfg.data.path)
    return train, evals, report, eval_part
