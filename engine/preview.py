"""Dataset preview for the wizard without importing torch or transformers: a local model's tokenizer.json is
read with `tokenizers`, its chat template rendered with jinja2, and engine.data's own masking logic applied,
so what the wizard shows is what training will do. Without a local tokenizer, token counts are estimated."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from . import data as D
from . import modelfiles as M
from . import prefdata
from . import promptdata


class LightTokenizer:
    """The few tokenizer methods engine.data uses, backed by `tokenizers` and jinja2."""

    def __init__(self, model_dir):
        from tokenizers import Tokenizer
        d = Path(model_dir)
        self.tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        cfg = M.tokenizer_config(d)
        self.chat_template = M.chat_template(d, cfg) or D.DEFAULT_CHAT_TEMPLATE
        self.bos_token, self.eos_token = M.special_token(cfg, "bos_token"), M.special_token(cfg, "eos_token")
        self.eos_token_id = self.tok.token_to_id(self.eos_token) if self.eos_token else None
        self.bos_token_id = self.tok.token_to_id(self.bos_token) if self.bos_token else None
        self._template = None

    def apply_chat_template(self, messages, tools=None, tokenize=False, add_generation_prompt=False):
        if self._template is None:
            from jinja2.sandbox import ImmutableSandboxedEnvironment
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.filters["tojson"] = lambda x, indent=None, **kw: json.dumps(x, indent=indent, ensure_ascii=False)

            def raise_exception(msg):
                raise ValueError(msg)
            env.globals["raise_exception"] = raise_exception
            self._template = env.from_string(self.chat_template)
        return self._template.render(messages=messages, tools=tools, add_generation_prompt=add_generation_prompt,
                                     bos_token=self.bos_token or "", eos_token=self.eos_token or "")

    def __call__(self, text, add_special_tokens=True, return_offsets_mapping=False):
        enc = self.tok.encode(text, add_special_tokens=add_special_tokens)
        out = {"input_ids": enc.ids}
        if return_offsets_mapping:
            out["offset_mapping"] = enc.offsets
        return out

    def decode(self, ids, skip_special_tokens=False):
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)


@dataclass
class Preview:
    format: str
    records: int
    files: list
    lengths: list = field(default_factory=list)
    truncated: int = 0
    exact: bool = True             # token counts from the model's tokenizer (else estimated)
    example: list = field(default_factory=list)  # [(text, trained: bool)] pieces of the first example
    max_seq_len: int = 0
    pair: dict | None = None       # preference data: the first pair's pieces, {"prompt", "chosen", "rejected"}
    per_record: int = 1            # sequences per record: 2 for a pair (chosen and rejected)
    prompt: dict | None = None     # grpo's prompts: the first one, {"pieces": [(text, False)] as the model sees it,
                                   # "answer_field", "answer" (None when the record has none)}

    def run_tokens(self, cfg, batch: int) -> int:
        """Tokens the run `cfg` trains: the dataset (less its held-out share) x epochs, or max_steps x the
        effective batch (`batch` records a step; packed sequences are full; a pair is two unpacked sequences)."""
        lengths = [min(n, self.max_seq_len) for n in self.lengths] or [0]
        per_example = sum(lengths) / len(lengths) * self.per_record
        if self.format == promptdata.FORMAT:  # each prompt: num_generations sequences of prompt + the longest answer
            per_example = (per_example + cfg.train.max_completion_length) * cfg.train.num_generations
            return round(per_example * (cfg.train.max_steps * batch if cfg.train.max_steps else
                                        self.records * (1 - cfg.data.eval_fraction) * cfg.train.epochs))
        if cfg.train.max_steps:
            full = self.max_seq_len if cfg.data.packing and self.per_record == 1 else per_example  # pairs: unpacked
            return round(cfg.train.max_steps * batch * full)
        return round(per_example * self.records * (1 - cfg.data.eval_fraction) * cfg.train.epochs)

    def histogram(self, bins: int = 10) -> list:
        """[(upper bound, count)] over 0..max(longest, max_seq_len)."""
        if not self.lengths:
            return []
        top = max(max(self.lengths), self.max_seq_len)
        width = max(1, -(-top // bins))
        counts = [0] * bins
        for n in self.lengths:
            counts[min(bins - 1, n // width)] += 1
        return [((i + 1) * width, c) for i, c in enumerate(counts)]


def preview(path: str, fmt: str, model_base: str, max_seq_len: int, train_on_prompt: bool = False,
            sample_limit: int = 2000, method: str = "sft", rewards: dict | None = None,
            max_completion_length: int = 0) -> Preview:
    """Read and check the dataset as [train] `method` needs it (BadInput on errors, engine.prefdata.load), then
    measure it with the model's tokenizer when it is local. At most `sample_limit` records are tokenized for the
    histogram; truncation is scaled to all. Preference pairs count both sequences of each pair, and show the
    first pair; grpo's prompts (checked against the [rewards] values `rewards`, when given) count each prompt's
    tokens, cut beyond max_seq_len - max_completion_length, and show the first prompt and its answer; other data
    shows its first example."""
    records, fmt, files = prefdata.load(path, fmt, method)
    if fmt == promptdata.FORMAT:
        return _prompt_preview(records, fmt, files, model_base, max_seq_len - max_completion_length, sample_limit,
                               rewards)
    tok = _tokenizer(model_base)
    p = Preview(format=fmt, records=len(records), files=files, exact=tok is not None, max_seq_len=max_seq_len)
    sample = records[:sample_limit]
    if fmt == prefdata.FORMAT:
        p.per_record = 2
        cut = 0
        for pair in sample:
            n = [_length(tok, pair.example(answer), False) for answer in (pair.chosen, pair.rejected)]
            p.lengths += n
            cut += max(n) > max_seq_len
        p.pair = _pair_pieces(tok, records[0], max_seq_len)
    else:
        p.lengths = [_length(tok, ex, train_on_prompt) for ex in sample]
        cut = sum(1 for n in p.lengths if n > max_seq_len)
        p.example = _pieces(tok, records[0], max_seq_len, train_on_prompt)
    p.truncated = round(cut * len(records) / max(1, len(sample)))
    return p


def _length(tok, ex, train_on_prompt: bool) -> int:
    """Tokens of one example: exact with the model's tokenizer, else about one per four characters."""
    if tok is not None:
        return len(D.encode(tok, ex, 1 << 30, train_on_prompt)[0].input_ids)
    text = ex.text if ex.text is not None else "".join(m["content"] for m in ex.messages)
    return len(text) // 4 + 8


