"""The interactive chat of ``mlxd run`` (Ollama's ``generateInteractive``): a prompt_toolkit
line editor with history, ``\"\"\"`` multi-line input, the slash commands, and Ctrl-C that
stops the current answer without leaving (Ctrl-D or ``/bye`` leave)."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Any

from prompt_toolkit import PromptSession
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.history import FileHistory
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent

from daemon.cli.client import Client, CLIError
from daemon.cli.display import ResponseWriter
from daemon.cli.run import RunOptions, chat_turn
from daemon.cli.session import SessionCommands

PROMPT, ALT_PROMPT = ">>> ", "... "
PLACEHOLDER, ALT_PLACEHOLDER = "Send a message (/? for help)", "Press Enter to send"
QUOTES = '"""'
EXIT_HINT = "Use Ctrl + d or /bye to exit."


class Multiline(Enum):
    NONE = 0
    PROMPT = 1
    SYSTEM = 2


class SessionHistory(FileHistory):
    """The line history, kept in a file unless ``OLLAMA_NOHISTORY`` or ``/set nohistory``
    turned saving off (earlier lines stay available either way)."""

    def __init__(self, path: Path, enabled: bool) -> None:
        super().__init__(str(path))
        self.enabled = enabled

    def store_string(self, string: str) -> None:
        if not self.enabled:
            return
        try:
            Path(os.fsdecode(self.filename)).parent.mkdir(parents=True, exist_ok=True)
            super().store_string(string)
        except OSError:
            self.enabled = False


def _cut_suffix(text: str, suffix: str) -> tuple[str, bool]:
    return (text[: -len(suffix)], True) if text.endswith(suffix) else (text, False)


class Repl:
    """One interactive session over a loaded model."""

    def __init__(self, client: Client, opts: RunOptions, history_path: Path | None) -> None:
        self.client = client
        self.opts = opts
        no_history = os.environ.get("OLLAMA_NOHISTORY", "").strip().lower() in ("1", "true", "t", "yes")
        path = history_path or Path(os.devnull)
        self.history = SessionHistory(path, enabled=history_path is not None and not no_history)
        self.commands = SessionCommands(client, opts, self.history)
        self.alt = False
        self.interrupted_text = ""
        editor = os.environ.get("OLLAMA_EDITOR")
        if editor:
            os.environ["VISUAL"] = editor
        self.session: PromptSession[str] = PromptSession(history=self.history, key_bindings=self._keys())

    def _keys(self) -> KeyBindings:
        keys = KeyBindings()

        @keys.add("c-c")
        def _interrupt(event: KeyPressEvent) -> None:
            self.interrupted_text = event.app.current_buffer.text
            event.app.exit(exception=KeyboardInterrupt(), style="class:aborting")

        @keys.add("c-g")
        def _editor(event: KeyPressEvent) -> None:
            event.current_buffer.open_in_editor(validate_and_handle=False)

        return keys

    def _read(self) -> str:
        placeholder = ALT_PLACEHOLDER if self.alt else PLACEHOLDER
        self.interrupted_text = ""
        return self.session.prompt(
            ALT_PROMPT if self.alt else PROMPT,
            placeholder=FormattedText([("fg:ansibrightblack", placeholder)]),
        )

    def start(self, info: dict[str, Any]) -> int:
        """Show the model's stored conversation, then read and answer until ``/bye``."""
        for message in info.get("messages") or []:
            if message.get("role") == "user":
                print(f"{PROMPT}{message.get('content', '')}")
            elif message.get("role") == "assistant":
                writer = ResponseWriter(word_wrap=self.opts.word_wrap)
                writer.content(str(message.get("content", "")))
                writer.finish()
                print("\n")
        return self.loop()

    def loop(self) -> int:
        text = ""
        multiline = Multiline.NONE
        while True:
            try:
                line = self._read()
            except EOFError:
                print()
                return 0
            except KeyboardInterrupt:
                if not self.interrupted_text:
                    print(EXIT_HINT)
                self.alt = False
                text = ""
                multiline = Multiline.NONE
                continue

            if multiline is not Multiline.NONE:
                before, ended = _cut_suffix(line, QUOTES)
                text += before
                if not ended:
                    text += "\n"
                    self.alt = True
                    continue
                if multiline is Multiline.SYSTEM:
                    self.commands.set_system(text)
                    text = ""
                multiline = Multiline.NONE
                self.alt = False
            elif line.startswith(QUOTES):
                rest, ended = _cut_suffix(line[len(QUOTES) :], QUOTES)
                text += rest
                if not ended:
                    text += "\n"
                    multiline = Multiline.PROMPT
                    self.alt = True
            elif line.startswith(("/exit", "/bye")):
                return 0
            elif line.startswith("/set") and self._starts_system(line):
                rest = " ".join(line.split()[2:])
                rest, opened = (rest[len(QUOTES) :], True) if rest.startswith(QUOTES) else (rest, False)
                closed = False
                if opened:
                    rest, closed = _cut_suffix(rest, QUOTES)
                text += rest
                if opened and not closed:
                    multiline = Multiline.SYSTEM
                    self.alt = True
                    continue
                self.commands.set_system(text, replace_last=True)
                text = ""
                continue
            elif line.startswith("/"):
                self.commands.run(line)
                continue
            else:
                text += line

            if text and multiline is Multiline.NONE:
                self._send(text)
                text = ""

    @staticmethod
    def _starts_system(line: str) -> bool:
        args = line.split()
        return len(args) > 2 and args[1] == "system"

    def _send(self, text: str) -> None:
        self.opts.messages.append({"role": "user", "content": text})
        try:
            assistant = chat_turn(self.client, self.opts)
        except CLIError as exc:
            if "does not support thinking" in str(exc) or "invalid think value" in str(exc):
                print(f"error: {exc}")
                return
            raise
        if assistant is not None:
            self.opts.messages.append(assistant)
