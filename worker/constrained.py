"""``format``: output constrained token by token to JSON or to a JSON Schema.

Library: llguidance (MIT, maintained by the guidance project; a structured-output backend
of vLLM, SGLang and llama.cpp). Of the three candidates:

* llguidance computes the token mask on the CPU in Rust with no tensor library, so it works
  the same on MLX's CPU, CUDA and Metal backends; a schema is ready in 1–3 ms (no ahead-of-
  time compilation), JSON Schema coverage is broad (``$ref``, ``anyOf``, bounds, ``pattern``,
  ``additionalProperties``), and it reads the Hugging Face tokenizer mlx-lm already loaded.
  Measured here (``python -m bench.constrained``, this machine's CPU, results in
  ``bench/results/constrained-cpu.json``): mask + consume ~0.03 ms per token (p50; the
  mean, 0.2 ms, is dominated by the first token) on the tiny model's 949-token vocabulary
  and on SmolLM2's 49,152, ~0.05 ms with the conversion to an MLX mask; the tokenizer
  conversion costs ~1 s once per model on SmolLM2.
* outlines-core (Apache-2.0) compiles each schema into an automaton over the vocabulary
  before the first token: 17 ms on the tiny vocabulary, 560 ms on SmolLM2's for the same
  schema, paid per distinct schema; its guide hands out allowed-token lists (no bitmask,
  no MLX integration), 0.86 ms per token on average on SmolLM2.
* xgrammar (Apache-2.0) imports PyTorch (and lists triton) at import time, which an MLX
  server does not otherwise need; it could not be measured without installing PyTorch.

Each request gets its own matcher (no shared mutable state: concurrent requests cannot
interfere); the tokenizer conversion (~1 s on a large vocabulary) is done once per model.
The mask is applied as an mlx-lm logits processor, so it composes with the penalties and
the sampler. JSON is compact (no free whitespace): models in JSON mode otherwise tend to
fill the budget with newlines. Schema keywords llguidance cannot enforce are ignored
(its ``lenient`` mode), as Ollama's schema-to-grammar conversion ignores them; a schema
that is invalid is still an error.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np
import orjson
from llguidance.numpy import fill_next_token_bitmask

FORMAT_ERROR = 'invalid format: {raw}; expected "json" or a valid JSON Schema object'
_GRAMMAR_OPTIONS: Any = {"whitespace_flexible": False, "lenient": True}


class FormatError(ValueError):
    """The schema cannot be turned into a grammar."""


def schema_for(fmt: Any) -> dict[str, Any]:
    """``"json"`` is any JSON object; a dict is a JSON Schema."""
    if fmt == "json":
        return {"type": "object"}
    if isinstance(fmt, dict):
        return fmt
    raise FormatError(FORMAT_ERROR.format(raw=orjson.dumps(orjson.dumps(fmt).decode()).decode()))


class Constraints:
    """The per-model part: llguidance's view of the tokenizer, built on first use."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: list[int]) -> None:
        self._tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_ids = eos_ids
        self._ll_tokenizer: Any = None
        self._lock = threading.Lock()

    def ll_tokenizer(self) -> Any:
        with self._lock:
            if self._ll_tokenizer is None:
                import llguidance.hf

                hf = getattr(self._tokenizer, "_tokenizer", self._tokenizer)
                self._ll_tokenizer = llguidance.hf.from_tokenizer(
                    hf, n_vocab=self.vocab_size, eos_token=self.eos_ids
                )
            return self._ll_tokenizer

    def processor(self, fmt: Any, thinking: ThinkingGate | None = None) -> JsonConstraint:
        """A fresh logits processor for one request; raise :class:`FormatError`. With a
        ``thinking`` gate the schema applies once the model's reasoning block has ended."""
        import llguidance

        schema = schema_for(fmt)
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=_GRAMMAR_OPTIONS)
        except (ValueError, TypeError) as exc:
            raise FormatError(f"invalid JSON schema in format: {exc}") from None
        problem = llguidance.LLMatcher.validate_grammar(grammar, self.ll_tokenizer())
        if problem:
            raise FormatError(f"invalid JSON schema in format: {problem}")
        matcher = llguidance.LLMatcher(self.ll_tokenizer(), grammar)
        return JsonConstraint(matcher, self.vocab_size, thinking)


@dataclass(frozen=True)
class ThinkingGate:
    """A request to a reasoning model with thinking on: its output may start with a reasoning
    block (``start`` … ``end`` token ids), or the prompt already opened one (``opened``)."""

    start: tuple[int, ...]
    end: tuple[int, ...]
    opened: bool = False


class JsonConstraint:
    """An mlx-lm logits processor: ``(tokens, logits) -> logits`` with the disallowed tokens at
    ``-inf``. mlx-lm calls it once per step, in order; from the second call on, the last of
    ``tokens`` is the token sampled since the previous call.

    With a :class:`ThinkingGate` the schema applies after the reasoning block, as Ollama runs
    it (thinking first, then the constrained answer): the first token may be the block's
    opening tag as well as the start of the JSON; inside the block nothing is constrained;
    the JSON starts right after the closing tag."""

    def __init__(self, matcher: Any, vocab_size: int, thinking: ThinkingGate | None = None) -> None:
        self.matcher = matcher
        self.vocab_size = vocab_size
        self.words = (vocab_size + 31) // 32
        self._mask = np.zeros((1, self.words), dtype=np.int32)
        self._calls = 0
        self._replay = False
        self._gate = thinking
        self._recent: list[int] = []  # the last tokens of the reasoning block, to spot its end
        # "json": the grammar applies; "maybe": the first token may open a reasoning block;
        # "thinking": unconstrained until the block's end tag.
        self._state = "json"
        if thinking is not None and thinking.end:
            if thinking.opened:
                self._state = "thinking"
            elif len(thinking.start) == 1:
                self._state = "maybe"

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        advance = self._calls > 0 and not self._replay  # a new token since the last call
        self._calls += 1
        self._replay = False
        last = int(tokens[-1].item()) if advance else None  # type: ignore[arg-type]
        if self._state == "maybe":
            assert self._gate is not None
            if last is None:
                return self._masked(logits, extra=self._gate.start[0])
            if last == self._gate.start[0]:
                self._state = "thinking"
                return logits
            self._state = "json"
        elif self._state == "thinking":
            assert self._gate is not None
            if last is not None:
                self._recent = [*self._recent, last][-len(self._gate.end) :]
                if tuple(self._recent) == self._gate.end:
                    self._state = "json"
                    return self._masked(logits)  # the JSON starts with the next token
            return logits
        if last is not None:
            self.matcher.consume_token(last)
        return self._masked(logits)

    def replay_next(self) -> None:
        """The next call repeats a step whose token this processor already consumed (a
        request moving from ``generate_step``, which runs one step ahead, into a batch)."""
        self._replay = True

    def _masked(self, logits: mx.array, extra: int | None = None) -> mx.array:
        allowed = self.allowed(extra)
        return mx.where(allowed, logits, mx.array(-float("inf"), logits.dtype))

    def allowed(self, extra: int | None = None) -> mx.array:
        """The current mask as booleans over the logits' vocabulary (plus ``extra``)."""
        fill_next_token_bitmask(self.matcher, self._mask, 0)
        bits = np.unpackbits(self._mask.view(np.uint8), bitorder="little")[: self.vocab_size]
        if extra is not None and 0 <= extra < self.vocab_size:
            bits[extra] = 1
        return mx.array(bits.astype(np.bool_))

    @property
    def error(self) -> str:
        return str(self.matcher.get_error()) if self.matcher.is_error() else ""
