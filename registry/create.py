"""The create pipeline behind ``POST /api/create`` and ``mlxd create`` (reference §4.12).

``from`` may name:

* an installed model: the new tag reuses its files and settings; request fields override
  (``template``/``system`` when non-empty, ``parameters`` key by key, ``messages`` when
  non-empty) and licenses are appended, as Ollama does;
* a local MLX model directory (it must hold ``config.json``);
* a local GGUF file, converted to an MLX directory inside the store first;
* a model to pull (a catalog name or a Hugging Face id), when a ``pull`` function is given.

``files`` (``{"relative/name": "sha256:<hex>"}``, used when ``from`` is empty) names blobs
uploaded with ``POST /api/blobs`` (``registry.uploads``): the files of an MLX model directory
(``config.json`` among them), or one GGUF file.

:func:`create_model` is a generator of Ollama progress objects. Everything that can be
checked up front (the name, the parameters, the source) raises :class:`CreateError`
before the first object, so the HTTP layer can still answer with a status; later
failures raise too and become an ``{"error": …}`` line.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from registry.model_dir import config_model_info, describe_model_dir, detect_capabilities
from registry.modelfile import MESSAGE_ROLES, ParameterError, normalize_parameters, parse_modelfile
from registry.names import InvalidName, ModelName, parse_name
from registry.store import (
    InstalledModel,
    Layer,
    ModelConfig,
    Store,
    StoreError,
    blob_hex,
    iter_source_files,
    safe_relpath,
)
from registry.uploads import Uploads

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"

INVALID_MODEL_NAME = "invalid model name"
NO_SOURCE = "neither 'from' or 'files' was specified"
NOT_GGUF = "supplied file was not in GGUF format"
NOT_RELATIVE = "file path must be relative"
CAPABILITY_ORDER = ("completion", "tools", "insert", "vision", "embedding", "thinking")  # Ollama's
INVALID_DIGEST = "invalid digest format"
UNKNOWN_FILES = (
    "'files' must name the files of an MLX model directory (config.json, *.safetensors, "
    "tokenizer files) or one GGUF file"
)

_T = TypeVar("_T")
# A step of the pipeline: yields progress objects, returns its result.
_Steps = Generator[dict[str, Any], None, _T]
_Result = tuple[list[Layer], ModelConfig]

# Pulls a missing ``from`` model, yielding pull progress objects (supplied by the daemon).
PullFunction = Callable[[ModelName], Iterator[dict[str, Any]]]


@dataclass
class CreateRequest:
    model: str
    from_: str = ""
    template: str = ""
    system: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, str]] = field(default_factory=list)
    license: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # relative name → "sha256:<hex>"


class CreateError(Exception):
    """A create that cannot proceed; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass
class _Plan:
    name: ModelName
    kind: str  # "model" | "dir" | "gguf" | "pull" | "files" | "gguf-blob"
    source: Path | None = None
    files: dict[str, str] = field(default_factory=dict)
    base: InstalledModel | None = None
    base_name: ModelName | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, str]] = field(default_factory=list)
    license: list[str] = field(default_factory=list)


def create_model(
    store: Store, req: CreateRequest, *, pull: PullFunction | None = None
) -> Generator[dict[str, Any], None, None]:
    """Create ``req.model``, yielding ``{"status": …}`` progress objects, ``success`` last.

    ``pull``, when given, fetches a ``from`` model that is not installed (its progress is
    passed through); without it an unknown ``from`` is a 400."""
    plan = _plan(store, req, pull is not None)
    if plan.kind == "pull":
        assert pull is not None and plan.base_name is not None
        yield from pull(plan.base_name)
        plan.base = store.resolve(plan.base_name)
        if plan.base is None:
            raise CreateError(f'model "{plan.base_name.display()}" not found', 404)
        plan.kind = "model"
    with store.writing():
        if plan.kind == "model":
            assert plan.base is not None
            layers, config = yield from _from_model(store, plan.base, req, plan)
        elif plan.kind == "dir":
            assert plan.source is not None
            config = _new_config(req, plan, plan.source)
            layers = yield from _ingest(store, plan.source, move=False)
        elif plan.kind == "files":
            layers, config = yield from _from_files(store, req, plan)
        else:
            assert plan.source is not None
            layers, config = yield from _from_gguf(store, plan.source, req, plan)
        yield {"status": "writing manifest"}
        store.write_manifest(plan.name, layers, config)
    if plan.kind == "gguf" and plan.files:  # the uploaded GGUF was converted: not needed any more
        for digest in plan.files.values():
            Uploads(store).path(digest).unlink(missing_ok=True)
    store.gc()  # drops the files of a replaced tag
    yield {"status": "success"}


