"""The slash commands of the interactive chat (``/set``, ``/show``, ``/load``, ``/save``,
``/clear``, ``/list``, ``/?``), with Ollama's words for each answer (``cmd/interactive.go``)."""

from __future__ import annotations

import copy
import re
import sys
from typing import Any, Protocol

from daemon.cli.client import Client, CLIError
from daemon.cli.formatting import go_float
from daemon.cli.run import RunOptions, infer_think, load_model
from daemon.durations import go_quote
from registry.modelfile import OPTION_TYPES

USAGE = """Available Commands:
  /set            Set session variables
  /show           Show model information
  /load <model>   Load a session or model
  /save <model>   Save your current session
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command
  /? shortcuts    Help for keyboard shortcuts

Use \"\"\" to begin a multi-line message.

"""
USAGE_SET = """Available Commands:
  /set parameter ...     Set a parameter
  /set system <string>   Set system message
  /set history           Enable history
  /set nohistory         Disable history
  /set wordwrap          Enable wordwrap
  /set nowordwrap        Disable wordwrap
  /set format json       Enable JSON mode
  /set noformat          Disable formatting
  /set verbose           Show LLM stats
  /set quiet             Disable LLM stats
  /set think             Enable thinking
  /set nothink           Disable thinking

"""
USAGE_SHORTCUTS = """Available keyboard shortcuts:
  Ctrl + a            Move to the beginning of the line (Home)
  Ctrl + e            Move to the end of the line (End)
   Alt + b            Move back (left) one word
   Alt + f            Move forward (right) one word
  Ctrl + k            Delete the sentence after the cursor
  Ctrl + u            Delete the sentence before the cursor
  Ctrl + w            Delete the word before the cursor

  Ctrl + l            Clear the screen
  Ctrl + g            Open default editor to compose a prompt
  Ctrl + c            Stop the model from responding
  Ctrl + d            Exit mlxd (/bye)

"""
USAGE_SHOW = """Available Commands:
  /show info         Show details for this model
  /show license      Show model license
  /show modelfile    Show Modelfile for this model
  /show parameters   Show parameters for this model
  /show system       Show system message
  /show template     Show prompt template

"""
USAGE_PARAMETERS = """Available Parameters:
  /set parameter seed <int>             Random number seed
  /set parameter num_predict <int>      Max number of tokens to predict
  /set parameter top_k <int>            Pick from top k num of tokens
  /set parameter top_p <float>          Pick token based on sum of probabilities
  /set parameter min_p <float>          Pick token based on top token probability * min_p
  /set parameter num_ctx <int>          Set the context size
  /set parameter temperature <float>    Set creativity level
  /set parameter repeat_penalty <float> How strongly to penalize repetitions
  /set parameter repeat_last_n <int>    Set how far back to look for repetitions
  /set parameter num_gpu <int>          The number of layers to send to the GPU
  /set parameter stop <string> <string> ...   Set the stop parameters

"""
_INT_RE = re.compile(r"[+-]?[0-9]+")
_GO_BOOLS = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True}
_GO_BOOLS |= {"0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}


class History(Protocol):
    enabled: bool


def format_param(name: str, values: list[str]) -> Any:
    """``api.FormatParams`` for one parameter: typed by the option table; errors in its words."""
    kind = OPTION_TYPES.get(name)
    shown = "[" + " ".join(values) + "]"
    if kind is None:
        raise ValueError(f"unknown parameter '{name}'")
    if kind == "list":
        return list(values)
    value = values[0]
    if kind == "int":
        if not _INT_RE.fullmatch(value):
            raise ValueError(f"invalid int value {shown}")
        return int(value)
    if kind == "float":
        try:
            if "_" in value or value != value.strip():
                raise ValueError
            return float(value)
        except ValueError:
            raise ValueError(f"invalid float value {shown}") from None
    if value not in _GO_BOOLS:
        raise ValueError(f"invalid bool value {shown}")
    return _GO_BOOLS[value]


def go_value(value: Any) -> str:
    """Go's ``%v`` of a parameter value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + " ".join(go_value(v) for v in value) + "]"
    if isinstance(value, float):
        return go_float(value)
    return str(value)


class SessionCommands:
    """Carries out one slash-command line against the session's options."""

    def __init__(self, client: Client, opts: RunOptions, history: History) -> None:
        self.client = client
        self.opts = opts
        self.history = history

    def run(self, line: str) -> None:
        args = line.split()
        if line.startswith("/list"):
            from daemon.cli.models import list_models

            list_models(self.client, args[1] if len(args) > 1 else "")
        elif line.startswith("/load"):
            if len(args) != 2:
                print("Usage:\n  /load <modelname>")
            else:
                load_session_model(self.client, self.opts, args[1])
        elif line.startswith("/save"):
            if len(args) != 2:
                print("Usage:\n  /save <modelname>")
            else:
                self.save(args[1])
        elif line.startswith("/clear"):
            self.opts.messages = []
            if self.opts.system:
                self.opts.messages.append({"role": "system", "content": self.opts.system})
            print("Cleared session context")
        elif line.startswith("/set"):
            self.set(args[1:])
        elif line.startswith("/show"):
            self.show(args[1:])
        elif line.startswith(("/help", "/?")):
            topic = args[1] if len(args) > 1 else None
            usage = {
                None: USAGE,
                "set": USAGE_SET,
                "/set": USAGE_SET,
                "show": USAGE_SHOW,
                "/show": USAGE_SHOW,
                "shortcut": USAGE_SHORTCUTS,
                "shortcuts": USAGE_SHORTCUTS,
            }
            sys.stderr.write(usage.get(topic, ""))
        else:
            print(f"Unknown command '{args[0]}'. Type /? for help")

    # -- /set --------------------------------------------------------------------------------

    def set_system(self, text: str, replace_last: bool = False) -> None:
        self.opts.system = text
        message = {"role": "system", "content": text}
        messages = self.opts.messages
        if replace_last and messages and messages[-1].get("role") == "system":
            messages[-1] = message
        else:
            messages.append(message)
        print("Set system message.")

    def set(self, args: list[str]) -> None:
        if not args:
            sys.stderr.write(USAGE_SET)
            return
        what, rest = args[0], args[1:]
        opts = self.opts
        if what == "history":
            self.history.enabled = True
        elif what == "nohistory":
            self.history.enabled = False
        elif what in ("wordwrap", "nowordwrap"):
            opts.word_wrap = what == "wordwrap"
            print(f"Set '{what}' mode.")
        elif what in ("verbose", "quiet"):
            opts.verbose = what == "verbose"
            print(f"Set '{what}' mode.")
        elif what in ("think", "nothink"):
            opts.think = (rest[0] if rest else True) if what == "think" else False
            opts.think_explicit = True
            self._warn_if_no_thinking()
            print(f"Set 'think' mode to '{rest[0]}'." if what == "think" and rest else f"Set '{what}' mode.")
        elif what == "format":
            if not rest or rest[0] != "json":
                print("Invalid or missing format. For 'json' mode use '/set format json'")
            else:
                opts.format = "json"
                print("Set format to 'json' mode.")
        elif what == "noformat":
            opts.format = ""
            print("Disabled format.")
        elif what == "parameter":
            if len(rest) < 2:
                sys.stderr.write(USAGE_PARAMETERS)
                return
            try:
                value = format_param(rest[0], rest[1:])
            except ValueError as exc:
                print(f"Couldn't set parameter: {go_quote(str(exc))}")
                return
            print(f"Set parameter '{rest[0]}' to '{', '.join(rest[1:])}'")
            opts.options[rest[0]] = value
        elif what == "system":
            sys.stderr.write(USAGE_SET)
        else:
            print(f"Unknown command '/set {what}'. Type /? for help")

    def _warn_if_no_thinking(self) -> None:
        try:
            info = self.client.post("/api/show", {"model": self.opts.model}) or {}
        except CLIError:
            return
        if "thinking" not in (info.get("capabilities") or []):
            sys.stderr.write(f"warning: model {go_quote(self.opts.model)} does not support thinking output\n")

    # -- /show -------------------------------------------------------------------------------

    def show(self, args: list[str]) -> None:
        if not args:
            sys.stderr.write(USAGE_SHOW)
            return
        opts = self.opts
        body: dict[str, Any] = {"model": opts.model}
        if opts.system:
            body["system"] = opts.system
        if opts.options:
            body["options"] = opts.options
        try:
            info: dict[str, Any] = self.client.post("/api/show", body) or {}
        except CLIError:
            print("error: couldn't get model")
            raise
        what = args[0]
        if what == "info":
            from daemon.cli.show import show_info

            sys.stderr.write(show_info(info, verbose=False))
        elif what == "license":
            print(info.get("license") or "No license was specified for this model.")
        elif what == "modelfile":
            print(info.get("modelfile", ""))
        elif what == "parameters":
            print("Model defined parameters:")
            parameters = info.get("parameters") or ""
            if not parameters:
                print("  No additional parameters were specified for this model.")
            for line in parameters.split("\n") if parameters else []:
                print(f"  {line}")
            print()
            if opts.options:
                print("User defined parameters:")
                for key, value in opts.options.items():
                    print(f"  {key:<30} {go_value(value)}")
                print()
        elif what == "system":
            system = opts.system or info.get("system") or ""
            print(system + "\n" if system else "No system message was specified for this model.")
        elif what == "template":
            print(info.get("template") or "No prompt template was specified for this model.")
        else:
            print(f"Unknown command '/show {what}'. Type /? for help")

    # -- /save -------------------------------------------------------------------------------

    def save(self, name: str) -> None:
        """``/save NAME``: a new model from this one with the session's system prompt,
        parameters and messages."""
        from registry.names import InvalidName, parse_name

        opts = self.opts
        parent = opts.parent_model
        try:
            parse_name(parent)
        except (InvalidName, ValueError):
            parent = ""
        body: dict[str, Any] = {"model": name, "from": parent or opts.model}
        if opts.system:
            body["system"] = opts.system
        if opts.options:
            body["parameters"] = opts.options
        messages = [
            {"role": m.get("role", ""), "content": m.get("content", "")}
            for m in [*opts.loaded_messages, *opts.messages]
        ]
        if messages:
            body["messages"] = messages
        try:
            for _ in self.client.stream("/api/create", body):
                pass
        except CLIError as exc:
            if "invalid model name" in str(exc):
                print(f"error: The model name '{name}' is invalid")
                return
            raise
        print(f"Created new model '{name}'")


def load_session_model(client: Client, opts: RunOptions, name: str) -> bool:
    """``/load NAME``: switch the session to another model; False (and ``opts`` untouched)
    when it does not exist or cannot think as asked."""
    saved = copy.deepcopy(opts)
    opts.model = name
    opts.messages = []
    opts.loaded_messages = []
    print(f"Loading model '{name}'")
    try:
        info = client.post("/api/show", {"model": name}) or {}
        opts.apply_show(info)
        opts.think = infer_think([str(c) for c in info.get("capabilities") or []], opts)
        load_model(client, opts)
    except CLIError as exc:
        if "not found" in str(exc):
            print(f"Couldn't find model '{name}'")
        elif "does not support thinking" in str(exc):
            print(f"error: {exc}")
        else:
            raise
        for key, value in vars(saved).items():
            setattr(opts, key, value)
        return False
    return True
