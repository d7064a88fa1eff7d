"""An Ollama Modelfile from a model's chat template (Jinja, as transformers renders it). Plain Python.

The template is rendered with marker messages, always ending on a user turn with the generation prompt, which
is how Ollama renders a chat. What stands between the markers gives the text a conversation is made of:

    head   before the first user message (BOS, a default system block such as Llama 3.1's dated header,
           Qwen2.5's "You are Qwen...", gpt-oss's harmony system block), then that user turn's opening
    u2a    between a user message and the assistant answer after it
    a2u    between an assistant answer and the next user message
    tail   after the last user message: its closing and the generation prompt (Qwen3.5's `<think>`)
    system where a system prompt goes: before the first user message (its own block, or folded into the first
           user turn as Gemma 3 does), into the last user turn (Mistral), or nowhere (Gemma 2 refuses one)

Past assistant turns are read from a conversation that goes on after them, so what a template writes only for
the answer being trained (Qwen3's empty think block, gpt-oss's `<|return|>`) stays out of the history; the
ending it writes after a final answer gives the stop tokens, and closes a chat that ends on an answer. A date the template writes (strftime_now) becomes
Ollama's `currentDate`, cut and renamed with `slice` and `eq` into the template's format. The result is
checked: put back together for one, two and three user turns, with and without a system prompt, it must
equal the template's own rendering, or the export is refused with the reason (BadInput): a Modelfile that
renders otherwise than the model was trained would answer worse without saying so.

The Go template uses only range, if/else, variables, eq/and/len/slice and currentDate. Not expressible there,
and so not carried over: a template's trimming of each message's surrounding whitespace (Gemma, Qwen3.5), and
its stripping of `<think>` blocks from past answers (Qwen3): Ollama passes message text as it is.
"""
from __future__ import annotations

import datetime
import json
import re

from .errors import BadInput

SYS, U1, A1, U2, A2, U3 = (f"\x00{n}\x00" for n in ("SYSTEM", "USER1", "ANSWER1", "USER2", "ANSWER2", "USER3"))
DAY = datetime.datetime(2087, 11, 29, 13, 57, 41)  # a date no template text contains
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
DATE_PARTS = {"%Y": "slice $today 0 4", "%m": "slice $today 5 7", "%d": "slice $today 8 10",
              "%y": "slice $today 2 4", "%b": "month", "%B": "month", "%%": None}
USED_DATE = re.compile(r"\x01(\d+)\x01")


class Refused(ValueError):
    """A chat template's own raise_exception(...): what the template refuses, e.g. Gemma 2 a system message."""


class Unfit(BadInput):
    """The chat template cannot be written as an Ollama TEMPLATE that renders the same."""

    def __init__(self, why: str):
        super().__init__(f"the chat template cannot be written as an Ollama TEMPLATE: {why}. Export to 'gguf' "
                         "and write the Modelfile's TEMPLATE by hand, or use a model whose template fits.",
                         key="--to")


