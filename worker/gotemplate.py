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
from collections.abc import Callable
from typing import Any

import orjson

from worker.gotemplate_parse import (
    MISSING,
    Action,
    Branch,
    Command,
    Loop,
    Node,
    Operand,
    Pipeline,
    TemplateError,
    Text,
    Unsupported,
    cut_after_response,
    parse,
    variables,
)

__all__ = ["Template", "TemplateError", "Unsupported", "execute", "parse"]


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
