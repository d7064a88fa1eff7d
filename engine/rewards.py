"""GRPO's rewards: what a sampled answer (a completion) to a prompt record earns, from the run file's [rewards].

Torch-free plain Python: the trainer, `rigtune check` and a script call the same code.

    rw = Rewards.from_config(cfg)
    totals, parts = rw.score(completions, token_counts, records)   # one entry per completion
    rw.solved(totals[0])                                            # full marks?

Each active reward (weight > 0) gives one completion a value, and the total is the weighted sum:

    exact     1 when the extracted answer equals str(record[answer_field]), both stripped of whitespace
    numeric   1 when the extracted answer is a number (commas, a sign, decimals) within tolerance of the record's
    format    1 when re.search(pattern, completion, re.DOTALL) matches (anchor with ^ and $ for the whole answer)
    length    with length_target T > 0: max(0, 1 - |n - T| / T) for n completion tokens (1 at T, 0 at none and 2T);
              with T = 0: max(0, 1 - n / max_completion_length) (shorter is better)
    function  the user's NAME(completion, record) from FILE.py, as written: any finite number (True/False are
              1/0); its full mark is 1 unless the function declares another (NAME.max_reward = 10)

The extracted answer is the pattern's first group when the pattern has a group and matches, else the whole
completion stripped. The built-in rewards lie in [0, 1]; max_total is the sum of the weights (the function's
weight times its full mark), and a completion is solved when its total reaches max_total (within 1e-9).
"""
from __future__ import annotations

import hashlib
import math
import numbers
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import BadInput

NAMES = ("exact", "numeric", "format", "length", "function")   # the order of parts, and their weight keys
WEIGHT_KEY = {"exact": "exact", "numeric": "numeric", "format": "format", "length": "length",
              "function": "function_weight"}
ANSWER_REWARDS = ("exact", "numeric")   # these read the record's answer_field
SOLVED_EPS = 1e-9
_NUMBER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|[+-]?\.\d+")


@dataclass
class Reward:
    name: str            # a key of NAMES
    weight: float
    value: Callable      # (completion, token_count, record) -> float
    max: float = 1.0     # its full mark
    label: str = ""      # what it is, for `rigtune check` and the dashboard


def parse_number(text) -> float | None:
    """A number as people write it: '1,234', '-3', '+0.5', '42.', '.5'; None for anything else."""
    if isinstance(text, bool):
        return None
    if isinstance(text, numbers.Real):
        return float(text) if math.isfinite(text) else None
    if not isinstance(text, str) or not _NUMBER.fullmatch(text.strip()):
        return None
    return float(text.strip().replace(",", ""))


# ---------------------------------------------------------------------------- checking [rewards]

def function_spec(spec: str) -> tuple[str, str] | None:
    """(FILE.py, NAME) of a [rewards] function value, None when it does not read FILE.py:NAME."""
    file, sep, name = spec.rpartition(":")
    if not sep or not file.endswith(".py") or not name.isidentifier():
        return None
    return file, name


def check_values(d: dict, fail: Callable) -> None:
    """The [rewards] rules the schema alone cannot say, for runfile validation: `fail(message, section, key)`."""
    r = d["rewards"]
    if r["pattern"]:
        try:
            re.compile(r["pattern"], re.DOTALL)
        except re.error as e:
            fail(f"pattern is not a valid regular expression ({e}); for example \"<answer>(.*?)</answer>\".",
                 "rewards", "pattern")
    elif r["format"] > 0:
        fail("the format reward (format > 0) needs a pattern to match; set pattern, e.g. \"<answer>(.*?)</answer>\", "
             "or format = 0.", "rewards", "format")
    if r["function"] and function_spec(r["function"]) is None:
        fail(f"function = {r['function']!r} must read FILE.py:NAME, e.g. \"rewards.py:score\" (the file relative to "
             "the run file).", "rewards", "function")
    if d["train"]["method"] != "grpo":
        return
    active = [n for n in NAMES if r[WEIGHT_KEY[n]] > 0 and (n != "function" or r["function"])]
    if not active:
        fail("grpo needs a reward: every [rewards] weight is 0 (exact, numeric, format, length, and function_weight "
             "with a function); set exact = 1, for example.", "rewards", "exact")
    if d["train"]["max_completion_length"] >= d["data"]["max_seq_len"]:
        fail(f"max_completion_length ({d['train']['max_completion_length']}) leaves no room for the prompt within "
             f"[data] max_seq_len ({d['data']['max_seq_len']}); lower it or raise max_seq_len.", "train",
             "max_completion_length")


