"""Writing a streamed answer the way ``ollama run`` does: word wrap on a terminal, the
``Thinking...`` / ``...done thinking.`` block, tool calls the CLI cannot run, and the
``--verbose`` timing block (``api.Metrics.Summary``)."""

from __future__ import annotations

import shutil
import sys
from typing import Any, TextIO

import orjson
from rich.cells import cell_len
from rich.color import ColorSystem
from rich.style import Style

from daemon.cli.formatting import go_duration

THINKING_OPEN = "Thinking...\n"
THINKING_CLOSE = "...done thinking.\n\n"
_GREY = Style(color="bright_black")
_GREY_BOLD = Style(color="bright_black", bold=True)


class WordWrapper:
    """Streams text, moving a word that would cross ``width - 5`` columns to a new line.

    A word is held back until it ends (so no escape codes are needed to move it); a word
    longer than ``width - 10`` is written as it is. Wide characters break anywhere."""

    def __init__(self, width: int) -> None:
        self.limit = width - 5
        self.column = 0
        self.word = ""
        self.spaces = ""  # held back too: dropped where the line breaks

    def feed(self, text: str) -> str:
        out: list[str] = []
        for ch in text:
            if ch in "\n\r":
                out.append(self._word() + self.spaces + ch)
                self.spaces = ""
                self.column = 0
            elif ch in " \t":
                out.append(self._word())
                self.spaces += ch
            elif cell_len(ch) >= 2:
                out.append(self._word())
                self.word = ch
                out.append(self._word())
            else:
                self.word += ch
                if cell_len(self.word) > self.limit - 5:
                    out.append(self.spaces + self.word)
                    self.column += len(self.spaces) + cell_len(self.word)
                    self.spaces = self.word = ""
        return "".join(out)

    def _word(self) -> str:
        if not self.word:
            return ""
        width = cell_len(self.word)
        if self.column > 0 and self.column + len(self.spaces) + width > self.limit:
            text = "\n" + self.word
            self.column = width
        else:
            text = self.spaces + self.word
            self.column += len(self.spaces) + width
        self.spaces = self.word = ""
        return text

    def flush(self) -> str:
        """What is held back (at the end of the answer)."""
        text = self._word() + self.spaces
        self.spaces = ""
        return text


class ResponseWriter:
    """Writes one answer's thinking, content and tool calls to ``out``."""

    def __init__(
        self, out: TextIO | None = None, word_wrap: bool = True, hide_thinking: bool = False
    ) -> None:
        self.out = out or sys.stdout
        self.styled = self.out.isatty()
        wrap = word_wrap and self.styled
        self.width = shutil.get_terminal_size().columns if wrap else 0
        self.wrapper: WordWrapper | None = WordWrapper(self.width) if wrap and self.width >= 10 else None
        self.hide_thinking = hide_thinking
        self.thinking_open = False
        self.thinking_text = ""
        self.content_text = ""
        self.wrote = False

    def _write(self, text: str, style: Style | None = None) -> None:
        if not text:
            return
        if style is not None and self.styled:
            text = style.render(text, color_system=ColorSystem.STANDARD)
        self.out.write(text)
        self.out.flush()
        self.wrote = True

    def _wrapped(self, text: str) -> str:
        return self.wrapper.feed(text) if self.wrapper else text

    def thinking(self, text: str) -> None:
        if not text or self.hide_thinking:
            return
        if not self.thinking_open:
            self._write(THINKING_OPEN, _GREY_BOLD)
            self.thinking_open = True
        self.thinking_text += text
        self._write(self._wrapped(text), _GREY)

    def _close_thinking(self) -> None:
        if not self.thinking_open:
            return
        self._write(self.wrapper.flush() if self.wrapper else "", _GREY)
        if not self.thinking_text.endswith("\n"):
            self._write("\n")
        self._write(THINKING_CLOSE, _GREY_BOLD)
        self.thinking_open = False
        if self.wrapper:
            self.wrapper = WordWrapper(self.width)

    def content(self, text: str, tool_calls: list[Any] | None = None) -> None:
        if text or tool_calls:
            self._close_thinking()
        self.content_text += text
        if tool_calls:
            self._write(render_tool_calls(tool_calls), _GREY_BOLD)
        self._write(self._wrapped(text))

    def finish(self) -> None:
        """Write what is held back (and close an unfinished thinking block's styling)."""
        if self.wrapper:
            self._write(self.wrapper.flush(), _GREY if self.thinking_open else None)


def render_tool_calls(calls: list[Any]) -> str:
    """The CLI registers no tools, so every call is reported, as Ollama words it."""
    lines = []
    for call in calls:
        function = call.get("function", {}) if isinstance(call, dict) else {}
        arguments = orjson.dumps(function.get("arguments", {})).decode()
        name = function.get("name", "")
        lines.append(f"  Model called a non-existent function '{name}()' with arguments: {arguments}")
    return "\n".join(lines)


def metrics_summary(final: dict[str, Any]) -> str:
    """``--verbose``'s block; each line only when its value is positive."""
    lines = []

    def number(key: str) -> int:
        value = final.get(key)
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0

    total, load = number("total_duration"), number("load_duration")
    prompt_count, prompt_ns = number("prompt_eval_count"), number("prompt_eval_duration")
    eval_count, eval_ns = number("eval_count"), number("eval_duration")
    if total > 0:
        lines.append(f"total duration:       {go_duration(total)}")
    if load > 0:
        lines.append(f"load duration:        {go_duration(load)}")
    if prompt_count > 0:
        lines.append(f"prompt eval count:    {prompt_count} token(s)")
    if prompt_ns > 0:
        lines.append(f"prompt eval duration: {go_duration(prompt_ns)}")
        lines.append(f"prompt eval rate:     {prompt_count / (prompt_ns / 1e9):.2f} tokens/s")
    if eval_count > 0:
        lines.append(f"eval count:           {eval_count} token(s)")
    if eval_ns > 0:
        lines.append(f"eval duration:        {go_duration(eval_ns)}")
        lines.append(f"eval rate:            {eval_count / (eval_ns / 1e9):.2f} tokens/s")
    return "".join(line + "\n" for line in lines)
