"""Ollama Modelfiles: parsing, option typing, and the text ``/api/show`` returns.

Parsing follows Ollama's ``parser/parser.go``: one command per line, commands are
case-insensitive, ``#`` starts a comment where a command could start, and a value runs
to the end of the line unless it opens a ``"…"`` or ``\"\"\"…\"\"\"`` quote, which may span
lines. Supported: ``FROM``, ``PARAMETER name value``, ``TEMPLATE``, ``SYSTEM``,
``MESSAGE role text``, ``LICENSE`` (repeatable). ``ADAPTER`` and ``DRAFT`` are errors (they
change the weights, which mlxd cannot do); ``RENDERER``, ``PARSER`` and ``REQUIRES`` are
accepted and ignored with a warning.

Parameter values are typed by the option table (reference §2.3); the same typing checks
the ``parameters`` object of ``POST /api/create`` (:func:`normalize_parameters`).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from registry.store import InstalledModel

log = logging.getLogger(__name__)

# name -> "int" | "float" | "bool" | "list" (reference §2.3; api.Options + api.Runner)
OPTION_TYPES: dict[str, str] = {
    "num_ctx": "int",
    "num_batch": "int",
    "num_gpu": "int",
    "main_gpu": "int",
    "use_mmap": "bool",
    "num_thread": "int",
    "draft_num_predict": "int",
    "num_keep": "int",
    "seed": "int",
    "num_predict": "int",
    "top_k": "int",
    "top_p": "float",
    "min_p": "float",
    "typical_p": "float",
    "repeat_last_n": "int",
    "temperature": "float",
    "repeat_penalty": "float",
    "presence_penalty": "float",
    "frequency_penalty": "float",
    "stop": "list",
}

# Accepted and dropped: Ollama's parser warns about these instead of failing, and clients
# still send some of them.
DEPRECATED_PARAMETERS = frozenset(
    {
        "penalize_newline",
        "low_vram",
        "f16_kv",
        "logits_all",
        "vocab_only",
        "use_mlock",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
        "numa",
        "tfs_z",
        "embedding_only",
    }
)

MESSAGE_ROLES = ("system", "user", "assistant")
_COMMANDS = (
    "from",
    "license",
    "template",
    "system",
    "adapter",
    "draft",
    "renderer",
    "parser",
    "parameter",
    "message",
    "requires",
)
_INT_RE = re.compile(r"[+-]?[0-9]+")
_FLOAT_RE = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


class ParameterError(ValueError):
    """A parameter name is unknown or its value has the wrong type."""


class ModelfileError(ValueError):
    """A Modelfile cannot be parsed; ``str()`` is ``(line N): message`` like Ollama's."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(f"(line {line}): {message}" if line else message)
        self.message = message
        self.line = line


@dataclass
class Modelfile:
    from_: str = ""
    template: str = ""
    system: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)  # typed; stop is a list
    messages: list[dict[str, str]] = field(default_factory=list)
    license: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # ignored commands and parameters


# -- option typing --------------------------------------------------------------------------


def parse_parameter(name: str, text: str) -> Any:
    """Type one Modelfile ``PARAMETER`` value (``stop`` gives a string: callers accumulate)."""
    kind = OPTION_TYPES.get(name)
    if kind is None:
        raise ParameterError(f"unknown parameter '{name}'")
    s = text.strip()
    if kind == "int":
        if _INT_RE.fullmatch(s):
            return int(s)
        raise ParameterError(f"invalid int value {text!r} for parameter '{name}'")
    if kind == "float":
        if _FLOAT_RE.fullmatch(s):
            return float(s)
        raise ParameterError(f"invalid float value {text!r} for parameter '{name}'")
    if kind == "bool":
        if s in _GO_TRUE or s in _GO_FALSE:
            return s in _GO_TRUE
        raise ParameterError(f"invalid bool value {text!r} for parameter '{name}'")
    return text