# ---------------------------------------------------------------------------- the rewards

class Rewards:
    """The active rewards of a run; score() gives each completion its weighted total and each reward's value."""

    def __init__(self, rewards: list, pattern: str = "", answer_field: str = "answer"):
        self.rewards = list(rewards)
        self.pattern = re.compile(pattern, re.DOTALL) if pattern else None
        self.answer_field = answer_field

    @classmethod
    def from_config(cls, cfg) -> Rewards:
        """The run's active rewards (weight > 0); a [rewards] function is imported now (its module runs), its
        file taken relative to the run file's folder (cfg.path; the current directory when there is none)."""
        r = cfg.rewards
        self = cls([], r.pattern, r.answer_field)
        n_max = cfg.train.max_completion_length
        built = {
            "exact": lambda c, n, rec: float(self.answer(c) == str(self._truth(rec)).strip()),
            "numeric": lambda c, n, rec: _numeric(self.answer(c), self._truth(rec), r.tolerance),
            "format": lambda c, n, rec: float(self.pattern is not None and self.pattern.search(c) is not None),
            "length": lambda c, n, rec: _length(n, r.length_target, n_max),
        }
        labels = {"exact": f"answer equals the record's {r.answer_field!r}",
                  "numeric": f"answer within {r.tolerance:g} of the record's {r.answer_field!r}",
                  "format": f"matches {r.pattern!r}",
                  "length": (f"about {r.length_target} tokens" if r.length_target else "shorter is better")}
        for name in NAMES[:-1]:
            if getattr(r, WEIGHT_KEY[name]) > 0:
                self.rewards.append(Reward(name, float(getattr(r, WEIGHT_KEY[name])), built[name], 1.0, labels[name]))
        if r.function and r.function_weight > 0:
            self.rewards.append(load_function(cfg))
        return self

    # -- what the rewards read
    def answer(self, completion: str) -> str:
        """The extracted answer: the pattern's first group when it has one and matches, else the whole completion;
        stripped either way."""
        if self.pattern is not None and self.pattern.groups:
            m = self.pattern.search(completion)
            if m and m.group(1) is not None:
                return m.group(1).strip()
        return completion.strip()

    def _truth(self, record: dict):
        if self.answer_field not in record or record[self.answer_field] is None:
            raise BadInput(f"a record has no '{self.answer_field}', which the exact and numeric rewards compare "
                           "with ([rewards] answer_field).", key=self.answer_field)
        return record[self.answer_field]

    def full_marks_completion(self, record: dict) -> str:
        """A completion that should earn the exact, numeric and format rewards on `record`, for `rigtune check`:
        the record's answer, put where the pattern's first group goes when the pattern has one (built from the
        pattern itself: its literal text, the answer for the group, the shortest text for the rest); the bare
        answer when that text does not match back."""
        truth = record.get(self.answer_field)
        answer = "" if truth is None else str(truth).strip()
        if self.pattern is None or (not self.pattern.groups and (self.uses_answer or self.pattern.search(answer))):
            return answer  # without a group, exact and numeric read the whole completion
        try:
            text = _example(_parse(self.pattern.pattern), answer or "1")
        except Exception:  # a construct the builder does not know: the bare answer is the best guess
            return answer
        ok = self.pattern.search(text) and (not self.pattern.groups or not answer or self.answer(text) == answer)
        return text if ok else answer

    @property
    def names(self) -> list:
        return [rw.name for rw in self.rewards]

    @property
    def uses_answer(self) -> bool:
        return any(n in ANSWER_REWARDS for n in self.names)

    @property
    def max_total(self) -> float:
        """The best total: each weight times its reward's full mark (1; a function's own max_reward)."""
        return sum(rw.weight * rw.max for rw in self.rewards)

    def solved(self, total: float) -> bool:
        return total >= self.max_total - SOLVED_EPS

    # -- scoring
    def score(self, completions: list, lengths: list, records: list,
              sources: list | None = None) -> tuple[list, dict]:
        """(totals, parts): per completion the weighted sum of the active rewards, and {reward name: [value per
        completion]}. lengths are the completions' token counts (the caller has the tokenizer); sources, when
        given, name each record ("file:record") in errors. BadInput when a user function fails."""
        if not len(completions) == len(lengths) == len(records):
            raise ValueError(f"score() needs one length and one record per completion ({len(completions)} "
                             f"completions, {len(lengths)} lengths, {len(records)} records)")
        parts = {rw.name: [] for rw in self.rewards}
        totals = []
        for i, (c, n, rec) in enumerate(zip(completions, lengths, records)):
            total = 0.0
            for rw in self.rewards:
                try:
                    v = rw.value(c, n, rec)
                except BadInput as e:
                    if not sources:
                        raise
                    raise BadInput(f"{e.bare} (the record: {sources[i]})", path=e.path, line=e.line,
                                   key=e.key) from None
                parts[rw.name].append(v)
                total += rw.weight * v
            totals.append(total)
        return totals, parts


