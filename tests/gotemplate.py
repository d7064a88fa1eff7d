"""A small interpreter for the part of Go's text/template that engine/ollama.py writes, run as Ollama runs a
TEMPLATE that ranges over .Messages (its template.Execute: messages collated, .System their system text).

Follows text/template's semantics for what it covers, and raises on anything else, so that a template outside
the subset fails the test rather than being read loosely:
- actions: {{ if P }} / {{ else if P }} / {{ else }} / {{ end }}, {{ range P }} and {{ range $i, $e := P }},
  {{ $v := P }} (declared until the end of the enclosing block), {{ $v = P }} (assigns the nearest one),
  {{ P }} (prints), {{/* comments */}}, and the trim markers {{- and -}};
- a pipeline is one command: an operand, or a function with arguments. Operands: "strings" and `raw`, integers,
  true/false, $, $v, .Field chains on dot or on a variable, (pipelines), and niladic functions;
- functions: eq (with several right-hand sides), ne, and, or (returning an operand, short-circuit), not, len,
  slice (strings by byte, lists), and Ollama's currentDate (YYYY-MM-DD);
- truth: false, 0, "", nil and empty lists are false; printing a missing map key gives "<no value>", a missing
  struct field (a message's) is an error, as in Go."""
import datetime
import json
import re

ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
TOKEN = re.compile(r'\s*(?:("(?:\\.|[^"\\])*")|(`[^`]*`)|(\()|(\))|(-?\d+)|(\$\w*(?:\.\w+)*)|((?:\.\w+)+|\.)|(\w+))')


class Message(dict):
    """A message as Ollama's templateMessage struct: an unknown field is an error, not a blank."""

    def __missing__(self, key):
        raise AttributeError(f"can't evaluate field {key} in type *templateMessage")


def tokens(src: str) -> list:
    out, at, trim_next = [], 0, False
    for m in ACTION.finditer(src):
        text = src[at:m.start()]
        text = text.lstrip(" \t\r\n") if trim_next else text
        text = text.rstrip(" \t\r\n") if m.group(1) else text
        if text:
            out.append(("text", text))
        inner = m.group(2).strip()
        if not (inner.startswith("/*") and inner.endswith("*/")):
            out.append(("act", inner))
        at, trim_next = m.end(), bool(m.group(3))
    text = src[at:].lstrip(" \t\r\n") if trim_next else src[at:]
    return out + ([("text", text)] if text else [])


def parse(toks: list, i: int = 0, stops=()) -> tuple:
    """(nodes, index of the stopping token, the stopping action) from toks[i:]."""
    nodes = []
    while i < len(toks):
        kind, s = toks[i]
        if kind == "text":
            nodes.append(("text", s))
        elif s in ("end", "else") or s.startswith("else if "):
            if s.split(" ")[0] not in stops:
                raise SyntaxError(f"unexpected {{{{ {s} }}}}")
            return nodes, i, s
        elif s.startswith("if "):
            node, i = parse_if(toks, i, s[3:])
            nodes.append(node)
        elif s.startswith("range "):
            m = re.fullmatch(r"range (?:(\$\w+)(?:, (\$\w+))? := )?(.+)", s, re.S)
            body, i, _ = parse(toks, i + 1, ("end",))
            names = [v for v in (m.group(1), m.group(2)) if v]
            nodes.append(("range", names, m.group(3), body))
        elif re.fullmatch(r"\$\w+ :?= .+", s, re.S):
            var, op, expr = s.split(" ", 2)
            nodes.append(("decl" if op == ":=" else "assign", var, expr))
        else:
            nodes.append(("out", s))
        i += 1
    if stops:
        raise SyntaxError("missing {{ end }}")
    return nodes, i, None


def parse_if(toks: list, i: int, cond: str) -> tuple:
    branches = []
    while True:
        body, i, stop = parse(toks, i + 1, ("end", "else"))
        branches.append((cond, body))
        if stop == "end":
            return ("if", branches, []), i
        if stop.startswith("else if "):
            cond = stop[8:]
            continue
        otherwise, i, _ = parse(toks, i + 1, ("end",))
        return ("if", branches, otherwise), i


def lex(expr: str) -> list:
    out, at = [], 0
    expr = expr.rstrip()
    while at < len(expr):
        m = TOKEN.match(expr, at)
        if not m or m.end() == at:
            raise SyntaxError(f"not in the subset: {expr[at:]!r}")
        out.append(next((k, v) for k, v in zip(("str", "raw", "(", ")", "int", "var", "field", "ident"),
                                               m.groups()) if v is not None))
        at = m.end()
    return out


def truth(v) -> bool:
    return not (v is None or v is False or v == 0 and not isinstance(v, str) or v == "" or v == [] or v == {})


def field(v, names: list):
    for n in names:
        if isinstance(v, Message):
            v = v[n]
        elif isinstance(v, dict):
            v = v.get(n)
        else:
            raise AttributeError(f"can't evaluate field {n} in {type(v).__name__}")
    return v


def _same_kind(a, b) -> None:
    kinds = [bool if isinstance(x, bool) else int if isinstance(x, int) else type(x) for x in (a, b)]
    if kinds[0] is not kinds[1] or kinds[0] not in (bool, int, str):
        raise TypeError(f"incompatible types for comparison: {a!r} and {b!r}")


def _eq(a, *rest):
    for b in rest:
        _same_kind(a, b)
        if a == b:
            return True
    return False


