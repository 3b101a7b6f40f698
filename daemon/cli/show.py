"""``mlxd show MODEL`` (Ollama's ``ShowHandler`` and ``showInfo``): the model's sections as
tables, or one raw field with ``--license``, ``--modelfile``, ``--parameters``, ``--system``
or ``--template``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from daemon.cli.client import Client, CLIError
from daemon.cli.formatting import go_float, human_number, table

FIELDS = ("license", "modelfile", "parameters", "system", "template")
ONE_FIELD = (
    "only one of '--license', '--modelfile', '--parameters', '--system', or '--template' can be specified"
)
NO_IMAGE_MODELS = "image generation models are not currently supported"
_LONG_TEXT_SECTIONS = ("Template", "System", "License")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _plain_number(value: float) -> str:
    """``strconv.FormatFloat(f, 'f', -1, 64)``."""
    return str(int(value)) if value == int(value) else repr(value)


def _metadata_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    number = _number(value)
    if number is not None:
        return go_float(number)
    if isinstance(value, list):
        shown: list[str] = []
        width = 1
        for i, item in enumerate(value):
            text = _go_v(item)
            item_width = len(text) + (2 if i else 0)
            if width + item_width > 10 and i > 0:
                break
            width += item_width
            shown.append(text)
        if len(shown) < len(value):
            return "[" + " ".join(shown) + f" ...+{len(value) - len(shown)} more]"
        return "[" + " ".join(shown) + "]"
    return type(value).__name__


def _go_v(item: Any) -> str:
    number = _number(item)
    if number is not None:
        return go_float(number)
    if isinstance(item, bool):
        return "true" if item else "false"
    return str(item)


def _head(text: str, count: int) -> list[list[str]]:
    """The first ``count`` non-empty lines, then ``...`` if there were more."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    rows = [["", line] for line in lines[:count]]
    if len(lines) > count:
        rows.append(["", "..."])
    return rows


def _projector_rows(projector: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    arch = projector.get("general.architecture")
    arch = arch if isinstance(arch, str) else ""
    if arch:
        rows.append(["", "architecture", arch])
    count = _number(projector.get("general.parameter_count"))
    if count is not None:
        rows.append(["", "parameters", human_number(int(count))])
    for suffix, label in (("embedding_length", "embedding length"), ("projection_dim", "dimensions")):
        for modality in ("vision", "audio"):
            value = _number(projector.get(f"{arch}.{modality}.{suffix}"))
            if value is not None:
                rows.append(["", label, _plain_number(value)])
                break
    return rows


def show_info(info: dict[str, Any], verbose: bool) -> str:
    """The sections of ``ollama show``: Model, Capabilities, Projector, Parameters, (Metadata, Tensors
    with ``--verbose``), System and License."""
    out: list[str] = []

    def section(title: str, rows: Callable[[], list[list[str]]]) -> None:
        out.append(f"  {title}\n")
        width = 100 if title in _LONG_TEXT_SECTIONS else 30
        out.append(table(rows(), wrap=width))
        out.append("\n")

    details = info.get("details") or {}
    model_info = info.get("model_info")

    def model_rows() -> list[list[str]]:
        rows: list[list[str]] = []
        if isinstance(model_info, dict):
            arch = model_info.get("general.architecture")
            arch = arch if isinstance(arch, str) else ""
            if arch:
                rows.append(["", "architecture", arch])
            parameters = str(details.get("parameter_size") or "")
            count = _number(model_info.get("general.parameter_count"))
            if not parameters and count is not None:
                parameters = human_number(int(count))
            if parameters:
                rows.append(["", "parameters", parameters])
            for key, label in (
                ("context_length", "context length"),
                ("embedding_length", "embedding length"),
            ):
                value = _number(model_info.get(f"{arch}.{key}"))
                if value is not None:
                    rows.append(["", label, _plain_number(value)])
        else:
            rows.append(["", "architecture", str(details.get("family") or "")])
            rows.append(["", "parameters", str(details.get("parameter_size") or "")])
        rows.append(["", "quantization", str(details.get("quantization_level") or "")])
        if info.get("requires"):
            rows.append(["", "requires", str(info["requires"])])
        return rows

    section("Model", model_rows)
    capabilities = info.get("capabilities") or []
    if capabilities:
        section("Capabilities", lambda: [["", str(c)] for c in capabilities])
    projector = info.get("projector_info")
    if isinstance(projector, dict):
        section("Projector", lambda: _projector_rows(projector))
    parameters = str(info.get("parameters") or "")
    if parameters:
        section("Parameters", lambda: [["", *line.split()] for line in parameters.splitlines() if line])
    if isinstance(model_info, dict) and verbose:
        section("Metadata", lambda: [["", k, _metadata_value(model_info[k])] for k in sorted(model_info)])
    tensors = info.get("tensors") or []
    if tensors and verbose:
        section(
            "Tensors",
            lambda: [
                [
                    "",
                    str(t.get("name", "")),
                    str(t.get("type", "")),
                    "[" + " ".join(map(str, t.get("shape", []))) + "]",
                ]
                for t in tensors
            ],
        )
    if info.get("system"):
        section("System", lambda: _head(str(info["system"]), 2))
    if info.get("license"):
        section("License", lambda: _head(str(info["license"]), 2))
    return "".join(out)


def show(client: Client, args: argparse.Namespace) -> int:
    chosen = [name for name in FIELDS if getattr(args, name)]
    if len(chosen) > 1:
        raise CLIError(ONE_FIELD)
    body: dict[str, Any] = {"model": args.model}
    if args.verbose:
        body["verbose"] = True
    info: dict[str, Any] = client.post("/api/show", body) or {}
    if "image" in (info.get("capabilities") or []):
        raise CLIError(NO_IMAGE_MODELS)
    if chosen:
        value = str(info.get(chosen[0]) or "")
        # Like Ollama: the first three end with a newline, system and template as they are.
        sys.stdout.write(value + "\n" if chosen[0] in ("license", "modelfile", "parameters") else value)
        return 0
    sys.stdout.write(show_info(info, args.verbose))
    return 0
