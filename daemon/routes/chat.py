"""``POST /api/chat`` (reference §4.7), in Ollama's handler order."""

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
from daemon.schemas import ChatBody
from worker.protocol import ChatMessage, SamplingOptions


async def chat(request: Request) -> Response:
    started = time.perf_counter_ns()
    body = await ChatBody.read(request)
    call = await start_call(request, body, started, ApiError("model is required"))
    shape = Shape(body.model, chat=True)

    if not body.messages and body.keep_alive == 0:
        return await unload_answer(call, shape)
    found = check_capabilities(call, "chat")
    if body.tools and "tools" not in found:
        raise unsupported(call, "tools")
    check_template(call.model.config.template)
    check_images([image for message in body.messages for image in message.images])

    options = merged_options(call)
    load_ns = await load(call)
    if not body.messages:
        return load_answer(shape)
    check_format(body.format)
    generation = build_request(call, body, options.sampling())
    generation.think = think_value(call, found)
    return await run(call, shape, generation, load_ns)


def build_request(call: Call, body: ChatBody, options: SamplingOptions) -> GenerationRequest:
    """The Modelfile MESSAGEs, then the request's; the model's SYSTEM goes first unless the
    conversation starts with its own system message."""
    config = call.model.config
    messages = [ChatMessage(role=m.get("role", ""), content=m.get("content", "")) for m in config.messages]
    messages.extend(message.chat() for message in body.messages)
    if body.messages[0].role != "system" and config.system:
        messages.insert(0, ChatMessage(role="system", content=config.system))
    return GenerationRequest(
        messages=messages,
        template=config.template,
        tools=[tool for tool in body.tools if isinstance(tool, dict)],
        format=body.format or None,
        options=options,
        truncate=body.truncate,
        shift=body.shift,
        logprobs=body.logprobs,
        top_logprobs=body.top_logprobs,
        render_only=body.debug_render_only,
    )