def render(template: str, messages: list, generation_prompt: bool, bos: str = "", eos: str = "",
           now: datetime.datetime | None = None, formats: set | None = None) -> str:
    """As transformers renders it (trim_blocks, lstrip_blocks, loop controls, strftime_now, raise_exception);
    the strftime formats the template asks for are added to `formats`."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None, separators=None, sort_keys=False, ensure_ascii=False: json.dumps(
        x, indent=indent, separators=separators, sort_keys=sort_keys, ensure_ascii=ensure_ascii)

    def strftime_now(fmt: str) -> str:
        if formats is not None:
            formats.add(fmt)
        return (now or datetime.datetime.now()).strftime(fmt)
    env.globals["raise_exception"] = lambda msg: (_ for _ in ()).throw(Refused(msg))
    env.globals["strftime_now"] = strftime_now
    return env.from_string(template).render(messages=messages, add_generation_prompt=generation_prompt,
                                            bos_token=bos, eos_token=eos)


def _msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def _turns(users: int) -> list:
    """user, assistant, user, ... with `users` user messages, as markers."""
    out = []
    for i, (u, a) in enumerate(((U1, A1), (U2, A2), (U3, None))[:users]):
        out.append(_msg("user", u))
        if i < users - 1:
            out.append(_msg("assistant", a))
    return out


def _cut(text: str, *marks: str) -> list:
    """text split around each marker in turn; Unfit if one is missing or stands twice."""
    parts = []
    for m in marks:
        if text.count(m) != 1:
            raise Unfit("it does not write each message's text once, in order")
        before, text = text.split(m)
        parts.append(before)
    return parts + [text]


def pieces(template: str, bos: str = "", eos: str = "") -> dict:
    """{head, u2a, a2u, tail, ending, system: first|last|None, head_sys: (pre, post), a2u_sys: (pre, post),
    dates: [strftime formats]} with each date the template writes replaced by \\x01N\\x01 (N: its format)."""
    formats: set = set()

    def r(messages, generation_prompt=True):
        return render(template, messages, generation_prompt, bos, eos, DAY, formats)
    p = {"system": None, "head_sys": ("", ""), "a2u_sys": ("", "")}
    p["head"], p["tail"] = _cut(r(_turns(1)), U1)
    head, p["u2a"], p["a2u"], tail = _cut(r(_turns(2)), U1, A1, U2)
    if (head, tail) != (p["head"], p["tail"]):
        raise Unfit("the first user turn is written differently once the conversation goes on")
    p["ending"] = _cut(r(_turns(1) + [_msg("assistant", A1)], False), U1, A1)[2]
    p.update(_system(r))
    return _dated(p, formats)


def _system(r) -> dict:
    """Where the template puts a system prompt, from renderings with one and two user turns."""
    try:
        one = r([_msg("system", SYS)] + _turns(1))
    except Refused:  # the template itself refuses a system message (Gemma 2): the Modelfile drops one
        return {"system": None}
    except Exception as e:  # anything else is a template this reading cannot follow: refused, not guessed
        raise Unfit(f"rendering it with a system prompt fails ({type(e).__name__}: {e})") from None
    if SYS not in one:
        raise Unfit("it drops the system prompt")
    pre, post, _ = _cut(one, SYS, U1)
    two = r([_msg("system", SYS)] + _turns(2))
    if two.find(SYS) < two.find(U1):
        return {"system": "first", "head_sys": (pre, post)}
    if two.find(A1) < two.find(SYS) < two.find(U2):
        _, _, a2u_pre, a2u_post, _ = _cut(two, U1, A1, SYS, U2)
        return {"system": "last", "head_sys": (pre, post), "a2u_sys": (a2u_pre, a2u_post)}
    raise Unfit("it puts the system prompt neither before the first user turn nor in the last one")


def _dated(p: dict, formats: set) -> dict:
    """Each date the template wrote as \\x01N\\x01, N indexing p['dates']; Unfit for a format Ollama can't write."""
    p["dates"] = sorted(formats, key=lambda f: -len(DAY.strftime(f)))
    for i, fmt in enumerate(p["dates"]):
        bad = [d for d in re.findall(r"%.", fmt) if d not in DATE_PARTS]
        if bad:
            raise Unfit(f"it writes the time as {fmt!r}, and Ollama's template knows only today's date")
        for k, v in p.items():
            if isinstance(v, str):
                p[k] = v.replace(DAY.strftime(fmt), f"\x01{i}\x01")
            elif isinstance(v, tuple):
                p[k] = tuple(s.replace(DAY.strftime(fmt), f"\x01{i}\x01") for s in v)
    if any(str(DAY.year) in s for v in p.values() for s in (v if isinstance(v, tuple) else [v])
           if isinstance(s, str)):
        raise Unfit("it writes today's date in a way that cannot be traced to one format")
    return p


def assemble(p: dict, system: str | None, messages: list, dates: tuple = ()) -> str:
    """What the Go template renders for a chat (messages alternate from a user turn; no system message among
    them), in Python: how check() compares the pieces with the Jinja rendering. dates: the formatted dates."""
    out, first, last = [], True, None
    for i, m in enumerate(messages):
        if m["role"] == "user":
            here = bool(system) and (first if p["system"] == "first" else
                                     i == len(messages) - 1 if p["system"] == "last" else False)
            pre, post = p["head_sys"] if first else p["a2u_sys"]
            out += [pre + system + post if here else p["head"] if first else p["a2u"], m["content"]]
            first, last = False, "user"
        else:
            out += [p["u2a"], m["content"]]
            last = "assistant"
    text = "".join(out) + (p["tail"] if last == "user" else p["ending"] if last == "assistant" else "")
    return USED_DATE.sub(lambda m: dates[int(m.group(1))], text)


