"""A small interpreter for the part of Go's text/template that engine/ollama.py writes, executed as Ollama
executes a TEMPLATE that ranges over .Messages: the data is {System, Messages}, each message {Role, Content}.

Actions: {{ if X }} / {{ else if X }} / {{ else }} / {{ end }}, {{ range .Messages }}, {{ X }} (prints),
{{ $v := X }} and {{ $v = X }}; X is .Field, $v, a "string" or eq A B. Anything else (a trim marker, another
function) raises, so a template outside the subset fails the test rather than being read loosely."""
import json
import re
import shlex

ACTION = re.compile(r"\{\{(.*?)\}\}", re.S)


def tokens(src: str) -> list:
    out, at = [], 0
    for m in ACTION.finditer(src):
        if m.start() > at:
            out.append(("text", src[at:m.start()]))
        out.append(("act", m.group(1).strip()))
        at = m.end()
    return out + ([("text", src[at:])] if at < len(src) else [])


def parse(toks: list, i: int = 0, stops=()) -> tuple:
    """(nodes, index of the stopping token, the stopping action) from toks[i:]."""
    nodes = []
    while i < len(toks):
        kind, s = toks[i]
        if kind == "text":
            nodes.append(("text", s))
        elif s == "end" or s == "else" or s.startswith("else if "):
            if s.split(" ")[0] not in stops and s not in stops:
                raise SyntaxError(f"unexpected {{{{ {s} }}}}")
            return nodes, i, s
        elif s.startswith("if "):
            node, i = parse_if(toks, i, s[3:])
            nodes.append(node)
        elif s.startswith("range "):
            body, i, stop = parse(toks, i + 1, ("end",))
            nodes.append(("range", s[6:], body))
        elif re.fullmatch(r"\$\w+ :?= .+", s):
            var, op, expr = s.split(" ", 2)
            nodes.append(("decl" if op == ":=" else "assign", var, expr))
        else:
            nodes.append(("out", s))
        i += 1
    if stops:
        raise SyntaxError("missing {{ end }}")
    return nodes, i, None


def parse_if(toks: list, i: int, cond: str) -> tuple:
    branches, otherwise = [], []
    while True:
        body, i, stop = parse(toks, i + 1, ("end", "else"))
        branches.append((cond, body))
        if stop == "end":
            return ("if", branches, otherwise), i
        if stop.startswith("else if "):
            cond = stop[8:]
            continue
        otherwise, i, _ = parse(toks, i + 1, ("end",))
        return ("if", branches, otherwise), i


def value(expr: str, dot, env: dict):
    words = shlex.split(expr, posix=False)
    if words[0] == "eq" and len(words) == 3:
        return value(words[1], dot, env) == value(words[2], dot, env)
    if len(words) != 1:
        raise SyntaxError(f"not in the subset: {expr}")
    w = words[0]
    if w.startswith('"'):
        return json.loads(w)
    if w.startswith("$"):
        return env[w]
    if re.fullmatch(r"\.\w+", w):
        return dot[w[1:]]
    raise SyntaxError(f"not in the subset: {expr}")


def run(nodes: list, dot, env: dict) -> str:
    out = []
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "out":
            out.append(str(value(node[1], dot, env)))
        elif node[0] == "decl":
            env[node[1]] = value(node[2], dot, env)
        elif node[0] == "assign":
            if node[1] not in env:
                raise NameError(f"undefined variable {node[1]}")
            env[node[1]] = value(node[2], dot, env)
        elif node[0] == "range":
            out += [run(node[2], item, env) for item in value(node[1], dot, env)]
        else:
            body = next((b for cond, b in node[1] if value(cond, dot, env)), node[2])
            out.append(run(body, dot, env))
    return "".join(out)


def execute(template: str, system: str, messages: list) -> str:
    """The template run as Ollama runs it for a chat: .System is the system messages' text, .Messages every
    message (system ones included), each {Role, Content}."""
    nodes, _, _ = parse(tokens(template))
    data = {"System": system, "Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}
    return run(nodes, data, {})
