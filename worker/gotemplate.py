"""The subset of Go's ``text/template`` that Ollama prompt templates use.

Supported: text and ``{{ pipeline }}`` actions with ``{{-``/``-}}`` trimming and comments;
fields (``.A.B``, ``$``, ``$x.A``), variables (``$x := …``, ``$x = …``), literals, pipes
(``a | f``), parenthesised pipelines; ``if``/``else if``/``else``, ``range`` (with
``$i, $v :=``, ``else``, ``break``, ``continue``), ``with``/``else``; the functions ``and or
not eq ne lt le gt ge len index slice print printf println json``. Anything else Go accepts
(``define``, ``template``, ``block``, method calls, other functions) is refused with
:class:`Unsupported` rather than rendered differently; malformed text raises
:class:`TemplateError`. Pure Python: the daemon validates with it, the worker renders.

Data is plain JSON-like Python values. A field ``.ToolCalls`` of a dict is looked up as the
key ``ToolCalls``, then as ``tool_calls`` (Go struct fields ↔ JSON keys). Printing follows
Go: a missing map key prints ``<no value>``; dicts and lists print as JSON, as the String
methods of Ollama's API types do.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson


class TemplateError(ValueError):
    """The template does not parse, or fails while executing (Go's ``template: …`` errors)."""


class Unsupported(TemplateError):
    """Valid Go template syntax that this renderer does not implement."""


class _Missing:
    """Go's zero value for a missing map key: falsy, printed as ``<no value>``."""

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "<no value>"


MISSING = _Missing()

# ----------------------------------------------------------------------------- parsing

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(
    r"""(?P<ws>\s+)|(?P<str>"(?:[^"\\]|\\.)*"|`[^`]*`)|(?P<decl>:=)|(?P<assign>=)|(?P<pipe>\|)"""
    r"""|(?P<lp>\()|(?P<rp>\))|(?P<comma>,)|(?P<var>\$\w*)|(?P<field>(?:\.\w+)+)|(?P<dot>\.)"""
    r"""|(?P<num>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)|(?P<ident>\w+)"""
)


@dataclass
class _Tok:
    kind: str
    text: str
    spaced: bool  # whitespace came before it


@dataclass
class Operand:
    kind: str  # "dot" "field" "var" "lit" "func" "pipe"
    value: Any = None  # field path, var name, literal, function name, or a Pipeline
    fields: tuple[str, ...] = ()  # a field chain after a variable or a parenthesised pipeline


@dataclass
class Command:
    operands: list[Operand]


@dataclass
class Pipeline:
    commands: list[Command]
    decl: list[str] = field(default_factory=list)
    assign: bool = False  # ``=`` rather than ``:=``


@dataclass
class Text:
    text: str


@dataclass
class Action:
    pipe: Pipeline


@dataclass
class Branch:
    kind: str  # "if" "range" "with"
    pipe: Pipeline
    body: list[Node]
    orelse: list[Node] = field(default_factory=list)


@dataclass
class Loop:
    kind: str  # "break" "continue"


Node = Text | Action | Branch | Loop

_FUNCS = {"and", "or", "not", "eq", "ne", "lt", "le", "gt", "ge", "len", "index", "slice"}
_FUNCS |= {"print", "printf", "println", "json"}
_UNSUPPORTED_KEYWORDS = {"define", "template", "block"}


def _lex(source: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos, spaced = 0, False
    while pos < len(source):
        m = _TOKEN.match(source, pos)
        if m is None:
            raise TemplateError(f"template: unexpected {source[pos]!r} in action")
        kind = m.lastgroup or ""
        if kind == "ws":
            spaced = True
        else:
            tokens.append(_Tok(kind, m.group(), spaced))
            spaced = False
        pos = m.end()
    return tokens


def _unquote(text: str) -> str:
    if text.startswith("`"):
        return text[1:-1]
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise TemplateError(f"template: bad string literal {text}") from None
    return str(value)


class _ExprParser:
    def __init__(self, tokens: list[_Tok]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> _Tok | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> _Tok:
        tok = self.peek()
        if tok is None:
            raise TemplateError("template: unexpected end of action")
        self.pos += 1
        return tok

    def pipeline(self, allow_decl: bool, range_decl: bool = False) -> Pipeline:
        decl, assign = self._declaration(range_decl) if allow_decl else ([], False)
        commands = [self.command()]
        while (tok := self.peek()) is not None and tok.kind == "pipe":
            self.take()
            commands.append(self.command())
        return Pipeline(commands, decl, assign)

    def _declaration(self, range_decl: bool) -> tuple[list[str], bool]:
        toks = self.tokens[self.pos :]
        if len(toks) >= 2 and toks[0].kind == "var" and toks[1].kind in ("decl", "assign"):
            self.pos += 2
            return [toks[0].text], toks[1].kind == "assign"
        if (
            range_decl
            and len(toks) >= 4
            and toks[0].kind == "var"
            and toks[1].kind == "comma"
            and toks[2].kind == "var"
            and toks[3].kind in ("decl", "assign")
        ):
            self.pos += 4
            return [toks[0].text, toks[2].text], toks[3].kind == "assign"
        return [], False

    def command(self) -> Command:
        operands: list[Operand] = []
        while (tok := self.peek()) is not None and tok.kind not in ("pipe", "rp"):
            operands.append(self.operand())
        if not operands:
            raise TemplateError("template: missing value for command")
        return Command(operands)

    def operand(self) -> Operand:
        tok = self.take()
        if tok.kind == "dot":
            return Operand("dot")
        if tok.kind == "field":
            return Operand("field", tuple(tok.text.split(".")[1:]))
        if tok.kind == "str":
            return Operand("lit", _unquote(tok.text))
        if tok.kind == "num":
            number = float(tok.text)
            return Operand("lit", int(number) if re.fullmatch(r"-?\d+", tok.text) else number)
        if tok.kind == "var":
            return Operand("var", tok.text, self._chain())
        if tok.kind == "lp":
            inner = self.pipeline(allow_decl=False)
            if self.take().kind != "rp":
                raise TemplateError("template: unclosed left paren")
            return Operand("pipe", inner, self._chain())
        if tok.kind == "ident":
            if tok.text in ("true", "false"):
                return Operand("lit", tok.text == "true")
            if tok.text == "nil":
                return Operand("lit", None)
            if tok.text in _FUNCS:
                return Operand("func", tok.text)
            raise Unsupported(f'template function "{tok.text}" is not supported')
        raise TemplateError(f"template: unexpected {tok.text!r} in operand")

    def _chain(self) -> tuple[str, ...]:
        tok = self.peek()
        if tok is not None and tok.kind == "field" and not tok.spaced:
            self.take()
            return tuple(tok.text.split(".")[1:])
        return ()


def _split(source: str) -> Iterator[tuple[str, str]]:
    """``("text", s)`` and ``("action", body)`` pieces, with trim markers applied."""
    pos = 0
    pending_trim = False
    for m in _ACTION.finditer(source):
        text = source[pos : m.start()]
        if pending_trim:
            text = text.lstrip(" \t\r\n")
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        if text:
            yield "text", text
        yield "action", m.group(2).strip()
        pending_trim = bool(m.group(3))
        pos = m.end()
    rest = source[pos:]
    if "{{" in rest:
        raise TemplateError("template: unclosed action")
    if pending_trim:
        rest = rest.lstrip(" \t\r\n")
    if rest:
        yield "text", rest


def parse(source: str) -> list[Node]:
    """Parse a template; raise :class:`TemplateError` or :class:`Unsupported`."""
    root: list[Node] = []
    # Open blocks: the block, the list to continue after its {{end}}, and whether it is an
    # ``else if``/``else with`` that its parent's {{end}} closes too.
    stack: list[tuple[Branch, list[Node], bool]] = []
    current = root
    for kind, body in _split(source):
        if kind == "text":
            current.append(Text(body))
            continue
        if body.startswith("/*"):
            if not body.endswith("*/"):
                raise TemplateError("template: unclosed comment")
            continue
        if not body:
            raise TemplateError("template: missing value for command")
        word = body.split(None, 1)[0]
        rest = body[len(word) :].strip()
        if word in _UNSUPPORTED_KEYWORDS:
            raise Unsupported(f"{{{{ {word} }}}} is not supported in templates")
        if word in ("if", "range", "with"):
            node = Branch(word, _block_pipe(word, rest), [])
            current.append(node)
            stack.append((node, current, False))
            current = node.body
        elif word == "else":
            if not stack:
                raise TemplateError("template: unexpected {{else}}")
            node = stack[-1][0]
            if current is node.orelse:
                raise TemplateError("template: expected end; found {{else}}")
            current = node.orelse
            if rest:  # else if / else with: a nested block that the same {{end}} closes
                inner = rest.split(None, 1)[0]
                if inner not in ("if", "with"):
                    raise TemplateError(f"template: unexpected {rest!r} after else")
                nested = Branch(inner, _block_pipe(inner, rest[len(inner) :].strip()), [])
                current.append(nested)
                stack.append((nested, current, True))
                current = nested.body
        elif word == "end":
            if not stack:
                raise TemplateError("template: unexpected {{end}}")
            while True:
                _, parent, chained = stack.pop()
                if not chained:
                    break
            current = parent
        elif word in ("break", "continue"):
            if not any(entry[0].kind == "range" for entry in stack):
                raise TemplateError(f"template: {{{{{word}}}}} outside {{{{range}}}}")
            current.append(Loop(word))
        else:
            parser = _ExprParser(_lex(body))
            pipe = parser.pipeline(allow_decl=True)
            if (extra := parser.peek()) is not None:
                raise TemplateError(f"template: unexpected {extra.text!r} in command")
            current.append(Action(pipe))
    if stack:
        raise TemplateError("template: unexpected EOF")
    return root


def _block_pipe(word: str, rest: str) -> Pipeline:
    parser = _ExprParser(_lex(rest))
    if not rest:
        raise TemplateError(f"template: missing value for {word}")
    pipe = parser.pipeline(allow_decl=True, range_decl=word == "range")
    if (extra := parser.peek()) is not None:
        raise TemplateError(f"template: unexpected {extra.text!r} in {word}")
    return pipe


def variables(nodes: list[Node]) -> set[str]:
    """The top-level field names a template refers to (``.Messages`` → ``Messages``),
    wherever they appear: Ollama derives capabilities and the legacy mode from these."""
    found: set[str] = set()

    def pipe(p: Pipeline) -> None:
        for command in p.commands:
            for operand in command.operands:
                if operand.kind == "field":
                    found.add(operand.value[0])
                elif operand.kind == "var" and operand.value == "$" and operand.fields:
                    found.add(operand.fields[0])
                elif operand.kind == "pipe":
                    pipe(operand.value)

    def walk(items: list[Node]) -> None:
        for node in items:
            if isinstance(node, Action):
                pipe(node.pipe)
            elif isinstance(node, Branch):
                pipe(node.pipe)
                walk(node.body)
                walk(node.orelse)

    walk(nodes)
    return found


def cut_after_response(nodes: list[Node]) -> list[Node]:
    """A copy without everything that follows the first ``.Response`` (in template order),
    as Ollama renders the open last turn of a legacy template."""
    cut = False

    def mentions_response(p: Pipeline) -> bool:
        return any(
            o.kind == "field" and o.value and o.value[0] == "Response" for c in p.commands for o in c.operands
        )

    def walk(items: list[Node]) -> list[Node]:
        nonlocal cut
        out: list[Node] = []
        for node in items:
            if cut:
                break
            if isinstance(node, Action):
                out.append(node)
                cut = mentions_response(node.pipe)
            elif isinstance(node, Branch):
                out.append(Branch(node.kind, node.pipe, walk(node.body), walk(node.orelse)))
            else:
                out.append(node)
        return out

    return walk(nodes)


# ----------------------------------------------------------------------------- execution


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


def truth(value: Any) -> bool:
    """Go's ``if``: false, 0, nil, and empty strings, slices and maps are false."""
    return bool(value) and value is not MISSING


def to_json(value: Any) -> str:
    """``json.Marshal`` as Go writes it: compact, with ``<``, ``>`` and ``&`` escaped."""
    text = orjson.dumps(None if value is MISSING else value).decode()
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def to_text(value: Any) -> str:
    """How ``{{ value }}`` prints."""
    if isinstance(value, str):
        return value
    if value is MISSING:
        return "<no value>"
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(value).decode()


def _snake(name: str) -> str:
    name = name.replace("ID", "Id")
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def get_field(value: Any, name: str) -> Any:
    if isinstance(value, dict):
        if name in value:
            return value[name]
        snake = _snake(name)
        if snake in value:
            return value[snake]
        return MISSING
    if value is MISSING or value is None:
        raise TemplateError(f"template: nil pointer evaluating .{name}")
    raise TemplateError(f"template: can't evaluate field {name} in type {type(value).__name__}")


def _compare(name: str, a: Any, b: Any) -> bool:
    if isinstance(a, bool) != isinstance(b, bool) or (
        isinstance(a, str) != isinstance(b, str) and not (a is MISSING or b is MISSING)
    ):
        raise TemplateError(f"template: error calling {name}: incompatible types for comparison")
    a = "" if a is MISSING else a
    b = "" if b is MISSING else b
    ops: dict[str, Callable[[Any, Any], bool]] = {
        "eq": lambda x, y: x == y,
        "ne": lambda x, y: x != y,
        "lt": lambda x, y: x < y,
        "le": lambda x, y: x <= y,
        "gt": lambda x, y: x > y,
        "ge": lambda x, y: x >= y,
    }
    return ops[name](a, b)


def _printf(fmt: str, args: list[Any]) -> str:
    values = iter(args)

    def one(m: re.Match[str]) -> str:
        verb = m.group(1)
        if verb == "%":
            return "%"
        value = next(values, MISSING)
        if verb == "q":
            return orjson.dumps(to_text(value)).decode()
        return to_text(value)

    return re.sub(r"%[-+# 0]*\d*(?:\.\d+)?([%svdqtfg])", one, fmt)


class _Runner:
    def __init__(self, data: Any) -> None:
        self.root = data
        self.out: list[str] = []
        self.scopes: list[dict[str, Any]] = [{"$": data}]

    def lookup(self, name: str) -> Any:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        raise TemplateError(f"template: undefined variable: {name}")

    def assign(self, name: str, value: Any, declare: bool) -> None:
        if declare:
            self.scopes[-1][name] = value
            return
        for scope in reversed(self.scopes):
            if name in scope:
                scope[name] = value
                return
        raise TemplateError(f"template: undefined variable: {name}")

    def run(self, nodes: list[Node], dot: Any) -> None:
        for node in nodes:
            if isinstance(node, Text):
                self.out.append(node.text)
            elif isinstance(node, Action):
                value = self.pipeline(node.pipe, dot)
                if not node.pipe.decl:
                    self.out.append(to_text(value))
            elif isinstance(node, Loop):
                raise _Break() if node.kind == "break" else _Continue()
            else:
                self.branch(node, dot)

    def branch(self, node: Branch, dot: Any) -> None:
        self.scopes.append({})
        try:
            if node.kind == "range":
                self.range(node, dot)
                return
            value = self.pipeline(node.pipe, dot, declare_range=False)
            if truth(value):
                self.run(node.body, value if node.kind == "with" else dot)
            else:
                self.run(node.orelse, dot)
        finally:
            self.scopes.pop()

    def range(self, node: Branch, dot: Any) -> None:
        value = self.pipeline(node.pipe, dot, declare_range=True)
        if isinstance(value, dict):
            items = list(value.items())
        elif isinstance(value, list | tuple | str):
            items = list(enumerate(value))
        elif isinstance(value, int) and not isinstance(value, bool):
            items = [(i, i) for i in range(value)]
        elif value is None or value is MISSING:
            items = []
        else:
            raise TemplateError(f"template: range can't iterate over {to_text(value)}")
        if not items:
            self.run(node.orelse, dot)
            return
        for key, item in items:
            if len(node.pipe.decl) == 2:
                self.assign(node.pipe.decl[0], key, True)
                self.assign(node.pipe.decl[1], item, True)
            elif node.pipe.decl:
                self.assign(node.pipe.decl[0], item, True)
            try:
                self.run(node.body, item)
            except _Continue:
                continue
            except _Break:
                break

    def pipeline(self, pipe: Pipeline, dot: Any, declare_range: bool = False) -> Any:
        value: Any = MISSING
        for i, command in enumerate(pipe.commands):
            value = self.command(command, dot, value if i else None, i > 0)
        if pipe.decl and not declare_range:
            self.assign(pipe.decl[0], value, not pipe.assign)
        return value

    def command(self, command: Command, dot: Any, piped: Any, has_piped: bool) -> Any:
        first, rest = command.operands[0], command.operands[1:]
        if first.kind == "func":
            args = [self.operand(o, dot) for o in rest]
            if has_piped:
                args.append(piped)
            return self.call(first.value, args)
        if rest or has_piped:
            raise Unsupported("method calls and arguments to non-functions are not supported")
        return self.operand(first, dot)

    def operand(self, operand: Operand, dot: Any) -> Any:
        if operand.kind == "dot":
            return dot
        if operand.kind == "lit":
            return operand.value
        if operand.kind == "func":
            return self.call(operand.value, [])
        if operand.kind == "field":
            value, chain = dot, operand.value
        elif operand.kind == "var":
            value, chain = self.lookup(operand.value), operand.fields
        else:
            value, chain = self.pipeline(operand.value, dot), operand.fields
        for name in chain:
            value = get_field(value, name)
        return value

    def call(self, name: str, args: list[Any]) -> Any:
        if name in ("eq", "ne", "lt", "le", "gt", "ge"):
            if len(args) < 2:
                raise TemplateError(f"template: wrong number of args for {name}")
            if name == "eq":  # eq a b c … is a == b || a == c …
                return any(_compare("eq", args[0], other) for other in args[1:])
            return _compare(name, args[0], args[1])
        if name == "and":
            for arg in args:
                if not truth(arg):
                    return arg
            return args[-1] if args else MISSING
        if name == "or":
            for arg in args:
                if truth(arg):
                    return arg
            return args[-1] if args else MISSING
        if name == "not":
            return not truth(args[0]) if args else True
        if name == "len":
            return len(args[0]) if args and isinstance(args[0], list | dict | str) else 0
        if name == "index":
            value = args[0]
            for key in args[1:]:
                try:
                    value = value[key]
                except (KeyError, IndexError, TypeError):
                    raise TemplateError(f"template: error calling index: {key!r} out of range") from None
            return value
        if name == "slice":
            bounds = [int(a) for a in args[1:3]]
            return args[0][slice(*bounds)] if len(bounds) == 2 else args[0][bounds[0] if bounds else 0 :]
        if name == "json":
            return to_json(args[0] if args else None)
        if name == "printf":
            return _printf(to_text(args[0]), args[1:]) if args else ""
        if name == "println":
            return " ".join(to_text(a) for a in args) + "\n"
        return _print(args)


def _print(args: list[Any]) -> str:
    """Go's ``fmt.Sprint``: a space between operands when neither is a string."""
    out = ""
    for i, arg in enumerate(args):
        if i and not isinstance(arg, str) and not isinstance(args[i - 1], str):
            out += " "
        out += to_text(arg)
    return out


def execute(nodes: list[Node], data: Any) -> str:
    runner = _Runner(data)
    runner.run(nodes, data)  # the parser keeps break/continue inside range
    return "".join(runner.out)


class Template:
    """A parsed template: ``Template(source).render(values)``."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.nodes = parse(source)
        self.vars = variables(self.nodes)

    def render(self, values: dict[str, Any]) -> str:
        return execute(self.nodes, values)

    def render_open_turn(self, values: dict[str, Any]) -> str:
        """Render up to the first ``.Response`` and stop there."""
        return execute(cut_after_response(self.nodes), values)
