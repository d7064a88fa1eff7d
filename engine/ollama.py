"""An Ollama Modelfile from a model's chat template (Jinja, as transformers renders it). Plain Python.

The template is rendered a few times with marker messages; what stands around the markers gives the text
before and after each role's content, the system block the template writes when the conversation has none
(Llama 3.1's dated header, Qwen2.5's "You are Qwen..."), and the generation prompt. They become Ollama's Go
template over .System and .Messages:

    {{ if .System }}<system prefix>{{ .System }}<system suffix>{{ else }}<default system block>{{ end }}
    {{ $last := "" }}{{ range .Messages }}{{ if eq .Role "user" }}<user prefix>{{ .Content }}<user suffix>
    {{ $last = "user" }}{{ else if eq .Role "assistant" }}...{{ end }}{{ end }}
    {{ if eq $last "user" }}<generation prompt>{{ end }}

(on one line, with no whitespace between the actions). It uses only if/else/end, range, eq and a variable.
The tokens that end an assistant turn become `PARAMETER stop` lines.
"""
from __future__ import annotations

import json

SYS, USER, ANSWER, USER2 = "\x00SYSTEM\x00", "\x00USER\x00", "\x00ANSWER\x00", "\x00USER2\x00"


def render(template: str, messages: list, generation_prompt: bool) -> str:
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x, indent=None, **kw: json.dumps(x, indent=indent, ensure_ascii=False)
    env.globals["raise_exception"] = lambda msg: (_ for _ in ()).throw(ValueError(msg))
    return env.from_string(template).render(messages=messages, add_generation_prompt=generation_prompt,
                                            bos_token="", eos_token="")


def _msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def roles(template: str) -> dict:
    """{system_prefix, system_suffix, default_system, user_prefix, user_suffix, assistant_prefix,
    assistant_suffix, generation_prompt}: the pieces the template's renderings are made of."""
    one = render(template, [_msg("user", USER)], False)
    two = render(template, [_msg("user", USER), _msg("assistant", ANSWER)], False)
    three = render(template, [_msg("user", USER), _msg("assistant", ANSWER), _msg("user", USER2)], False)
    prompt = render(template, [_msg("user", USER)], True)
    with_system = render(template, [_msg("system", SYS), _msg("user", USER)], False)
    user_suffix = one.split(USER)[1]
    assistant_suffix = two.split(ANSWER)[1]
    user_prefix = three.split(ANSWER)[1].split(USER2)[0].removeprefix(assistant_suffix)
    before_user = one.split(USER)[0]
    if not before_user.endswith(user_prefix):
        raise ValueError("the chat template's first user turn is not written like the later ones")
    system_prefix, rest = with_system.split(SYS)
    system_suffix = rest.split(USER)[0]
    if not system_suffix.endswith(user_prefix):
        raise ValueError("the chat template's user turn after a system message is not written like the others")
    assistant_prefix = two.split(USER)[1].split(ANSWER)[0].removeprefix(user_suffix)
    return {"system_prefix": system_prefix, "system_suffix": system_suffix.removesuffix(user_prefix),
            "default_system": before_user.removesuffix(user_prefix), "user_prefix": user_prefix,
            "user_suffix": user_suffix, "assistant_prefix": assistant_prefix, "assistant_suffix": assistant_suffix,
            "generation_prompt": prompt.split(USER)[1].removeprefix(user_suffix)}


def _text(s: str) -> str:
    """Literal text in a Go template: a `{{` in it is written as the string "{{"."""
    return s.replace("{{", '{{ "{{" }}')


def go_template(r: dict) -> str:
    t = {k: _text(v) for k, v in r.items()}
    system = "{{ if .System }}" + t["system_prefix"] + "{{ .System }}" + t["system_suffix"]
    system += ("{{ else }}" + t["default_system"] if r["default_system"] else "") + "{{ end }}"
    turns = ('{{ $last := "" }}{{ range .Messages }}'
             '{{ if eq .Role "user" }}' + t["user_prefix"] + "{{ .Content }}" + t["user_suffix"]
             + '{{ $last = "user" }}{{ else if eq .Role "assistant" }}' + t["assistant_prefix"] + "{{ .Content }}"
             + t["assistant_suffix"] + '{{ $last = "assistant" }}{{ end }}{{ end }}')
    return system + turns + '{{ if eq $last "user" }}' + t["generation_prompt"] + "{{ end }}"


def check(template: str, r: dict) -> None:
    """The pieces put back together give the template's own rendering of a conversation, or ValueError."""
    convo = [_msg("user", USER), _msg("assistant", ANSWER), _msg("user", USER2)]
    for system in (None, SYS):
        msgs = ([_msg("system", system)] if system else []) + convo
        head = r["system_prefix"] + system + r["system_suffix"] if system else r["default_system"]
        want = (head + r["user_prefix"] + USER + r["user_suffix"] + r["assistant_prefix"] + ANSWER
                + r["assistant_suffix"] + r["user_prefix"] + USER2 + r["user_suffix"] + r["generation_prompt"])
        if render(template, msgs, True) != want:
            raise ValueError("the chat template does not split into a prefix and suffix per role, which an "
                             "Ollama TEMPLATE needs")


def modelfile(gguf_path: str, template: str, special: dict, system: str | None = None) -> str:
    """FROM, TEMPLATE, the stop tokens (special tokens that end an answer, and the end-of-sequence token), SYSTEM."""
    r = roles(template)
    check(template, r)
    ends = r["assistant_suffix"]
    stops = [t for t in special.get("specials", []) if t in ends]
    if special.get("eos") and special["eos"] not in stops:
        stops.append(special["eos"])
    lines = [f"FROM {gguf_path}", f'TEMPLATE """{go_template(r)}"""']
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in stops]
    if system:
        lines.append(f'SYSTEM """{system}"""')
    return "\n".join(lines) + "\n"