def check_lines(cfg, record: dict, source: str, count_tokens: Callable | None = None) -> list:
    """What `rigtune check` prints for a grpo run: the active rewards, and each one's value on `record` for a
    completion that should earn full marks (Rewards.full_marks_completion). The user's function is imported and
    called here, so a broken one fails now (BadInput with its file and line). count_tokens(text) -> int gives the
    completion's length for the length reward; without it, about one token per four characters."""
    rw = Rewards.from_config(cfg)
    completion = rw.full_marks_completion(record)
    n = count_tokens(completion) if count_tokens else max(1, len(completion) // 4)
    totals, parts = rw.score([completion], [n], [record], [source])
    lines = [f"rewards: {', '.join(f'{r.name} x {r.weight:g}' for r in rw.rewards)}; full marks {rw.max_total:g}",
             f"reward check on {source}, completion {_short(completion, 80)} ({n} token{'' if n == 1 else 's'}"
             f"{'' if count_tokens else ', estimated'}):"]
    width = max(len(r.name) for r in rw.rewards)
    for r in rw.rewards:
        lines.append(f"  {r.name:<{width}}  {parts[r.name][0]:g} of {r.max:g} x {r.weight:g}  ({r.label})")
    lines.append(f"  total {totals[0]:g} of {rw.max_total:g}" + (" (solved)" if rw.solved(totals[0]) else ""))
    return lines


def _numeric(answer: str, truth, tolerance: float) -> float:
    got, want = parse_number(answer), parse_number(truth)
    if want is None:
        raise BadInput(f"the numeric reward needs a number as the record's answer, got {truth!r}.")
    return float(got is not None and abs(got - want) <= tolerance + SOLVED_EPS * max(1.0, abs(want)))


def _length(n: int, target: int, n_max: int) -> float:
    if target > 0:
        return max(0.0, 1.0 - abs(n - target) / target)
    return max(0.0, 1.0 - n / max(1, n_max))


def _parse(pattern: str):
    try:
        from re import _parser as parser
    except ImportError:  # Python 3.10
        import sre_parse as parser
    return parser.parse(pattern, re.DOTALL)


def _example(items, answer: str) -> str:
    """Text that the parsed pattern `items` matches, with `answer` as its first group."""
    out = []
    for op, av in items:
        op = str(op)
        if op == "LITERAL":
            out.append(chr(av))
        elif op == "NOT_LITERAL":
            out.append("x" if av != ord("x") else "y")
        elif op == "SUBPATTERN":
            out.append(answer if av[0] == 1 else _example(av[-1], answer))
        elif op in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            out.append(_example(av[2], answer) * av[0])
        elif op == "BRANCH":
            alts = av[1]
            out.append(_example(next((a for a in alts if _has_group_1(a)), alts[0]), answer))
        elif op == "IN":
            out.append(_one_of(av))
        elif op == "ANY":
            out.append("a")
        elif op not in ("AT", "ASSERT", "ASSERT_NOT"):
            raise ValueError(op)
    return "".join(out)


def _has_group_1(x) -> bool:
    if isinstance(x, tuple) and len(x) == 2 and str(x[0]) == "SUBPATTERN" and x[1][0] == 1:
        return True
    return isinstance(x, (list, tuple)) and any(_has_group_1(y) for y in x)


def _one_of(items) -> str:
    """A character of a [...] class."""
    category = {"CATEGORY_DIGIT": "0", "CATEGORY_SPACE": " ", "CATEGORY_WORD": "a", "CATEGORY_NOT_DIGIT": "a",
                "CATEGORY_NOT_SPACE": "a", "CATEGORY_NOT_WORD": " "}
    if items and str(items[0][0]) == "NEGATE":
        taken = {chr(av) for op, av in items[1:] if str(op) == "LITERAL"}
        return next(c for c in "axq#Z" if c not in taken)
    op, av = items[0]
    op = str(op)
    return chr(av) if op == "LITERAL" else chr(av[0]) if op == "RANGE" else category[str(av)]


# ---------------------------------------------------------------------------- the user's function

def function_path(cfg) -> tuple[Path, str]:
    """(the file, absolute, and NAME) of [rewards] function: the file taken relative to the run file's folder."""
    spec = function_spec(cfg.rewards.function)
    if spec is None:
        raise BadInput(f"function = {cfg.rewards.function!r} must read FILE.py:NAME.", path=cfg.path,
                       line=cfg.line_of("rewards", "function"), key="rewards.function")
    file, name = spec
    p = Path(file).expanduser()
    if not p.is_absolute():
        p = (Path(cfg.path).parent if cfg.path else Path.cwd()) / p
    return p.absolute(), name


def load_function(cfg) -> Reward:
    """Import the user's FILE.py (its code runs, as written) and wrap NAME as the "function" reward."""
    import importlib.util
    path, name = function_path(cfg)
    where = {"path": cfg.path, "line": cfg.line_of("rewards", "function"), "key": "rewards.function"}
    if not path.is_file():
        raise BadInput(f"the reward function's file {path} is not there (it is taken relative to the run file's "
                       "folder).", **where)
    stem = re.sub(r"\W", "_", path.stem)
    mod_name = f"rigtune_reward_{stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise BadInput(f"{path.name} does not compile: {e.msg}.", path=str(path), line=e.lineno,
                       key="rewards.function") from None
    except Exception as e:
        raise BadInput(f"importing {path.name} raised {_said(e)}.", path=str(path), line=_line_in(e, path),
                       key="rewards.function") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        defined = sorted(k for k, v in vars(module).items() if callable(v) and getattr(v, "__module__", "") == mod_name)
        raise BadInput(f"{path.name} has no function {name!r}" + (f"; it defines {', '.join(defined)}." if defined
                       else "."), **where)
    top = getattr(fn, "max_reward", 1.0)
    if isinstance(top, bool) or not isinstance(top, numbers.Real) or not math.isfinite(top) or top <= 0:
        raise BadInput(f"{name}.max_reward = {top!r}; a function's full mark must be a number > 0.", path=str(path),
                       key="rewards.function")
    return Reward("function", float(cfg.rewards.function_weight), _Caller(fn, path, name, float(top)), float(top),
                  f"{path.name}:{name}")


