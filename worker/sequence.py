"""One generation request inside the worker: its prompt, sampling, and what it has produced.

A :class:`Sequence` is driven token by token, either alone (``generate_step``, the
fastest path for one request) or as one row of a batch (``worker.batching``). Per token it
does a constant amount of work: one incremental detokenizer step, a bounded stop-string
check, a bounded thinking/tool-call split, and the events written into the ring (a batch
flushes once per step, so it wakes the daemon once; a lone request flushes through
:meth:`Sequence.flush_token`, rarely when the answer is not streamed).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import mlx.core as mx
from mlx_lm.models.cache import RotatingKVCache
from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer, SPMStreamingDetokenizer, StreamingDetokenizer

from worker import protocol, sampling
from worker.constrained import FormatError, ThinkingGate
from worker.output import OutputRouter, Piece
from worker.prompt import Prompt, PromptError
from worker.protocol import DoneStats, GenerateCommand
from worker.stops import StopMatcher
from worker.transport import EventWriter

if TYPE_CHECKING:
    from worker.generation import Generator

DEFAULT_NUM_CTX = 4096
# A request that is not streamed publishes its events at most this often while it decodes
# (its end at once): the daemon only keeps them, and each flush costs it a wake-up. Often
# enough that the daemon's stall watchdog and a departed daemon are still noticed soon.
QUIET_FLUSH_SECONDS = 0.25


class SequenceError(Exception):
    """The request cannot run (bad prompt, template or format): answered with ``status``."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class Sequence:
    def __init__(
        self,
        generator: Generator,
        command: GenerateCommand,
        writer: EventWriter,
        cancelled: Callable[[], bool],
    ) -> None:
        self.id = command["id"]
        self.writer = writer
        self.cancelled = cancelled
        self.eos_ids = generator.eos_ids
        options = command.get("options", {})
        num_ctx = request_num_ctx(generator, command)
        try:
            prompt = generator.prompts.build(command, num_ctx)
            fmt = command.get("format")
            gate = _thinking_gate(generator, command, prompt)
            constraint = generator.constraints.processor(fmt, gate) if fmt else None
        except PromptError as exc:
            raise SequenceError(exc.message, exc.status) from None
        except FormatError as exc:
            raise SequenceError(str(exc), 500) from None
        self.tokens = prompt.tokens
        if not self.tokens:
            raise SequenceError("the prompt is empty", 400)
        self.max_tokens, self.rotating = _budget(generator, command, len(self.tokens), num_ctx)
        self.sampler = sampling.build_sampler(options, generator.vocab_size)
        seed = int(options.get("seed", -1))
        if seed >= 0 and self.sampler is not sampling.GREEDY:  # greedy draws nothing
            self.sampler = _seeded(self.sampler, seed)
        else:
            sampling.seed_random(options)  # fresh entropy: no earlier seed carries over
        self.processors = sampling.build_processors(options, num_ctx)
        self.constraint = constraint
        if constraint is not None:
            self.processors.append(constraint)
        self.router = _router(generator, command, prompt)
        self.stopper = StopMatcher(list(options.get("stop", [])))
        self.detokenizer = generator.tokenizer.detokenizer
        self.detokenizer.reset()
        self.return_context = bool(command.get("return_context"))
        self.logprobs = bool(command.get("logprobs"))
        self.top_logprobs = min(max(int(command.get("top_logprobs", 0)), 0), 20)
        self.token_bytes = generator.token_bytes

        self.generated: list[int] = []
        self.fed: list[int] = list(self.tokens)  # every token the KV cache may hold
        self.evaluated = len(self.tokens)  # prompt tokens not served from the prompt cache
        self.done_reason: str | None = None
        self.started_ns = time.perf_counter_ns()
        self.first_ns = 0
        self.quiet = command.get("stream", True) is False
        self._next_flush = 0.0  # with ``quiet``: the monotonic time of the next token flush

    def accept(self, token: int, logprobs: mx.array | None = None) -> bool:
        """Take one sampled token (and the step's log-probabilities over the vocabulary);
        True when the sequence has finished."""
        if not self.first_ns:
            self.first_ns = time.perf_counter_ns()
        self.fed.append(token)
        if token in self.eos_ids:
            self.done_reason = "stop"
            return True
        self.generated.append(token)
        if self.logprobs and logprobs is not None:
            # Before the token's text: the daemon attaches them to the next chunk it sends.
            self.writer.send(protocol.logprobs(self.id, [self._logprob(token, logprobs)]))
        self.detokenizer.add_token(token)
        out = self.stopper.feed(next_segment(self.detokenizer))
        if out:
            self._send(out)
        if self.stopper.stopped:
            self.done_reason = "stop"
        elif len(self.generated) >= self.max_tokens:
            self.done_reason = "length"
        elif self.cancelled():
            self.done_reason = "cancel"
        return self.done_reason is not None

    def flush_token(self) -> None:
        """Publish the events of the token just accepted: at once when the request is
        streamed, at most every ``QUIET_FLUSH_SECONDS`` when it is not (the first token's
        at once either way)."""
        if self.quiet:
            now = time.monotonic()
            if now < self._next_flush:
                return
            self._next_flush = now + QUIET_FLUSH_SECONDS
        self.writer.flush()

    def finish(self, reason: str | None = None) -> None:
        """Emit the held-back text and the done event (the driver flushes)."""
        self.done_reason = self.done_reason or reason or "length"
        finished_ns = time.perf_counter_ns()
        first = self.first_ns or finished_ns
        if not self.stopper.stopped:
            self.detokenizer.finalize()
            # Bytes of a character the end cut short decode to U+FFFD: dropped, as Ollama's
            # runner drops an incomplete UTF-8 sequence at the end of a response.
            tail = self.stopper.feed(self.detokenizer.last_segment.rstrip("\ufffd"))
            tail += "" if self.stopper.stopped else self.stopper.flush()
            if tail:
                self._send(tail)
        for piece in self.router.finish():
            self.writer.send(_event(self.id, piece))
        stats: DoneStats = {
            "done_reason": self.done_reason,
            "prompt_eval_count": self.evaluated,
            "prompt_eval_duration_ns": first - self.started_ns,
            "eval_count": len(self.generated),
            "eval_duration_ns": max(finished_ns - first, 0),
        }
        if self.return_context:
            stats["context"] = self.tokens + self.generated
        self.writer.send(protocol.done(self.id, stats))

    def _logprob(self, token: int, row: mx.array) -> protocol.Logprob:
        row = row.reshape(-1).astype(mx.float32)
        entry = self._entry(token, float(row[token].item()))  # type: ignore[arg-type]
        if self.top_logprobs:
            top = mx.argpartition(-row, kth=self.top_logprobs - 1)[: self.top_logprobs]
            ids: list[int] = top.tolist()  # type: ignore[assignment]
            values: list[float] = row[top].tolist()  # type: ignore[assignment]
            pairs = sorted(zip(values, ids, strict=True), reverse=True)
            entry["top_logprobs"] = [self._entry(i, v) for v, i in pairs]
        return entry

    def _entry(self, token: int, logprob: float) -> protocol.Logprob:
        raw = self.token_bytes(token)
        return {"token": raw.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(raw)}

    def _send(self, text: str) -> None:
        for piece in self.router.feed(text):
            self.writer.send(_event(self.id, piece))


