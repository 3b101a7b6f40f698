"""Split a model's output text into thinking, content and tool calls, as it streams.

The markers are the tokenizer's (mlx-lm's ``TokenizerWrapper``): ``think_start``/``think_end``
(``<think>``/``</think>``…) and ``tool_call_start``/``tool_call_end`` with the tool parser
mlx-lm infers from the chat template. Text is released as soon as it cannot be the start of
a marker, so per delta the work is bounded by the markers' length, except inside a tool
call, whose text is held until it closes and is then parsed once.

Following Ollama's thinking parser: a reasoning block is recognised only at the start of the
output (or already open when the prompt ended with ``think_start``); whitespace right after
either tag is dropped. Thoughts of a request that turned thinking off are dropped too.
"""

from __future__ import annotations

import logging
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

log = logging.getLogger("mlxd.worker")

ToolParser = Callable[[str, Any], Any]

_ID_ALPHABET = string.ascii_lowercase + string.digits


def tool_call_id() -> str:
    """Ollama's tool-call id: ``call_`` and 8 characters of ``[a-z0-9]``."""
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


@dataclass
class Piece:
    kind: str  # "content" | "thinking" | "tools"
    text: str = ""
    calls: list[dict[str, Any]] = field(default_factory=list)


def _held(buf: str, marker: str) -> int:
    """Length of the longest suffix of ``buf`` that is a proper prefix of ``marker``."""
    for n in range(min(len(marker) - 1, len(buf)), 0, -1):
        if buf.endswith(marker[:n]):
            return n
    return 0


class OutputRouter:
    """``feed(delta)`` → pieces; ``finish()`` → the rest once the output ended."""

    def __init__(
        self,
        *,
        think_start: str | None = None,
        think_end: str | None = None,
        keep_thinking: bool = True,
        opened_thinking: bool = False,
        tool_start: str | None = None,
        tool_end: str | None = None,
        tool_parser: ToolParser | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> None:
        self.think_start = think_start if think_start and think_end else None
        self.think_end = think_end
        self.keep_thinking = keep_thinking
        self.tool_start = tool_start if tool_start and tool_end and tool_parser and tools else None
        self.tool_end = tool_end
        self.tool_parser = tool_parser
        self.tools = tools
        # "start": nothing but whitespace seen yet; "thinking", "content", "tool"
        if self.think_start is None:
            self.state = "content"
        else:
            self.state = "thinking" if opened_thinking else "start"
        self._strip = self.state == "thinking"  # drop whitespace before the next text
        self._buf = ""
        self._tool_text = ""
        self.calls = 0

    def feed(self, delta: str) -> list[Piece]:
        out: list[Piece] = []
        self._buf += delta
        while self._buf:
            if not self._step(out):
                break
        return out

    def finish(self) -> list[Piece]:
        out: list[Piece] = []
        rest, self._buf = self._buf, ""
        if self.state == "tool":
            self._close_tool(self._tool_text + rest, out, closed=False)
        elif rest:
            self._emit("thinking" if self.state == "thinking" else "content", rest, out)
        return out

    # ------------------------------------------------------------------ the state machine

    def _step(self, out: list[Piece]) -> bool:
        """Consume what can be decided from the buffer; False when more text is needed."""
        buf = self._buf
        if self.state == "start":
            stripped = buf.lstrip()
            if not stripped:
                return False
            assert self.think_start is not None
            if stripped.startswith(self.think_start):
                self._buf = stripped[len(self.think_start) :]
                self.state, self._strip = "thinking", True
                return True
            if self.think_start.startswith(stripped):
                return False  # maybe the start tag, still incomplete
            self.state = "content"
            return True
        if self.state == "thinking":
            return self._until(self.think_end or "", "thinking", "content", out)
        if self.state == "content":
            if self.tool_start is None:
                self._emit("content", buf, out)
                self._buf = ""
                return False
            return self._until(self.tool_start, "content", "tool", out)
        # inside a tool call
        assert self.tool_end is not None
        at = buf.find(self.tool_end)
        if at == -1:
            keep = _held(buf, self.tool_end)
            self._tool_text += buf[: len(buf) - keep]
            self._buf = buf[len(buf) - keep :]
            return False
        self._close_tool(self._tool_text + buf[:at], out, closed=True)
        self._tool_text = ""
        self._buf = buf[at + len(self.tool_end) :]
        self.state = "content"
        return True

    def _until(self, marker: str, kind: str, next_state: str, out: list[Piece]) -> bool:
        buf = self._buf
        at = buf.find(marker)
        if at == -1:
            keep = _held(buf, marker)
            self._emit(kind, buf[: len(buf) - keep], out)
            self._buf = buf[len(buf) - keep :]
            return False
        self._emit(kind, buf[:at], out)
        self._buf = buf[at + len(marker) :]
        self.state = next_state
        self._strip = kind == "thinking"  # whitespace after </think> is dropped
        return True

    def _emit(self, kind: str, text: str, out: list[Piece]) -> None:
        if self._strip:
            text = text.lstrip()
            if not text:
                return
            self._strip = False
        if not text or (kind == "thinking" and not self.keep_thinking):
            return
        if out and out[-1].kind == kind:
            out[-1].text += text
        else:
            out.append(Piece(kind, text))

    def _close_tool(self, text: str, out: list[Piece], closed: bool) -> None:
        calls = self._parse(text)
        if calls:
            out.append(Piece("tools", calls=calls))
        elif text.strip() or not closed:
            # Not a tool call after all: hand the text on as it came.
            self._emit("content", f"{self.tool_start}{text}{self.tool_end if closed else ''}", out)

    def _parse(self, text: str) -> list[dict[str, Any]]:
        assert self.tool_parser is not None
        try:
            parsed = self.tool_parser(text, self.tools)
        except Exception as exc:  # the parsers raise whatever their format's decoder raises
            log.warning("unparseable tool call (%s): %.200r", type(exc).__name__, text)
            return []
        calls: list[dict[str, Any]] = []
        for item in parsed if isinstance(parsed, list) else [parsed]:
            call = ollama_tool_call(item, self.calls)
            if call is not None:
                calls.append(call)
                self.calls += 1
        return calls


def ollama_tool_call(parsed: Any, index: int) -> dict[str, Any] | None:
    """An mlx-lm parser's ``{"name", "arguments"}`` in Ollama's ``ToolCall`` shape."""
    if not isinstance(parsed, dict):
        return None
    inner = parsed.get("function")
    function: dict[str, Any] = inner if isinstance(inner, dict) else parsed
    name = function.get("name")
    arguments = function.get("arguments", function.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = orjson.loads(arguments) if arguments.strip() else {}
        except orjson.JSONDecodeError:
            return None
    if not isinstance(name, str) or not name or not isinstance(arguments, dict):
        return None
    return {"id": tool_call_id(), "function": {"index": index, "name": name, "arguments": arguments}}
