"""An OpenAPI 3.0 description of the HTTP API: the native Ollama routes and the OpenAI ones.

It states what a well-formed request looks like and what comes back; the full rules (and
Ollama's exact error strings) are the routes' own. ``python -m daemon.openapi`` prints it.
Request schemas allow unknown fields, as the routes do. Errors are ``{"error": ...}``: a
string on the native routes, an object on ``/v1``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

Schema = dict[str, Any]

NATIVE_ERROR: Schema = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
}
OPENAI_ERROR: Schema = {"type": "object", "required": ["error"], "properties": {"error": {"type": "object"}}}
OBJECT: Schema = {"type": "object"}


def string(**extra: Any) -> Schema:
    return {"type": "string", **extra}


def integer(**extra: Any) -> Schema:
    return {"type": "integer", **extra}


def array(items: Schema, **extra: Any) -> Schema:
    return {"type": "array", "items": items, **extra}


def obj(properties: dict[str, Schema], required: tuple[str, ...] = ()) -> Schema:
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


OPTIONS = obj(
    {
        "num_predict": integer(),
        "num_ctx": integer(minimum=0),
        "temperature": {"type": "number"},
        "top_k": integer(),
        "top_p": {"type": "number"},
        "min_p": {"type": "number"},
        "seed": integer(),
        "stop": array(string()),
        "repeat_penalty": {"type": "number"},
        "repeat_last_n": integer(),
        "num_keep": integer(),
    }
)
KEEP_ALIVE: Schema = {"oneOf": [string(), {"type": "number"}]}
MESSAGE = obj(
    {
        "role": string(enum=["system", "user", "assistant", "tool"]),
        "content": string(),
        "thinking": string(),
        "images": array(string()),
        "tool_calls": array(OBJECT),
        "tool_name": string(),
    },
    ("role",),
)
INFERENCE: dict[str, Schema] = {
    "model": string(),
    "stream": {"type": "boolean"},
    "format": {"oneOf": [string(enum=["", "json"]), OBJECT]},
    "options": OPTIONS,
    "keep_alive": KEEP_ALIVE,
    "think": {"oneOf": [{"type": "boolean"}, string(enum=["low", "medium", "high"])]},
    "truncate": {"type": "boolean"},
    "shift": {"type": "boolean"},
    "logprobs": {"type": "boolean"},
    "top_logprobs": integer(minimum=0, maximum=20),
    "_debug_render_only": {"type": "boolean"},
}
GENERATE = obj(
    {
        **INFERENCE,
        "prompt": string(),
        "suffix": string(),
        "system": string(),
        "template": string(),
        "context": array(integer(minimum=0)),
        "raw": {"type": "boolean"},
        "images": array(string()),
    },
    ("model",),
)
CHAT = obj({**INFERENCE, "messages": array(MESSAGE), "tools": array(OBJECT)}, ("model",))
EMBED = obj(
    {
        "model": string(),
        "input": {"oneOf": [string(), array(string())]},
        "truncate": {"type": "boolean"},
        "dimensions": integer(minimum=0),
        "options": OPTIONS,
        "keep_alive": KEEP_ALIVE,
    },
    ("model",),
)
LEGACY_EMBED = obj(
    {"model": string(), "prompt": string(), "options": OPTIONS, "keep_alive": KEEP_ALIVE}, ("model",)
)
NAMED = obj({"model": string(), "verbose": {"type": "boolean"}}, ("model",))
CREATE = obj(
    {
        "model": string(),
        "from": string(),
        "files": {"type": "object", "additionalProperties": string()},
        "system": string(),
        "template": string(),
        "parameters": OBJECT,
        "license": {"oneOf": [string(), array(string())]},
        "messages": array(MESSAGE),
        "stream": {"type": "boolean"},
    },
    ("model",),
)
PULL = obj({"model": string(), "insecure": {"type": "boolean"}, "stream": {"type": "boolean"}}, ("model",))
COPY = obj({"source": string(), "destination": string()}, ("source", "destination"))
OPENAI_CHAT = obj(
    {
        "model": string(),
        "messages": array(
            obj({"role": string(), "content": {"oneOf": [string(), array(OBJECT)]}}, ("role",))
        ),
        "stream": {"type": "boolean"},
        "max_tokens": integer(minimum=1),
        "temperature": {"type": "number"},
        "top_p": {"type": "number"},
        "seed": integer(),
        "stop": {"oneOf": [string(), array(string())]},
    },
    ("model", "messages"),
)
OPENAI_COMPLETION = obj(
    {
        "model": string(),
        "prompt": string(),
        "stream": {"type": "boolean"},
        "max_tokens": integer(minimum=1),
        "temperature": {"type": "number"},
        "seed": integer(),
    },
    ("model", "prompt"),
)
OPENAI_EMBEDDING = obj(
    {"model": string(), "input": {"oneOf": [string(), array(string())]}, "dimensions": integer(minimum=1)},
    ("model", "input"),
)


def _body(schema: Schema) -> Schema:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _responses(
    ok: Schema | None, *, stream: bool = False, openai: bool = False, ok_status: str = "200"
) -> Schema:
    error = {"content": {"application/json": {"schema": OPENAI_ERROR if openai else NATIVE_ERROR}}}
    content: Schema = {}
    if ok is not None:
        content["application/json"] = {"schema": ok}
    if stream:
        content["text/event-stream" if openai else "application/x-ndjson"] = {"schema": string()}
    success: Schema = {"description": "success"}
    if content:
        success["content"] = content
    return {ok_status: success, "4XX": {"description": "a refused request", **error}}


def _operation(operation_id: str, summary: str, body: Schema | None, responses: Schema) -> Schema:
    operation: Schema = {"operationId": operation_id, "summary": summary, "responses": responses}
    if body is not None:
        operation["requestBody"] = _body(body)
    return operation


def document(server_url: str = "http://127.0.0.1:11434") -> Schema:
    """The OpenAPI document, with ``server_url`` as its one server."""
    digest = {
        "name": "digest",
        "in": "path",
        "required": True,
        "schema": string(pattern="^sha256:[0-9a-f]{64}$"),
    }
    paths: Schema = {
        "/api/version": {"get": _operation("version", "The server's version", None, _responses(OBJECT))},
        "/api/tags": {"get": _operation("tags", "Installed models", None, _responses(OBJECT))},
        "/api/ps": {"get": _operation("ps", "Loaded models", None, _responses(OBJECT))},
        "/api/status": {"get": _operation("status", "Cloud features (off here)", None, _responses(OBJECT))},
        "/api/show": {"post": _operation("show", "A model's details", NAMED, _responses(OBJECT))},
        "/api/generate": {
            "post": _operation("generate", "Complete a prompt", GENERATE, _responses(OBJECT, stream=True))
        },
        "/api/chat": {
            "post": _operation("chat", "Answer a conversation", CHAT, _responses(OBJECT, stream=True))
        },
        "/api/embed": {"post": _operation("embed", "Sentence vectors", EMBED, _responses(OBJECT))},
        "/api/embeddings": {
            "post": _operation("embeddings", "One vector (legacy)", LEGACY_EMBED, _responses(OBJECT))
        },
        "/api/create": {
            "post": _operation("create", "Create a model", CREATE, _responses(OBJECT, stream=True))
        },
        "/api/pull": {"post": _operation("pull", "Download a model", PULL, _responses(OBJECT, stream=True))},
        "/api/push": {
            "post": _operation(
                "push",
                "Not supported: there is no registry to push to",
                PULL,
                {"501": {"description": "always", "content": {"application/json": {"schema": NATIVE_ERROR}}}},
            )
        },
        "/api/copy": {"post": _operation("copy", "Copy a model", COPY, _responses(None))},
        "/api/delete": {"delete": _operation("delete", "Delete a model", NAMED, _responses(None))},
        "/api/blobs/{digest}": {
            "parameters": [digest],
            "head": _operation("blob_exists", "Whether a blob is present", None, _responses(None)),
            "post": {
                "operationId": "blob_upload",
                "summary": "Upload a blob",
                "requestBody": {
                    "required": True,
                    "content": {"application/octet-stream": {"schema": string(format="binary")}},
                },
                "responses": _responses(None, ok_status="201"),
            },
        },
        "/v1/chat/completions": {
            "post": _operation(
                "openai_chat",
                "OpenAI chat completions",
                OPENAI_CHAT,
                _responses(OBJECT, stream=True, openai=True),
            )
        },
        "/v1/completions": {
            "post": _operation(
                "openai_completions",
                "OpenAI completions",
                OPENAI_COMPLETION,
                _responses(OBJECT, stream=True, openai=True),
            )
        },
        "/v1/embeddings": {
            "post": _operation(
                "openai_embeddings", "OpenAI embeddings", OPENAI_EMBEDDING, _responses(OBJECT, openai=True)
            )
        },
        "/v1/models": {"get": _operation("openai_models", "OpenAI model list", None, _responses(OBJECT))},
        "/v1/models/{model}": {
            "parameters": [{"name": "model", "in": "path", "required": True, "schema": string()}],
            "get": _operation("openai_model", "One OpenAI model", None, _responses(OBJECT, openai=True)),
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "mlxd", "version": "0.1.0", "description": "Ollama's API, served with MLX"},
        "servers": [{"url": server_url}],
        "paths": paths,
    }


if __name__ == "__main__":
    json.dump(document(*sys.argv[1:2]), sys.stdout, indent=2)
    sys.stdout.write("\n")
