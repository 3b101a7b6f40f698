"""The ``mlxd`` command line. ``serve`` runs the daemon; every other model verb is a client of
its HTTP API at ``OLLAMA_HOST``, with Ollama's verbs, flags, columns, texts and exit codes
(reference §9): failures print one ``Error: …`` line on stderr and exit with status 1.

Modules: ``client`` (HTTP), ``models`` (list, ps, pull, rm, cp, stop, create), ``show``,
``run`` (one-shot answers), ``interactive`` and ``session`` (the chat and its slash
commands), ``progress`` (pull bars, spinners), ``display`` (streamed answers), ``formatting``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn

from daemon import __version__
from daemon.cli.client import Client, CLIError, StatusError
from daemon.config import Settings
from launchd.cli import add_parser as add_service_parser
from launchd.cli import run as run_service

__all__ = ["CLIError", "Client", "StatusError", "build_parser", "main"]

# Verbs that talk to a running server: checked with ``HEAD /`` first, as Ollama does.
CLIENT_VERBS = ("create", "show", "run", "stop", "pull", "list", "ls", "ps", "cp", "rm")


class Parser(argparse.ArgumentParser):
    """Usage mistakes are one ``Error:`` line and status 1, like cobra's."""

    def error(self, message: str) -> NoReturn:
        self.exit(1, f"Error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = Parser(
        prog="mlxd", description="Large language model runner (Ollama's API, MLX underneath)"
    )
    parser.add_argument("-v", "--version", action="store_true", help="show version information")
    verbs = parser.add_subparsers(dest="verb", metavar="COMMAND")

    verbs.add_parser("serve", aliases=["start"], help="start mlxd (OLLAMA_HOST, MLXD_HOME, MLXD_IPC)")

    create = verbs.add_parser("create", help="create a model")
    create.add_argument("model", metavar="MODEL")
    create.add_argument("-f", "--file", help='name of the Modelfile (default "Modelfile")')
    create.add_argument("-q", "--quantize", help="quantize model to this level (e.g. q4_K_M)")

    show = verbs.add_parser("show", help="show information for a model")
    show.add_argument("model", metavar="MODEL")
    for name, text in (
        ("license", "license"),
        ("modelfile", "Modelfile"),
        ("parameters", "parameters"),
        ("template", "template"),
        ("system", "system message"),
    ):
        show.add_argument(f"--{name}", action="store_true", help=f"show {text} of a model")
    show.add_argument("-v", "--verbose", action="store_true", help="show detailed model information")

    run = verbs.add_parser("run", help="run a model")
    run.add_argument("model", nargs="?", metavar="MODEL")
    run.add_argument("prompt", nargs="*", metavar="PROMPT")
    run.add_argument("--keepalive", help="duration to keep a model loaded (e.g. 5m)")
    run.add_argument("--verbose", action="store_true", help="show timings for response")
    run.add_argument("--insecure", action="store_true", help="use an insecure registry (ignored)")
    run.add_argument(
        "--nowordwrap", action="store_true", help="don't wrap words to the next line automatically"
    )
    run.add_argument("--format", help="response format (e.g. json)")
    run.add_argument(
        "--think", help="enable thinking mode: true/false or high/medium/low for supported models"
    )
    run.add_argument("--hidethinking", action="store_true", help="hide thinking output (if provided)")
    run.add_argument(
        "--truncate",
        type=_go_bool,
        default=None,
        help="for embedding models: truncate inputs exceeding context length (default: true)",
    )
    run.add_argument("--dimensions", type=int, default=0, help="truncate output embeddings to this dimension")

    stop = verbs.add_parser("stop", help="stop a running model")
    stop.add_argument("model", metavar="MODEL")

    pull = verbs.add_parser("pull", help="pull a model from Hugging Face")
    pull.add_argument("model", metavar="MODEL")
    pull.add_argument("--insecure", action="store_true", help="use an insecure registry (ignored)")

    listing = verbs.add_parser("list", aliases=["ls"], help="list models")
    listing.add_argument("prefix", nargs="?", default="", metavar="PREFIX")
    ps = verbs.add_parser("ps", help="list running models")
    ps.add_argument("prefix", nargs="?", default="", metavar="PREFIX")

    cp = verbs.add_parser("cp", help="copy a model")
    cp.add_argument("source", metavar="SOURCE")
    cp.add_argument("destination", metavar="DESTINATION")

    rm = verbs.add_parser("rm", help="remove a model")
    rm.add_argument("models", nargs="+", metavar="MODEL")

    helper = verbs.add_parser("help", help="help about any command")
    helper.add_argument("topic", nargs="?", metavar="COMMAND")

    add_service_parser(verbs)
    verbs.add_parser("quickstart", help="start the daemon with the embedded SmolLM2 model and say hello")
    dev = verbs.add_parser("dev", help="developer tools")
    dev_verbs = dev.add_subparsers(dest="dev_verb", metavar="TOOL", required=True)
    tiny = dev_verbs.add_parser("tiny-model", help="write a tiny random-weight model (for tests)")
    tiny.add_argument("directory")
    tiny.add_argument("--seed", type=int, default=0)
    return parser


