"""Parsing for ``worker.gotemplate``: the lexer, the parser and the syntax tree of the
Go ``text/template`` subset Ollama prompt templates use (see that module for the subset)."""

from __future__ import annotations

import re
from collections.abc import Iterator
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