def _slice(x, *ix):
    """slice x i j: x[i:j] (x[i:] with one index, x itself with none); out of range is an error, as in Go."""
    if not isinstance(x, (str, list)) or len(ix) > 2:
        raise TypeError(f"can't slice item of type {type(x).__name__} with {len(ix)} indices")
    seq = x.encode() if isinstance(x, str) else x
    lo, hi = (list(ix) + [0, len(seq)][len(ix):])[:2] if ix else (0, len(seq))
    if not 0 <= lo <= hi <= len(seq):
        raise IndexError(f"index out of range: {lo}:{hi} of {len(seq)}")
    return seq[lo:hi].decode("utf-8", "surrogateescape") if isinstance(x, str) else seq[lo:hi]


FUNCS = {"eq": _eq, "ne": lambda a, b: not _eq(a, b), "not": lambda a: not truth(a), "len": len, "slice": _slice,
         "currentDate": lambda *fmt: datetime.date.today().strftime("%Y-%m-%d")}


class Evaluator:
    def __init__(self, dot, root, scopes: list):
        self.dot, self.root, self.scopes = dot, root, scopes

    def var(self, name: str):
        if name == "$":
            return self.root
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        raise NameError(f"undefined variable: {name}")

    def operand(self, toks: list, i: int) -> tuple:
        """(value, next index); a function named here is called with no arguments."""
        kind, s = toks[i]
        if kind == "(":
            depth, j = 1, i + 1
            while depth:
                depth += {"(": 1, ")": -1}.get(toks[j][0], 0)
                j += 1
            return self.command(toks[i + 1:j - 1]), j
        if kind == "str":
            return json.loads(s), i + 1
        if kind == "raw":
            return s[1:-1], i + 1
        if kind == "int":
            return int(s), i + 1
        if kind == "var":
            name, *names = s.split(".")
            return field(self.var(name), names), i + 1
        if kind == "field":
            return field(self.dot, [n for n in s.split(".") if n]), i + 1
        if kind == "ident" and s in ("true", "false"):
            return s == "true", i + 1
        if kind == "ident" and s in FUNCS:
            return self.call(s, []), i + 1
        raise SyntaxError(f"not in the subset: {s}")

    def call(self, name: str, args: list):
        if name in ("and", "or"):  # short-circuit, returning the deciding argument
            v = None
            for thunk in args:
                v = thunk()
                if truth(v) != (name == "and"):
                    return v
            return v
        return FUNCS[name](*(a() for a in args))

    def command(self, toks: list):
        if not toks:
            raise SyntaxError("missing value for command")
        if toks[0][0] == "ident" and toks[0][1] in set(FUNCS) | {"and", "or"}:
            args, i = [], 1
            while i < len(toks):
                j = self.skip(toks, i)
                args.append(lambda a=toks[i:j]: self.operand(a, 0)[0])
                i = j
            return self.call(toks[0][1], args)
        value, i = self.operand(toks, 0)
        if i != len(toks):
            raise SyntaxError(f"can't give argument to non-function {toks[0][1]}")
        return value

    @staticmethod
    def skip(toks: list, i: int) -> int:
        if toks[i][0] != "(":
            return i + 1
        depth = 0
        while True:
            depth += {"(": 1, ")": -1}.get(toks[i][0], 0)
            i += 1
            if not depth:
                return i

    def eval(self, expr: str):
        return self.command(lex(expr))


def printed(v) -> str:
    if v is None:
        return "<no value>"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def run(nodes: list, dot, root, scopes: list) -> str:
    out = []
    ev = Evaluator(dot, root, scopes)
    for node in nodes:
        kind = node[0]
        if kind == "text":
            out.append(node[1])
        elif kind == "out":
            out.append(printed(ev.eval(node[1])))
        elif kind == "decl":
            scopes[-1][node[1]] = ev.eval(node[2])
        elif kind == "assign":
            scope = next((s for s in reversed(scopes) if node[1] in s), None)
            if scope is None:
                raise NameError(f"undefined variable: {node[1]}")
            scope[node[1]] = ev.eval(node[2])
        elif kind == "range":
            _, names, expr, body = node
            items = ev.eval(expr)
            for i, item in enumerate(items or []):
                scope = dict(zip(names, [i, item] if len(names) == 2 else [item]))
                out.append(run(body, item, root, scopes + [scope]))
        else:
            body = next((b for cond, b in node[1] if truth(ev.eval(cond))), node[2])
            out.append(run(body, dot, root, scopes + [{}]))
    return "".join(out)


def collate(messages: list) -> tuple:
    """As Ollama's collate: consecutive messages of one role merged with a blank line; the system messages'
    text joined the same way is .System."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    out = []
    for m in messages:
        if out and out[-1]["Role"] == m["role"] and m["role"] != "tool":
            out[-1]["Content"] += "\n\n" + m["content"]
        else:
            out.append(Message(Role=m["role"], Content=m["content"], Thinking="", Images=[], ToolCalls=[],
                               ToolName="", ToolCallID=""))
    return system, out


def execute(template: str, system: str, messages: list) -> str:
    """The template run as Ollama runs it for a chat. `system` is the Modelfile's SYSTEM, which Ollama puts first
    as a system message when the chat has none."""
    if system and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": system}] + messages
    joined, msgs = collate(messages)
    nodes, _, _ = parse(tokens(template))
    data = {"System": joined, "Messages": msgs, "Tools": None, "Response": "", "Think": None}
    return run(nodes, data, data, [{"$": data}])