def _plan(store: Store, req: CreateRequest, can_pull: bool) -> _Plan:
    try:
        name = parse_name(req.model)
    except InvalidName:
        raise CreateError(INVALID_MODEL_NAME) from None
    try:
        parameters = normalize_parameters(req.parameters)
    except ParameterError as e:
        raise CreateError(str(e)) from None
    plan = _Plan(
        name=name,
        kind="",
        parameters=parameters,
        messages=_messages(req.messages),
        license=_licenses(req.license),
    )
    source = (req.from_ or "").strip()
    if not source and req.files:
        _plan_files(store, plan, req.files)
        return plan
    if not source:
        raise CreateError(NO_SOURCE)
    # A name never starts with "/", "." or "~": everything else is a model name.
    if not source.startswith(("/", ".", "~")):
        try:
            base_name = parse_name(source)
        except InvalidName:
            raise CreateError(INVALID_MODEL_NAME) from None
        plan.base = store.resolve(base_name)
        if plan.base is not None:
            plan.kind = "model"
        elif can_pull:
            plan.kind, plan.base_name = "pull", base_name
        else:
            raise CreateError(f'model "{source}" not found')
        return plan
    path = Path(source).expanduser().absolute()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CreateError(f'"{path}" is not an MLX model directory: it has no config.json')
        plan.kind, plan.source = "dir", path
    elif path.is_file():
        try:
            with open(path, "rb") as f:
                magic = f.read(4)
        except OSError as e:
            raise CreateError(f'cannot read "{path}": {e.strerror}') from None
        if magic != GGUF_MAGIC:
            raise CreateError(NOT_GGUF)
        plan.kind, plan.source = "gguf", path
    else:
        raise CreateError(f'no such file or directory: "{path}"')
    return plan


def _messages(messages: Any) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for m in messages or []:
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            raise CreateError("messages must be objects with a string role and content")
        role = m["role"].lower()
        if role not in (*MESSAGE_ROLES, "tool"):
            raise CreateError(f'invalid message role "{m["role"]}"')
        out.append({"role": role, "content": m["content"]})
    return out


