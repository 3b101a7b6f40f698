"""``mlxd run MODEL [PROMPT]`` (Ollama's ``RunHandler``): show the model, pulling it on a 404;
then answer one prompt (from the arguments and/or piped stdin) with ``/api/generate``, or load
the model and open the interactive chat (``daemon.cli.interactive``), which talks to
``/api/chat`` one turn at a time through :func:`chat_turn`."""

from __future__ import annotations

import argparse
import sys
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

import orjson

from daemon.cli.client import Client, CLIError, StatusError
from daemon.cli.display import ResponseWriter, metrics_summary
from daemon.cli.progress import Spinner, show_progress
from daemon.durations import parse_go_duration

THINK_LEVELS = ("high", "medium", "low", "max")
NO_IMAGE_MODELS = "image generation models are not currently supported"


@dataclass
class RunOptions:
    """What one ``run`` (and its interactive session) sends with each request."""

    model: str
    prompt: str = ""
    parent_model: str = ""
    loaded_messages: list[dict[str, Any]] = field(default_factory=list)  # the model's MESSAGEs
    messages: list[dict[str, Any]] = field(default_factory=list)  # this session's
    word_wrap: bool = True
    format: str = ""
    system: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    keep_alive: str | None = None
    think: bool | str | None = None
    think_explicit: bool = False
    hide_thinking: bool = False
    verbose: bool = False

    def common(self) -> dict[str, Any]:
        """The fields generate and chat share, set ones only."""
        body: dict[str, Any] = {"model": self.model}
        if self.format:
            body["format"] = request_format(self.format)
        if self.options:
            body["options"] = self.options
        if self.keep_alive is not None:
            body["keep_alive"] = self.keep_alive
        if self.think is not None:
            body["think"] = self.think
        return body

    def apply_show(self, info: dict[str, Any]) -> None:
        """``applyShowResponseToRunOptions``: the parent model and the stored messages."""
        self.parent_model = str((info.get("details") or {}).get("parent_model") or "")
        self.loaded_messages = list(info.get("messages") or [])


# -- flags ------------------------------------------------------------------------------------


def parse_think(text: str | None) -> bool | str | None:
    """``--think[=true|false|high|medium|low|max]``; absent is None (the model decides)."""
    if text is None:
        return None
    if text in ("", "true"):
        return True
    if text == "false":
        return False
    if text in THINK_LEVELS:
        return text
    raise CLIError(f'invalid value for --think: "{text}" (must be true, false, high, medium, low, or max)')


def parse_keepalive(text: str | None) -> str | None:
    """``--keepalive``: a Go duration (``5m``, ``1h30m``, ``-1s`` for forever), sent as given."""
    if not text:
        return None
    try:
        parse_go_duration(text)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    return text


def request_format(text: str) -> Any:
    """``--format json`` → ``"json"``; anything else must be a JSON schema."""
    if text == "json":
        return "json"
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        raise CLIError(f"invalid format {text!r}: use 'json' or a JSON schema") from None


def infer_think(capabilities: list[str], opts: RunOptions) -> bool | str | None:
    """``inferThinkingOption``: the user's choice, else on for thinking models, else unset."""
    if opts.think_explicit:
        return opts.think
    return True if "thinking" in capabilities else None


# -- the steps ----------------------------------------------------------------------------------


def pull_model(client: Client, name: str, insecure: bool = False) -> None:
    show_progress(client.stream("/api/pull", {"name": name, "insecure": insecure}))


def show_or_pull(client: Client, name: str) -> dict[str, Any]:
    """``showOrPullModel``: ``/api/show``; on 404 pull with progress and show again."""
    try:
        info: dict[str, Any] = client.post("/api/show", {"model": name})
        return info
    except StatusError as exc:
        if exc.status != 404:
            raise
    pull_model(client, name)
    info = client.post("/api/show", {"model": name})
    return info


def load_model(client: Client, opts: RunOptions) -> None:
    """``loadOrUnloadModel``: the load idiom (generate with no prompt), with a spinner."""
    body: dict[str, Any] = {"model": opts.model}
    if opts.keep_alive is not None:
        body["keep_alive"] = opts.keep_alive
    if opts.think is not None:
        body["think"] = opts.think
    with Spinner():
        client.post("/api/show", {"model": opts.model})
        for _ in client.stream("/api/generate", body):
            pass


def unload_model(client: Client, name: str) -> None:
    """``stop``'s request: show, then generate with an empty prompt and ``keep_alive`` 0."""
    client.post("/api/show", {"model": name})
    for _ in client.stream("/api/generate", {"model": name, "prompt": "", "keep_alive": "0s"}):
        pass


