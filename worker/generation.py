"""The MLX side of a worker: load a model, warm it up, and run generations.

Everything here runs on one dedicated thread: MLX streams are thread-local, so the
model is loaded and used on the same thread. Per token the loop does a constant amount
of work: one incremental detokenizer step, a bounded stop-string check, a bounded
thinking/tool-call split, one frame written into the event ring and one flush. Prompt
building (``worker.prompt``), sampling (``worker.sampling``), ``format`` constraints
(``worker.constrained``) and the output split (``worker.output``) live in their own modules.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_lm import load as load_model
from mlx_lm.generate import generate_step
from mlx_lm.models.cache import RotatingKVCache

from worker import protocol, sampling
from worker.constrained import Constraints, FormatError
from worker.output import OutputRouter, Piece
from worker.prompt import Prompt, PromptBuilder, PromptError
from worker.protocol import DoneStats, GenerateCommand, ModelInfo
from worker.stops import StopMatcher
from worker.transport import EventWriter

DEFAULT_NUM_CTX = 4096


class Generator:
    """A loaded model and its tokenizer, generating one request at a time."""

    def __init__(self, model_dir: Path) -> None:
        started = time.perf_counter()
        loaded: tuple[Any, Any] = load_model(str(model_dir))  # type: ignore[assignment]
        self.model, self.tokenizer = loaded
        self.eos_ids = set(self.tokenizer.eos_token_ids)
        self._warm_up()
        self.load_seconds = time.perf_counter() - started
        self.context_length = _context_length(self.model)
        self.vocab_size = _vocab_size(self.model, self.tokenizer)
        self.prompts = PromptBuilder(self.tokenizer)
        self.constraints = Constraints(self.tokenizer, self.vocab_size, sorted(self.eos_ids))

    def info(self) -> ModelInfo:
        params: list[tuple[str, Any]] = tree_flatten(self.model.parameters())  # type: ignore[assignment]
        weights = sum(v.nbytes for _, v in params)
        return {
            "load_seconds": self.load_seconds,
            "context_length": self.context_length,
            "vocab_size": len(self.tokenizer.get_vocab()),
            "eos_token_ids": sorted(self.eos_ids),
            "memory_bytes": int(weights),
            "device": str(mx.default_device()),
        }

    def _warm_up(self) -> None:
        # One short generation compiles the kernels the first real request would otherwise
        # pay for (on a GPU the first decode after load runs at about half speed).
        prompt = mx.array(self.tokenizer.encode("Hello")[:4] or [0])
        for _ in generate_step(prompt, self.model, max_tokens=2):
            pass

    def run(
        self,
        command: GenerateCommand,
        writer: EventWriter,
        cancelled: Callable[[], bool],
    ) -> None:
        """Generate for one command, streaming text events and ending with a done event."""
        request_id = command["id"]
        options = command.get("options", {})
        num_ctx = min(max(int(options.get("num_ctx") or DEFAULT_NUM_CTX), 4), self.context_length)
        try:
            prompt = self.prompts.build(command, num_ctx)
            constraint = self.constraints.processor(command["format"]) if command.get("format") else None
        except PromptError as exc:
            self._fail(writer, request_id, exc.message, exc.status)
            return
        except FormatError as exc:
            self._fail(writer, request_id, str(exc), 500)
            return
        tokens = prompt.tokens
        if not tokens:
            self._fail(writer, request_id, "the prompt is empty", 400)
            return
        max_tokens, cache = self._budget(command, len(tokens), num_ctx)
        sampling.seed_random(options)
        processors = sampling.build_processors(options, num_ctx)
        if constraint is not None:
            processors.append(constraint)
        steps = generate_step(
            mx.array(tokens),
            self.model,
            max_tokens=max_tokens,
            sampler=sampling.build_sampler(options, self.vocab_size),
            logits_processors=processors or None,
            prompt_cache=cache,
        )
        router = self._router(command, prompt)
        stopper = StopMatcher(list(options.get("stop", [])))
        detokenizer = self.tokenizer.detokenizer
        detokenizer.reset()

        def send(text: str) -> None:
            for piece in router.feed(text):
                writer.send(_event(request_id, piece))

        generated: list[int] = []
        done_reason = "length"
        started = time.perf_counter_ns()
        first_at = started
        if max_tokens > 0:
            for step, _ in steps:
                token = int(step)
                if not generated:
                    first_at = time.perf_counter_ns()
                if token in self.eos_ids:
                    done_reason = "stop"
                    break
                generated.append(token)
                detokenizer.add_token(token)
                out = stopper.feed(detokenizer.last_segment)
                if out:
                    send(out)
                writer.flush()
                if stopper.stopped:
                    done_reason = "stop"
                    break
                if cancelled():
                    done_reason = "cancel"
                    break
        finished = time.perf_counter_ns()
        if not stopper.stopped:
            detokenizer.finalize()
            tail = stopper.feed(detokenizer.last_segment)
            tail += "" if stopper.stopped else stopper.flush()
            if tail:
                send(tail)
        for piece in router.finish():
            writer.send(_event(request_id, piece))
        stats: DoneStats = {
            "done_reason": done_reason,
            "prompt_eval_count": len(tokens),
            "prompt_eval_duration_ns": first_at - started,
            "eval_count": len(generated),
            "eval_duration_ns": max(finished - first_at, 0),
        }
        if command.get("return_context"):
            stats["context"] = tokens + generated
        writer.send(protocol.done(request_id, stats))
        writer.flush()

    def _fail(self, writer: EventWriter, request_id: int, message: str, status: int) -> None:
        writer.send(protocol.error(request_id, message, status))
        writer.flush()

    def _budget(self, command: GenerateCommand, prompt_len: int, num_ctx: int) -> tuple[int, Any]:
        """``max_tokens`` and the KV cache. ``num_predict`` -2 fills the context; -1 goes on
        until EOS, shifting the context (keeping ``num_keep`` tokens) up to 10 × ``num_ctx``
        tokens, as Ollama bounds it; ``shift: false`` stops at the end of the context."""
        options = command.get("options", {})
        num_predict = int(options.get("num_predict", -1))
        room = max(num_ctx - prompt_len, 0)
        if num_predict == -2:
            return room, None
        wanted = 10 * num_ctx if num_predict < 0 else num_predict
        if prompt_len + wanted <= num_ctx:
            return wanted, None
        if command.get("shift", True) is False or hasattr(self.model, "make_cache"):
            return min(wanted, room), None
        keep = min(max(int(options.get("num_keep", 4)), 0), num_ctx - 1)
        return wanted, [RotatingKVCache(max_size=num_ctx, keep=keep) for _ in self.model.layers]

    def _router(self, command: GenerateCommand, prompt: Prompt) -> OutputRouter:
        tok = self.tokenizer
        tools = command.get("tools") or None
        return OutputRouter(
            think_start=tok.think_start if tok.has_thinking and not command.get("raw") else None,
            think_end=tok.think_end,
            keep_thinking=prompt.thinking,
            opened_thinking=prompt.opened_thinking,
            tool_start=tok.tool_call_start if tools else None,
            tool_end=tok.tool_call_end,
            tool_parser=tok.tool_parser,
            tools=tools,
        )


def _event(request_id: int, piece: Piece) -> bytes:
    if piece.kind == "content":
        return protocol.text(request_id, piece.text)
    if piece.kind == "thinking":
        return protocol.thinking(request_id, piece.text)
    return protocol.tool_calls(request_id, piece.calls)


def _context_length(model: Any) -> int:
    args = getattr(model, "args", None)
    for key in ("max_position_embeddings", "max_seq_len", "context_length"):
        value = getattr(args, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_NUM_CTX


def _vocab_size(model: Any, tokenizer: Any) -> int:
    """The width of the model's logits (may exceed the tokenizer's vocabulary: padding)."""
    value = getattr(getattr(model, "args", None), "vocab_size", None)
    return value if isinstance(value, int) and value > 0 else len(tokenizer)