def _licenses(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value else []
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CreateError("license must be a string or a list of strings")
    return [v for v in value if v]


def _from_model(store: Store, base: InstalledModel, req: CreateRequest, plan: _Plan) -> _Steps[_Result]:
    for layer in base.layers:
        if not store.has_blob(layer.digest):
            raise CreateError(f"model {base.display} is damaged: blob {layer.digest} is missing", 500)
        yield {"status": f"using existing layer {layer.digest}"}
    cfg = base.config
    config = dataclasses.replace(
        cfg,
        template=req.template or cfg.template,
        system=req.system or cfg.system,
        parameters={**cfg.parameters, **plan.parameters},
        messages=plan.messages or list(cfg.messages),
        license=[*cfg.license, *plan.license],
        parent_model=base.display,
    )
    return list(base.layers), config


def _ingest(store: Store, source: Path, *, move: bool) -> _Steps[list[Layer]]:
    files = iter_source_files(source)
    if not files:
        raise CreateError(f'no files to add in "{source}"')
    layers: list[Layer] = []
    for rel, path in files:
        try:
            digest, size, existed = store.add_blob(path, move=move)
        except (OSError, StoreError) as e:
            raise CreateError(f"cannot add {rel}: {e}", 500) from e
        verb = "using existing" if existed else "creating new"
        yield {"status": f"{verb} layer {digest}"}
        layers.append(Layer(digest=digest, size=size, filename=rel))
    return layers


def _from_gguf(store: Store, gguf: Path, req: CreateRequest, plan: _Plan) -> _Steps[_Result]:
    yield {"status": "parsing GGUF"}
    with store.temp_dir() as work:
        out = work / "model"
        yield {"status": "converting model"}
        yield from _convert(gguf, out)
        config = _new_config(req, plan, out)
        layers = yield from _ingest(store, out, move=True)
    return layers, config


def _plan_files(store: Store, plan: _Plan, files: dict[str, str]) -> None:
    """Check ``files`` up front: safe relative names, well-formed digests of blobs that were
    uploaded, and a recognizable model (an MLX directory or one GGUF file)."""
    uploads = Uploads(store)
    for name, digest in files.items():
        try:
            safe_relpath(name)  # also refuses absolute paths ("/x" has an empty component)
        except StoreError:
            raise CreateError(NOT_RELATIVE) from None
        try:
            blob_hex(digest if isinstance(digest, str) else "")
        except ValueError:
            raise CreateError(INVALID_DIGEST) from None
        if not uploads.exists(digest):
            raise CreateError(f'blob "{digest}" not found: upload it first with POST /api/blobs/{digest}')
    plan.files = dict(files)
    if "config.json" in files:
        plan.kind = "files"
        return
    if len(files) == 1:
        path = uploads.locate(next(iter(files.values())))
        assert path is not None
        with open(path, "rb") as f:
            if f.read(4) == GGUF_MAGIC:
                plan.kind, plan.source = "gguf", path
                return
    raise CreateError(UNKNOWN_FILES)


def _from_files(store: Store, req: CreateRequest, plan: _Plan) -> _Steps[_Result]:
    """An MLX model directory from uploaded blobs: they become its layers as they are."""
    uploads = Uploads(store)
    layers: list[Layer] = []
    for name, digest in sorted(plan.files.items()):
        try:
            found, size, existed = uploads.claim(digest)
        except (OSError, StoreError) as e:
            raise CreateError(f"cannot add {name}: {e}", 500) from e
        verb = "using existing" if existed else "creating new"
        yield {"status": f"{verb} layer {found}"}
        layers.append(Layer(digest=found, size=size, filename=name))
    with store.temp_dir() as work:
        view = work / "model"
        for layer in layers:
            link = view / safe_relpath(layer.filename)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(store.blob_path(layer.digest))
        config = _new_config(req, plan, view)
    return layers, config


def _convert(gguf: Path, out: Path) -> Iterator[dict[str, Any]]:
    """Run ``convert_gguf`` on a thread and pass its progress messages on as they come."""
    from registry.gguf_import import convert_gguf

    messages: queue.Queue[str | None] = queue.Queue()
    failure: list[BaseException] = []

    def work() -> None:
        try:
            convert_gguf(gguf, out, messages.put)
        except BaseException as e:
            failure.append(e)
        finally:
            messages.put(None)

    thread = threading.Thread(target=work, name="gguf-convert", daemon=True)
    thread.start()
    try:
        seen = {"parsing GGUF", "converting model"}
        while (message := messages.get()) is not None:
            if message not in seen:  # the pipeline already reported these
                yield {"status": message}
    finally:
        thread.join()  # the work dir is removed after this; let the writer finish first
    if failure:
        e = failure[0]
        status = 400 if isinstance(e, ValueError) else 500
        raise CreateError(f"converting {gguf.name}: {e}", status) from e


def _describe(path: Path) -> dict[str, Any]:
    try:
        return describe_model_dir(path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CreateError(f"cannot read the model in {path.name}: {e}") from e


def _new_config(req: CreateRequest, plan: _Plan, path: Path) -> ModelConfig:
    return config_from_dir(
        path,
        template=req.template,
        system=req.system,
        parameters=plan.parameters,
        messages=plan.messages,
        license=plan.license,
    )


def config_from_dir(
    path: Path,
    *,
    template: str = "",
    system: str = "",
    parameters: dict[str, Any] | None = None,
    messages: list[dict[str, str]] | None = None,
    license: list[str] | None = None,
    extra_capabilities: tuple[str, ...] = (),
) -> ModelConfig:
    """The config of a new model whose files are in ``path``: the given Modelfile settings,
    and what the files say (details, capabilities, ``model_info``)."""
    details = _describe(path)
    family = str(details.get("family") or "")
    found = {*detect_capabilities(path), *extra_capabilities}
    capabilities = [name for name in CAPABILITY_ORDER if name in found]
    return ModelConfig(
        template=template,
        system=system,
        parameters=dict(parameters or {}),
        messages=list(messages or []),
        license=list(license or []),
        format="mlx",
        family=family,
        families=[family] if family else None,
        parameter_size=str(details.get("parameter_size") or ""),
        quantization_level=str(details.get("quantization_level") or ""),
        context_length=int(details.get("context_length") or 0),
        embedding_length=int(details.get("embedding_length") or 0),
        capabilities=capabilities,
        model_info=config_model_info(path, details),
    )


def create_request_from_modelfile(name: str, text: str, base_dir: Path) -> CreateRequest:
    """A :class:`CreateRequest` for ``ollama create -f``-style use: a ``FROM`` that names an
    existing path (``~`` expanded, relative paths against ``base_dir``) becomes that absolute
    path; anything else is kept as a model name. Raises ``ModelfileError``."""
    mf = parse_modelfile(text)
    for warning in mf.warnings:
        log.warning("Modelfile: %s", warning)
    source = mf.from_
    candidate = Path(os.path.expanduser(source))
    if not candidate.is_absolute():
        candidate = Path(base_dir) / candidate
    if source.startswith(("/", ".", "~")) or candidate.exists():
        source = str(candidate.absolute())
    return CreateRequest(
        model=name,
        from_=source,
        template=mf.template,
        system=mf.system,
        parameters=mf.parameters,
        messages=mf.messages,
        license=mf.license,
    )