class _Caller:
    """Calls the user's function; any failure or a value that is not a finite number up to its full mark stops
    with BadInput naming the file and line, and what it raised or returned."""

    def __init__(self, fn, path: Path, name: str, top: float):
        self.fn, self.path, self.name, self.top = fn, path, name, top

    def __call__(self, completion: str, n: int, record: dict) -> float:
        try:
            v = self.fn(completion, dict(record))
        except Exception as e:
            raise BadInput(f"{self.name}(completion, record) raised {_said(e)} on the completion {_short(completion)}.",
                           path=str(self.path), line=_line_in(e, self.path), key="rewards.function") from None
        bad = _not_a_reward(v, self.top, self.name)
        if bad is None:
            return float(v)
        raise BadInput(f"{self.name}(completion, record) returned {_short(v)} on the completion {_short(completion)}; "
                       f"{bad}",
                       path=str(self.path), line=self._return_line(completion, record, v), key="rewards.function")

    def _return_line(self, completion: str, record: dict, value) -> int:
        """The line of the return that gave `value`: the function is called once more with a profiler watching
        its own frame; its def line when that call does not return the same."""
        code, seen = getattr(self.fn, "__code__", None), []

        def watch(frame, event, arg):
            if event == "return" and frame.f_code is code:
                seen.append((frame.f_lineno, arg))
        old = sys.getprofile()
        sys.setprofile(watch)
        try:
            self.fn(completion, dict(record))
        except Exception:
            seen.clear()
        finally:
            sys.setprofile(old)
        if seen and _short(seen[-1][1]) == _short(value):
            return seen[-1][0]
        return getattr(code, "co_firstlineno", None)


def _not_a_reward(v, top: float, name: str) -> str | None:
    """Why v is not a reward (None when it is one)."""
    if isinstance(v, bool):
        return None
    if not isinstance(v, numbers.Real):
        return "a reward must be a number (int or float; True/False count as 1/0)."
    if not math.isfinite(v):
        return "a reward must be a finite number."
    if v > top + SOLVED_EPS:
        return (f"that is above its full mark {top:g}, so it could make up for another reward's miss; declare "
                f"the most it gives with {name}.max_reward = ... in its file.")
    return None


def _line_in(e: BaseException, path: Path) -> int | None:
    """The line of the last traceback frame inside the user's file."""
    lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).absolute() == path]
    return lines[-1] if lines else None


def _said(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _short(v, n: int = 60) -> str:
    s = repr(v)
    return s if len(s) <= n else s[:n - 3] + "..."