def _answer(
    client: Client, path: str, body: dict[str, Any], opts: RunOptions, part: str
) -> tuple[ResponseWriter, dict[str, Any] | None]:
    """Stream one answer; ``part`` is where the text is (``response`` or ``message``).

    Returns the writer and the last chunk, or None for the chunk when Ctrl-C cancelled the
    answer (the response is closed, which stops the generation on the server)."""
    writer = ResponseWriter(word_wrap=opts.word_wrap, hide_thinking=opts.hide_thinking)
    last: dict[str, Any] = {}
    with Spinner() as waiting, closing(client.stream(path, body)) as chunks:
        try:
            for chunk in chunks:
                holder = (chunk.get("message") or {}) if part == "message" else chunk
                content = str(holder.get("content" if part == "message" else "response") or "")
                if content or not opts.hide_thinking:
                    waiting.stop()
                writer.thinking(str(holder.get("thinking") or ""))
                writer.content(content, holder.get("tool_calls"))
                last = chunk
        except KeyboardInterrupt:
            waiting.stop()
            writer.finish()
            return writer, None
    writer.finish()
    return writer, last


def generate_once(client: Client, opts: RunOptions) -> None:
    """The non-interactive answer: ``/api/generate`` with the prompt, then a blank line."""
    body = opts.common()
    body["prompt"] = opts.prompt
    if opts.system:
        body["system"] = opts.system
    _, last = _answer(client, "/api/generate", body, opts, "response")
    if last is None:
        raise KeyboardInterrupt
    if opts.prompt:
        sys.stdout.write("\n\n")
        sys.stdout.flush()
    if opts.verbose and last.get("done"):
        sys.stderr.write(metrics_summary(last))


def chat_turn(client: Client, opts: RunOptions) -> dict[str, Any] | None:
    """One interactive turn over ``opts.messages``; the assistant's message, or None when
    Ctrl-C cancelled it."""
    body = opts.common()
    body["messages"] = opts.messages
    writer, last = _answer(client, "/api/chat", body, opts, "message")
    if last is None:
        sys.stdout.write("\n\n" if writer.wrote else "\n")
        sys.stdout.flush()
        return None
    if opts.messages:
        sys.stdout.write("\n\n")
        sys.stdout.flush()
    if opts.verbose:
        sys.stderr.write(metrics_summary(last))
    message: dict[str, Any] = {
        "role": str((last.get("message") or {}).get("role") or "assistant"),
        "content": writer.content_text,
    }
    if writer.thinking_text:
        message["thinking"] = writer.thinking_text
    return message


def embed(client: Client, name: str, text: str, args: argparse.Namespace, keep_alive: str | None) -> None:
    """Embedding models print ``embeddings[0]`` as a JSON array."""
    if not text:
        raise CLIError(f'embedding models require input text. Usage: mlxd run {name} "your text here"')
    body: dict[str, Any] = {"model": name, "input": text}
    if args.truncate is not None:
        body["truncate"] = args.truncate
    if args.dimensions:
        body["dimensions"] = args.dimensions
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    response = client.post("/api/embed", body) or {}
    embeddings = response.get("embeddings") or []
    if not embeddings:
        raise CLIError("no embeddings returned")
    print(orjson.dumps(embeddings[0]).decode())


# -- the verb -------------------------------------------------------------------------------------


def run(client: Client, args: argparse.Namespace, history_path: Any) -> int:
    opts = RunOptions(
        model=args.model,
        word_wrap=not args.nowordwrap,
        format=args.format or "",
        keep_alive=parse_keepalive(args.keepalive),
        think=parse_think(args.think),
        think_explicit=args.think is not None,
        hide_thinking=args.hidethinking,
        verbose=args.verbose,
    )
    if args.format:
        request_format(args.format)
    prompts = list(args.prompt)
    interactive = True
    if not sys.stdin.isatty():
        piped = sys.stdin.read()
        if piped:
            prompts.insert(0, piped)
        interactive = False
    opts.prompt = " ".join(prompts)
    if prompts or not sys.stdout.isatty():
        interactive = False

    info = show_or_pull(client, args.model)
    capabilities = [str(c) for c in info.get("capabilities") or []]
    opts.think = infer_think(capabilities, opts)
    opts.apply_show(info)
    if "embedding" in capabilities:
        embed(client, opts.model, opts.prompt, args, opts.keep_alive)
        return 0
    if "image" in capabilities:
        raise CLIError(NO_IMAGE_MODELS)
    if not interactive:
        generate_once(client, opts)
        return 0

    from daemon.cli.interactive import Repl

    load_model(client, opts)
    return Repl(client, opts, history_path).start(info)