# mlx-lm's byte-level BPE and SentencePiece detokenizers append each piece to ``text``, a
# copy of the whole output every token; only ``last_segment`` is read here, so past this
# many characters what was read is dropped. The last character stays: an empty ``text``
# tells them the output is just starting (where they drop a leading space).
TEXT_KEPT = 4096


def next_segment(detokenizer: StreamingDetokenizer) -> str:
    """The text completed since the last call (``last_segment``), keeping the detokenizer's
    ``text`` short, so that a token costs the same at the end of a long answer as at its start."""
    segment: str = detokenizer.last_segment
    # The length first: past a trim it is small again, so the type is checked once in
    # ~4,096 characters rather than on every token.
    if detokenizer.offset > TEXT_KEPT and isinstance(
        detokenizer, BPEStreamingDetokenizer | SPMStreamingDetokenizer
    ):
        detokenizer.text = detokenizer.text[-1:]
        detokenizer.offset = len(detokenizer.text)
    return segment


def request_num_ctx(generator: Generator, command: GenerateCommand) -> int:
    """The request's ``num_ctx``, within 4 and the model's context length."""
    wanted = int(command.get("options", {}).get("num_ctx") or DEFAULT_NUM_CTX)
    return min(max(wanted, 4), generator.context_length)


def fail(writer: EventWriter, request_id: int, message: str, status: int) -> None:
    writer.send(protocol.error(request_id, message, status))
    writer.flush()


def _seeded(sampler: sampling.Sampler, seed: int) -> sampling.Sampler:
    """Draw step ``n`` from a key derived from (seed, n): the same seed gives the same
    tokens whether the request runs alone or in a batch with others."""
    step = 0

    def sample(logprobs: mx.array) -> mx.array:
        nonlocal step
        mx.random.seed((seed * 1_000_003 + step) % (1 << 63))
        step += 1
        return sampler(logprobs)

    return sample


def _budget(generator: Generator, command: GenerateCommand, prompt_len: int, num_ctx: int) -> tuple[int, Any]:
    """``max_tokens`` and, when the context must shift, the rotating KV cache to use.

    ``num_predict`` -2 fills the context; -1 goes on until EOS, shifting the context
    (keeping ``num_keep`` tokens) up to 10 × ``num_ctx`` tokens, as Ollama bounds it;
    ``shift: false`` stops at the end of the context."""
    options = command.get("options", {})
    num_predict = int(options.get("num_predict", -1))
    room = max(num_ctx - prompt_len, 0)
    if num_predict == -2:
        return room, None
    wanted = 10 * num_ctx if num_predict < 0 else num_predict
    if prompt_len + wanted <= num_ctx:
        return wanted, None
    model = generator.model
    if command.get("shift", True) is False or hasattr(model, "make_cache"):
        return min(wanted, room), None
    keep = min(max(int(options.get("num_keep", 4)), 0), num_ctx - 1)
    return wanted, [RotatingKVCache(max_size=num_ctx, keep=keep) for _ in model.layers]


def _thinking_gate(generator: Generator, command: GenerateCommand, prompt: Prompt) -> ThinkingGate | None:
    """Where ``format`` must wait for the reasoning block to end (Ollama constrains only the
    answer of a thinking model): thinking on, or a prompt that ends inside the block."""
    tok = generator.tokenizer
    if not _parses_reasoning(generator, command) or not (prompt.thinking or prompt.opened_thinking):
        return None
    start, end = tuple(tok.think_start_tokens or ()), tuple(tok.think_end_tokens or ())
    return ThinkingGate(start, end, prompt.opened_thinking) if end else None


def _parses_reasoning(generator: Generator, command: GenerateCommand) -> bool:
    """The model has reasoning tags and the output is read for them (not ``raw``)."""
    return bool(generator.tokenizer.has_thinking) and not command.get("raw")


def _router(generator: Generator, command: GenerateCommand, prompt: Prompt) -> OutputRouter:
    tok = generator.tokenizer
    tools = command.get("tools") or None
    return OutputRouter(
        think_start=tok.think_start if _parses_reasoning(generator, command) else None,
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
