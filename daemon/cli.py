"""The ``mlxd`` command line: ``serve`` runs the daemon; the other verbs are HTTP clients of it."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson

from daemon import __version__
from daemon.config import Settings
from launchd.cli import add_parser as add_service_parser
from launchd.cli import run as run_service


class CLIError(Exception):
    """A failure reported as one line on stderr with exit status 1."""


# ---------------------------------------------------------------------------- client


class Client:
    """A small synchronous client of the daemon's HTTP API."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, timeout=httpx.Timeout(10.0, read=None))

    def heartbeat(self) -> bool:
        try:
            return self.http.head("/").status_code < 400
        except httpx.HTTPError:
            return False

    def get(self, path: str) -> Any:
        return self._json(self._call("GET", path))

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self._json(self._call("POST", path, body))

    def stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """POST and yield each NDJSON object; an ``error`` object or status becomes CLIError."""
        try:
            with self.http.stream("POST", path, content=orjson.dumps(body)) as response:
                if response.status_code >= 400:
                    response.read()
                    raise CLIError(_error_text(response))
                for line in response.iter_lines():
                    if not line:
                        continue
                    obj = orjson.loads(line)
                    if obj.get("error"):
                        raise CLIError(str(obj["error"]))
                    yield obj
        except httpx.ConnectError:
            raise CLIError(self._not_running()) from None

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        try:
            response = self.http.request(method, path, content=orjson.dumps(body) if body else None)
        except httpx.ConnectError:
            raise CLIError(self._not_running()) from None
        if response.status_code >= 400:
            raise CLIError(_error_text(response))
        return response

    def _json(self, response: httpx.Response) -> Any:
        return orjson.loads(response.content) if response.content else None

    def _not_running(self) -> str:
        return f"could not connect to mlxd at {self.base_url}; start it with `mlxd serve`"


def _error_text(response: httpx.Response) -> str:
    try:
        return str(orjson.loads(response.content)["error"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return response.text.strip() or f"HTTP {response.status_code}"


# ---------------------------------------------------------------------------- verbs


def cmd_serve(settings: Settings) -> int:
    from daemon.server import serve

    return serve(settings)


def cmd_create(client: Client, name: str, modelfile: Path) -> int:
    from registry.create import create_request_from_modelfile

    try:
        text = modelfile.read_text(encoding="utf-8")
    except OSError as exc:
        raise CLIError(f"cannot read {modelfile}: {exc.strerror}") from None
    request = create_request_from_modelfile(name, text, modelfile.resolve().parent)
    body: dict[str, Any] = {"model": request.model, "from": request.from_, "stream": True}
    for key in ("template", "system", "parameters", "messages", "license"):
        value = getattr(request, key)
        if value:
            body[key] = value
    for progress in client.stream("/api/create", body):
        print(progress.get("status", ""), flush=True)
    return 0


def cmd_list(client: Client) -> int:
    from daemon.formatting import human_bytes, human_since, table

    models = client.get("/api/tags")["models"]
    rows = [
        [m["name"], m["digest"][:12], human_bytes(m["size"]), human_since(m["modified_at"])] for m in models
    ]
    print(table(["NAME", "ID", "SIZE", "MODIFIED"], rows))
    return 0


def cmd_run(client: Client, model: str, prompt: str | None) -> int:
    if prompt is None:
        if sys.stdin.isatty():
            raise CLIError("interactive chat is not available yet: pass a prompt, e.g. mlxd run MODEL 'Hi'")
        prompt = sys.stdin.read()
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": True}
    for chunk in client.stream("/api/chat", body):
        sys.stdout.write(chunk.get("message", {}).get("content", ""))
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def cmd_tiny_model(directory: Path, seed: int) -> int:
    from registry.tiny_model import write_tiny_model

    write_tiny_model(directory, seed=seed)
    print(f"wrote a tiny random model to {directory}")
    return 0


# ---------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlxd", description="Run models with MLX behind Ollama's API.")
    parser.add_argument("-v", "--version", action="version", version=f"mlxd version {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="COMMAND")
    verbs.add_parser("serve", help="start the daemon (OLLAMA_HOST, MLXD_HOME, MLXD_IPC)")
    create = verbs.add_parser("create", help="create a model from a Modelfile")
    create.add_argument("name")
    create.add_argument("-f", "--file", type=Path, default=Path("Modelfile"), help="Modelfile path")
    verbs.add_parser("list", aliases=["ls"], help="list installed models")
    run = verbs.add_parser("run", help="answer one prompt with a model")
    run.add_argument("model")
    run.add_argument("prompt", nargs="*")
    verbs.add_parser("quickstart", help="start the daemon with the embedded SmolLM2 model and say hello")
    dev = verbs.add_parser("dev", help="developer tools")
    dev_verbs = dev.add_subparsers(dest="dev_verb", metavar="TOOL", required=True)
    tiny = dev_verbs.add_parser("tiny-model", help="write a tiny random-weight model (for tests)")
    tiny.add_argument("directory", type=Path)
    tiny.add_argument("--seed", type=int, default=0)
    add_service_parser(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 0
    try:
        settings = Settings.from_env(os.environ)
        if args.verb == "serve":
            return cmd_serve(settings)
        if args.verb == "quickstart":
            from daemon.quickstart import quickstart

            return quickstart(settings)
        if args.verb == "dev":
            return cmd_tiny_model(args.directory, args.seed)
        if args.verb == "service":
            return run_service(args, settings)
        client = Client(settings.client_url)
        if args.verb == "create":
            return cmd_create(client, args.name, args.file)
        if args.verb in ("list", "ls"):
            return cmd_list(client)
        if args.verb == "run":
            return cmd_run(client, args.model, " ".join(args.prompt) if args.prompt else None)
    except CLIError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # bad settings or Modelfile
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.verb}")
    return 2


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