def check(template: str, p: dict, bos: str = "", eos: str = "") -> None:
    """The pieces put back together give the template's own rendering of one, two and three user turns, with and
    without a system prompt; Unfit otherwise."""
    dates = tuple(DAY.strftime(f) for f in p["dates"])
    for users in (1, 2, 3):
        for system in ((None, SYS) if p["system"] else (None,)):
            msgs = ([_msg("system", system)] if system else []) + _turns(users)
            if render(template, msgs, True, bos, eos, DAY) != assemble(p, system, _turns(users), dates):
                raise Unfit("its turns are not written the same way each time (a prefix and suffix per role), "
                            "which an Ollama TEMPLATE over .Messages needs")


def _text(s: str) -> str:
    """Literal text in a Go template: `{{` is written as the string "{{"; a date as Go actions over $today."""
    s = s.replace("{{", '{{ "{{" }}')
    return USED_DATE.sub(lambda m: "\x02" + m.group(1) + "\x02", s)


def _date(fmt: str) -> str:
    """Go actions writing today's date (currentDate: YYYY-MM-DD) in a strftime format of DATE_PARTS."""
    out = []
    for literal, directive in re.findall(r"([^%]*)(%.)?", fmt):
        out.append(_text(literal))
        if directive == "%%":
            out.append("%")
        elif directive in ("%b", "%B"):
            names = [n[:3] if directive == "%b" else n for n in MONTHS]
            out.append("".join(("{{ if " if i == 0 else "{{ else if ") + f'eq (slice $today 5 7) "{i + 1:02d}" }}}}'
                               + n for i, n in enumerate(names)) + "{{ end }}")
        elif directive:
            out.append("{{ " + DATE_PARTS[directive] + " }}")
    return "".join(out)


def go_template(p: dict) -> str:
    t = {k: _text(v) if isinstance(v, str) else tuple(map(_text, v)) for k, v in p.items() if k != "dates"
         and isinstance(v, (str, tuple))}
    here = {"first": "{{ $sys := and $.System $first }}",
            "last": "{{ $sys := and $.System (eq (len (slice $.Messages $i)) 1) }}"}.get(p["system"], "")

    def opening(pre_post: tuple, plain: str) -> str:
        if not p["system"]:
            return plain
        return "{{ if $sys }}" + pre_post[0] + "{{ $.System }}" + pre_post[1] + "{{ else }}" + plain + "{{ end }}"
    user = (here + "{{ if $first }}" + opening(t["head_sys"], t["head"]) + "{{ else }}"
            + opening(t["a2u_sys"], t["a2u"]) + "{{ end }}{{ $m.Content }}"
            + '{{ $first = false }}{{ $last = "user" }}')
    go = ("{{ $today := currentDate }}" if p["dates"] else "") + '{{ $first := true }}{{ $last := "" }}'
    go += ('{{ range $i, $m := .Messages }}{{ if eq $m.Role "user" }}' + user + '{{ else if eq $m.Role "assistant" }}'
           + t["u2a"] + '{{ $m.Content }}{{ $last = "assistant" }}{{ end }}{{ end }}'
           + '{{ if eq $last "user" }}' + t["tail"] + '{{ else if eq $last "assistant" }}' + t["ending"] + "{{ end }}")
    return re.sub("\x02(\\d+)\x02", lambda m: _date(p["dates"][int(m.group(1))]), go)


def modelfile(gguf_path: str, template: str, special: dict, system: str | None = None) -> str:
    """FROM, TEMPLATE, the stop tokens (the special tokens that end a trained answer, and the end-of-sequence
    token), SYSTEM. special: {specials: [special tokens' text], bos, eos}. Unfit (BadInput) where the chat
    template cannot be carried over faithfully."""
    bos, eos = special.get("bos") or "", special.get("eos") or ""
    p = pieces(template, bos, eos)
    check(template, p, bos, eos)
    if system and not p["system"]:
        raise BadInput("the model's chat template refuses a system prompt, so the Modelfile cannot carry "
                       "--system; leave it out.", key="--system")
    go = go_template(p)
    if '"""' in go or (system and '"""' in system):
        raise Unfit('its text holds """, which ends a Modelfile\'s TEMPLATE')
    ending = p["ending"]
    stops = sorted((t for t in special.get("specials", []) if t and t in ending), key=ending.find)
    if eos and eos not in stops:
        stops.append(eos)
    lines = [f"FROM {gguf_path}", f'TEMPLATE """{go}"""']
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in stops]
    if system:
        lines.append(f'SYSTEM """{system}"""')
    return "\n".join(lines) + "\n"