def _pieces(tok, ex, max_seq_len: int, train_on_prompt: bool) -> list:
    """[(text, trained)] of one example as training sees it (from its characters without a tokenizer)."""
    if tok is not None:
        enc, _ = D.encode(tok, ex, max_seq_len, train_on_prompt)
        pieces, cur, cur_trained = [], [], None
        for tid, lab in zip(enc.input_ids, enc.labels):
            trained = lab != D.IGNORE
            if cur_trained is not None and trained != cur_trained:
                pieces.append((tok.decode(cur), cur_trained))
                cur = []
            cur.append(tid)
            cur_trained = trained
        if cur:
            pieces.append((tok.decode(cur), cur_trained))
        return pieces
    if ex.text is not None:
        return [(ex.text, True)]
    text, spans = D.render_spans(LightTemplate(), ex, train_on_prompt)
    pieces, pos = [], 0
    for a, b in spans:
        if a > pos:
            pieces.append((text[pos:a], False))
        pieces.append((text[a:b], True))
        pos = b
    if pos < len(text):
        pieces.append((text[pos:], False))
    return pieces


def _pair_pieces(tok, pair, max_seq_len: int) -> dict:
    """{"prompt", "chosen", "rejected": [(text, trained)]}: the masked prompt the two sequences share, and each
    answer from its first trained token on."""
    def split(pieces):
        first = next((i for i, (_, trained) in enumerate(pieces) if trained), len(pieces))
        return pieces[:first], pieces[first:]
    prompt, chosen = split(_pieces(tok, pair.example(pair.chosen), max_seq_len, False))
    rejected = split(_pieces(tok, pair.example(pair.rejected), max_seq_len, False))[1]
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _prompt_preview(prompts, fmt, files, model_base: str, budget: int, sample_limit: int, rewards) -> Preview:
    from .runfile import SECTION_KEYS, Section
    values = {k.name: k.default for k in SECTION_KEYS["rewards"].values()} | (rewards or {})
    if rewards is not None:
        promptdata.check_answers(prompts, Section(values))
    tok = _tokenizer(model_base)
    p = Preview(format=fmt, records=len(prompts), files=files, exact=tok is not None, max_seq_len=budget)
    sample = prompts[:sample_limit]
    if tok is not None:
        ids = [promptdata.prompt_ids(tok, pr) for pr in sample]
        p.lengths = [len(i) for i in ids]
        text = tok.decode(promptdata.prompt_ids(tok, prompts[0], budget))
    else:
        texts = [LightTemplate().apply_chat_template(pr.messages, add_generation_prompt=True) for pr in sample]
        p.lengths = [len(t) // 4 + 8 for t in texts]
        text = texts[0]
    p.truncated = round(sum(n > budget for n in p.lengths) * len(prompts) / max(1, len(sample)))
    field = values["answer_field"]
    p.prompt = {"pieces": [(text, False)], "answer_field": field, "answer": prompts[0].record.get(field)}
    return p


def _tokenizer(model_base: str):
    d = Path(model_base).expanduser()
    return LightTokenizer(d) if (d / "tokenizer.json").exists() else None


class LightTemplate(LightTokenizer):
    """The default ChatML template alone, for models whose tokenizer is not on this machine."""

    def __init__(self):
        self.chat_template = D.DEFAULT_CHAT_TEMPLATE
        self.bos_token = self.eos_token = None
        self._template = None