def normalize_parameters(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check and type a JSON ``parameters`` object. ``null`` values and deprecated names
    are dropped; numbers are truncated for int options (like Ollama's ``FromMap``);
    strings are parsed as Modelfile text; ``stop`` becomes a list of strings."""
    out: dict[str, Any] = {}
    if params is None:
        return out
    if not isinstance(params, Mapping):
        raise ParameterError("parameters must be an object")
    for name, value in params.items():
        if value is None:
            continue
        if name in DEPRECATED_PARAMETERS:
            log.warning("parameter %s is deprecated and ignored", name)
            continue
        kind = OPTION_TYPES.get(name)
        if kind is None:
            raise ParameterError(f"unknown parameter '{name}'")
        out[name] = _coerce(name, kind, value)
    return out


def _coerce(name: str, kind: str, value: Any) -> Any:
    if kind == "list":
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ParameterError(f'option "{name}" must be of an array of strings')
    if isinstance(value, str):
        return parse_parameter(name, value)
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise ParameterError(f'option "{name}" must be of type boolean')
    # bool is an int subclass in Python, but never a number in JSON.
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return int(value) if kind == "int" else float(value)
    raise ParameterError(f'option "{name}" must be of type {"integer" if kind == "int" else "float32"}')


# -- parsing --------------------------------------------------------------------------------


def decode_modelfile(data: bytes) -> str:
    """Modelfile bytes as text: UTF-8, or UTF-16 when a byte-order mark says so."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ModelfileError(f"the Modelfile is not UTF-8 text: {e}") from None


def parse_modelfile(text: str) -> Modelfile:
    """Parse Modelfile text; raise :class:`ModelfileError` with the line number."""
    lines = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    mf = Modelfile()
    has_from = False
    i = 0
    while i < len(lines):
        lineno = i + 1
        line = lines[i].lstrip(" \t")
        i += 1
        if not line.strip() or line.startswith("#"):
            continue
        m = re.match(r"([A-Za-z]+)(?=[ \t]|$)", line)
        if m is None or m.group(1).lower() not in _COMMANDS:
            word = re.split(r"[ \t]", line, maxsplit=1)[0]
            raise ModelfileError(
                f'unknown command "{word}": command must be one of "from", "license", "template", '
                '"system", "parameter" or "message"',
                lineno,
            )
        cmd = m.group(1).lower()
        rest = line[m.end() :].lstrip(" \t")
        arg = ""
        if cmd in ("parameter", "message"):
            am = re.match(r"([A-Za-z0-9_]+)[ \t]+" if cmd == "parameter" else r"([A-Za-z]+)[ \t]+", rest)
            if am is None:
                what = "a name and a value" if cmd == "parameter" else "a role and a message"
                raise ModelfileError(f"{cmd.upper()} needs {what}", lineno)
            arg, rest = am.group(1), rest[am.end() :]
        value, i = _read_value(rest, lines, i, lineno)
        _apply(mf, cmd, arg, value, lineno, has_from)
        has_from = has_from or cmd == "from"
    if not has_from:
        raise ModelfileError("no FROM line")
    return mf


def _read_value(rest: str, lines: list[str], i: int, lineno: int) -> tuple[str, int]:
    """The value starting with ``rest``; a quote may continue it onto the next lines.
    Returns the value and the index of the next unread line."""
    buf = rest
    while True:
        s = buf.strip()
        if s.startswith('"""'):
            if len(s) >= 6 and s.endswith('"""'):
                return s[3:-3], i
        elif s.startswith('"'):
            if len(s) >= 2 and s.endswith('"'):
                return s[1:-1], i
        else:
            return s, i
        if i >= len(lines):
            raise ModelfileError("unterminated quoted value", lineno)
        buf += "\n" + lines[i]
        i += 1


def _apply(mf: Modelfile, cmd: str, arg: str, value: str, lineno: int, has_from: bool) -> None:
    if cmd == "from":
        if has_from:
            raise ModelfileError("only one FROM line is supported", lineno)
        if not value:
            raise ModelfileError("FROM needs a model name or a path", lineno)
        mf.from_ = value
    elif cmd == "parameter":
        if arg in DEPRECATED_PARAMETERS:
            mf.warnings.append(f"parameter {arg} is deprecated and ignored")
            return
        try:
            typed = parse_parameter(arg, value)
        except ParameterError as e:
            raise ModelfileError(str(e), lineno) from None
        if arg == "stop":
            mf.parameters.setdefault("stop", []).append(typed)
        else:
            mf.parameters[arg] = typed
    elif cmd == "template":
        mf.template = value
    elif cmd == "system":
        mf.system = value
    elif cmd == "license":
        mf.license.append(value)
    elif cmd == "message":
        role = arg.lower()
        if role not in MESSAGE_ROLES:
            raise ModelfileError('message role must be one of "system", "user", or "assistant"', lineno)
        mf.messages.append({"role": role, "content": value})
    elif cmd in ("adapter", "draft"):
        raise ModelfileError(
            f"{cmd.upper()} is not supported: mlxd cannot apply adapters or draft models", lineno
        )
    else:  # renderer, parser, requires: Ollama-engine hints with no meaning here
        mf.warnings.append(f"{cmd.upper()} is not supported and was ignored")


# -- rendering ------------------------------------------------------------------------------


def quote(s: str) -> str:
    """Ollama's Modelfile quoting: values with a newline or surrounding spaces are wrapped
    in ``"…"``, or ``\"\"\"…\"\"\"`` when they contain a ``"``. Unlike Ollama, a value that
    starts with ``"`` or is empty is wrapped too, so that parsing gives it back unchanged."""
    if not s or "\n" in s or s != s.strip() or s.startswith('"'):
        return f'"""{s}"""' if '"' in s else f'"{s}"'
    return s


def go_float(f: float) -> str:
    """Go's ``%v`` for a float64: shortest digits, exponent form below 1e-4 or from 1e6."""
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    if f == 0:
        return "-0" if math.copysign(1.0, f) < 0 else "0"
    sign, digit_tuple, exp = Decimal(repr(f)).as_tuple()
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    assert isinstance(exp, int)
    exp += len(digit_tuple) - len(digits)
    point = len(digits) + exp  # position of the decimal point relative to the digits
    x = point - 1
    neg = "-" if sign else ""
    if x < -4 or x >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{neg}{mantissa}e{'-' if x < 0 else '+'}{abs(x):02d}"
    if point <= 0:
        return f"{neg}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return f"{neg}{digits}{'0' * (point - len(digits))}"
    return f"{neg}{digits[:point]}.{digits[point:]}"


def go_quote(s: str) -> str:
    """Go's ``strconv.Quote`` (what ``%#v`` prints for a string)."""
    out = ['"']
    for ch in s:
        c = ord(ch)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch == " " or (ch.isprintable() and not 0xD800 <= c <= 0xDFFF):
            out.append(ch)
        elif c < 0x20 or c == 0x7F:
            out.append(f"\\x{c:02x}")
        elif c < 0x10000:
            out.append(f"\\u{c:04x}")
        else:
            out.append(f"\\U{c:08x}")
    out.append('"')
    return "".join(out)


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


def _format_value(v: Any, go_syntax: bool) -> str:
    """``%v`` (Modelfile) or ``%#v`` (``parameters``) of one option value. Integers are
    printed in full (Go would print ``1e+06``, which does not parse back as an int)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return go_float(v)
    if isinstance(v, str):
        return go_quote(v) if go_syntax else v
    return str(v)


def _parameter_items(params: Mapping[str, Any]) -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for k, v in params.items():
        if isinstance(v, (list, tuple)):
            items.extend((k, x) for x in v)
        elif v is not None:
            items.append((k, v))
    return items


def render_parameters(params: Mapping[str, Any]) -> str:
    """``/api/show``'s ``parameters``: ``fmt.Sprintf("%-30s %#v", k, v)`` per value, one line
    per ``stop`` entry, joined by newlines (no trailing newline)."""
    return "\n".join(f"{k:<30} {_format_value(v, True)}" for k, v in _parameter_items(params))


def render_modelfile(
    model: InstalledModel,
    *,
    system: str | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> str:
    """``/api/show``'s ``modelfile``. ``system`` replaces the model's SYSTEM and
    ``parameters`` are merged over its own (the show request's ``system``/``options``)."""
    cfg = model.config
    params = dict(cfg.parameters)
    params.update(parameters or {})
    out = [
        '# Modelfile generated by "ollama show"',
        "# To build a new Modelfile based on this, replace FROM with:",
        f"# FROM {model.display}",
        "",
        f"FROM {model.path}",
    ]
    if cfg.template:
        out.append(f"TEMPLATE {quote(cfg.template)}")
    shown_system = cfg.system if system is None or system == "" else system
    if shown_system:
        out.append(f"SYSTEM {quote(shown_system)}")
    out.extend(f"PARAMETER {k} {quote(_format_value(v, False))}" for k, v in _parameter_items(params))
    out.extend(f"LICENSE {quote(text)}" for text in cfg.license)
    out.extend(f"MESSAGE {m.get('role', '')} {quote(m.get('content', ''))}" for m in cfg.messages)
    return "\n".join(out) + "\n"
