"""``POST /api/generate`` (reference §4.6), in Ollama's handler order."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response

from daemon.engine import GenerationRequest
from daemon.errors import ApiError
from daemon.routes.inference import (
    Call,
    Shape,
    check_capabilities,
    check_format,
    check_images,
    check_template,
    load,
    load_answer,
    merged_options,
    run,
    start_call,
    think_value,
    unload_answer,
    unsupported,
)
from daemon.schemas import GenerateBody
from worker.protocol import ChatMessage, SamplingOptions

RAW_CONFLICT = "raw mode does not support template, system, or context"


async def generate(request: Request) -> Response:
    started = time.perf_counter_ns()
    body = await GenerateBody.read(request)
    call = await start_call(request, body, started, ApiError(f"model '{body.model}' not found", 404))
    shape = Shape(body.model, chat=False, with_context=not body.raw)

    if body.prompt == "" and body.keep_alive == 0:
        return await unload_answer(call, shape)
    if body.raw and (body.template or body.system or body.context):
        raise ApiError(RAW_CONFLICT)
    found = check_capabilities(call, "generate")
    if body.suffix and "insert" not in found:
        raise unsupported(call, "insert")
    template = body.template or call.model.config.template
    check_template(template)
    check_images(body.images)

    options = merged_options(call)
    load_ns = await load(call)
    if body.prompt == "":
        return load_answer(shape)
    check_format(body.format)
    generation = build_request(call, body, options.sampling())
    generation.think = think_value(call, found)
    return await run(call, shape, generation, load_ns)


def build_request(call: Call, body: GenerateBody, options: SamplingOptions) -> GenerationRequest:
    """Raw: the prompt as is. Otherwise the messages Ollama renders: the system prompt (the
    request's, else the model's), the Modelfile MESSAGEs unless ``context`` continues an
    earlier exchange, then the prompt as the user turn; with a ``suffix``, a
    fill-in-the-middle prompt. The request's ``template`` replaces the model's."""
    if body.raw:
        request = GenerationRequest(prompt=body.prompt, raw=True, options=options)
    else:
        request = _templated(call, body, options)
    request.format = body.format or None
    request.truncate, request.shift = body.truncate, body.shift
    request.logprobs, request.top_logprobs = body.logprobs, body.top_logprobs
    request.render_only = body.debug_render_only
    return request


def _templated(call: Call, body: GenerateBody, options: SamplingOptions) -> GenerationRequest:
    config = call.model.config
    messages: list[ChatMessage] = []
    system = body.system or config.system
    if system:
        messages.append(ChatMessage(role="system", content=system))
    if not body.context:
        messages.extend(
            ChatMessage(role=m.get("role", ""), content=m.get("content", "")) for m in config.messages
        )
    messages.append(ChatMessage(role="user", content=body.prompt))
    return GenerationRequest(
        messages=messages,
        prompt=body.prompt,
        suffix=body.suffix,
        template=body.template or config.template,
        context=body.context,
        options=options,
        return_context=True,
    )