def _go_bool(text: str) -> bool:
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {text!r}")


def _cobra_argv(argv: list[str]) -> list[str]:
    """``--think`` alone means ``--think=true`` (cobra's NoOptDefVal), so that the word after
    it stays a prompt; likewise a bare ``--truncate``."""
    out: list[str] = []
    for arg in argv:
        if arg == "--":
            out.extend(argv[len(out) :])
            break
        out.append({"--think": "--think=true", "--truncate": "--truncate=true"}.get(arg, arg))
    return out


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Like cobra, ``run`` takes its prompt words before and after its flags."""
    args, extra = parser.parse_known_args(argv)
    if args.verb == "run":
        if args.model is None:
            parser.error("requires at least 1 arg(s), only received 0")
        cut = extra.index("--") if "--" in extra else len(extra)
        flags = [word for word in extra[:cut] if word.startswith("-")]
        if not flags:
            args.prompt += extra[:cut] + extra[cut + 1 :]
            return args
        extra = flags
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def version(settings: Settings) -> int:
    """``mlxd -v``: this client's version and the server's (its Ollama API version)."""
    print(f"mlxd version is {__version__}")
    client = Client(settings.client_url, connect_timeout=3.0)
    try:
        server = (client.get("/api/version") or {}).get("version")
        print(f"server at {client.base_url} speaks Ollama API version {server}")
    except CLIError:
        print("Warning: could not connect to a running mlxd instance")
    finally:
        client.close()
    return 0


def dispatch(args: argparse.Namespace, parser: argparse.ArgumentParser, settings: Settings) -> int:
    verb = args.verb
    if verb in ("serve", "start"):
        from daemon.server import serve

        return serve(settings)
    if verb == "quickstart":
        from daemon.quickstart import quickstart

        return quickstart(settings)
    if verb == "dev":
        from pathlib import Path

        from registry.tiny_model import write_tiny_model

        write_tiny_model(Path(args.directory), seed=args.seed)
        print(f"wrote a tiny random model to {args.directory}")
        return 0
    if verb == "service":
        return run_service(args, settings)
    if verb == "help":
        return _help(parser, args.topic)

    from daemon.cli import models

    client = Client(settings.client_url)
    try:
        client.require_server()
        if verb == "create":
            return models.create(client, args)
        if verb == "show":
            from daemon.cli.show import show

            return show(client, args)
        if verb == "run":
            from daemon.cli.run import run

            return run(client, args, settings.home / "history")
        if verb == "stop":
            return models.stop(client, args.model)
        if verb == "pull":
            return models.pull(client, args)
        if verb in ("list", "ls"):
            return models.list_models(client, args.prefix)
        if verb == "ps":
            return models.list_running(client, args.prefix)
        if verb == "cp":
            return models.copy(client, args.source, args.destination)
        if verb == "rm":
            return models.remove(client, args.models)
    finally:
        client.close()
    parser.error(f"unknown command {verb!r}")


def _help(parser: argparse.ArgumentParser, topic: str | None) -> int:
    if topic is None:
        parser.print_help()
        return 0
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        choices = getattr(action, "choices", None) or {}
        if topic in choices:
            choices[topic].print_help()
            return 0
    raise CLIError(f'unknown command "{topic}" for "mlxd"')


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse(parser, _cobra_argv(sys.argv[1:] if argv is None else argv))
    try:
        settings = Settings.from_env(os.environ)
        if args.version:
            return version(settings)
        if args.verb is None:
            parser.print_help()
            return 0
        return dispatch(args, parser, settings)
    except (CLIError, ValueError) as exc:  # ValueError: bad settings or Modelfile
        sys.stdout.flush()
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (``mlxd list | head -1``): not an error worth a line.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
