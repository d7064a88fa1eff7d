"""An Ollama Modelfile from a model's chat template (Jinja, as transformers renders it). Plain Python.

The template is rendered once with marker messages; what stands before and after each marker gives the
prefix and suffix of each role, which become Ollama's Go template over .System, .Prompt and .Response. The
tokens that end an assistant turn become `PARAMETER stop` lines.
"""
from __future__ import annotations

import json

SYS, USER, ANSWER = "\x00SYSTEM\x00", "\x00USER\x00", "\x00ANSWER\x00"


def render(template: str, messages: list, generation_prompt: bool) -> str:
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x, indent=None, **kw: json.dumps(x, indent=indent, ensure_ascii=False)
    env.globals["raise_exception"] = lambda msg: (_ for _ in ()).throw(ValueError(msg))
    return env.from_string(template).render(messages=messages, add_generation_prompt=generation_prompt,
                                            bos_token="", eos_token="")


def roles(template: str) -> dict:
    """{system_prefix, system_suffix, user_prefix, user_suffix, assistant_prefix, assistant_suffix}."""
    with_system = render(template, [{"role": "system", "content": SYS}, {"role": "user", "content": USER},
                                    {"role": "assistant", "content": ANSWER}], False)
    user_turn = render(template, [{"role": "user", "content": USER}], False)
    prompt_only = render(template, [{"role": "user", "content": USER}], True)
    user_prefix, user_suffix = user_turn.split(USER)
    assistant_prefix = prompt_only.split(USER)[1].removeprefix(user_suffix)
    system_prefix, rest = with_system.split(SYS)
    system_suffix = rest.split(USER)[0].removesuffix(user_prefix)
    assistant_suffix = with_system.split(ANSWER)[1]
    return {"system_prefix": system_prefix, "system_suffix": system_suffix, "user_prefix": user_prefix,
            "user_suffix": user_suffix, "assistant_prefix": assistant_prefix, "assistant_suffix": assistant_suffix}


def go_template(r: dict) -> str:
    return ("{{ if .System }}" + r["system_prefix"] + "{{ .System }}" + r["system_suffix"] + "{{ end }}"
            "{{ if .Prompt }}" + r["user_prefix"] + "{{ .Prompt }}" + r["user_suffix"] + "{{ end }}"
            + r["assistant_prefix"] + "{{ .Response }}" + r["assistant_suffix"])


def modelfile(gguf_path: str, template: str, special: dict, system: str | None = None) -> str:
    """FROM, TEMPLATE, the stop tokens (special tokens that end an answer, and the end-of-sequence token), SYSTEM."""
    r = roles(template)
    ends = r["assistant_suffix"]
    stops = [t for t in special.get("specials", []) if t in ends]
    if special.get("eos") and special["eos"] not in stops:
        stops.append(special["eos"])
    lines = [f"FROM {gguf_path}", f'TEMPLATE """{go_template(r)}"""']
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in stops]
    if system:
        lines.append(f'SYSTEM """{system}"""')
    return "\n".join(lines) + "\n"
