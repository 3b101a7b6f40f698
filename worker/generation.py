"""The MLX side of a worker: load a model, warm it up, and run generations.

Everything here runs on one dedicated thread: MLX streams are thread-local, so the
model is loaded and used on the same thread. Per token the loop does a constant amount
of work: one incremental detokenizer step, a bounded stop-string check, one frame
written into the event ring and one flush.
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
from mlx_lm.sample_utils import make_sampler

from worker import protocol
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

    def prompt_tokens(self, command: GenerateCommand) -> list[int]:
        if command.get("raw"):
            tokens: list[int] = list(self.tokenizer.encode(command.get("prompt", "")))
        else:
            tokens = list(
                self.tokenizer.apply_chat_template(
                    list(command.get("messages", [])), add_generation_prompt=True, tokenize=True
                )
            )
        return list(command.get("context", [])) + tokens

    def run(
        self,
        command: GenerateCommand,
        writer: EventWriter,
        cancelled: Callable[[], bool],
    ) -> None:
        """Generate for one command, streaming text events and ending with a done event."""
        request_id = command["id"]
        options = command.get("options", {})
        prompt = self.prompt_tokens(command)
        if not prompt:
            writer.send(protocol.error(request_id, "the prompt is empty", 400))
            writer.flush()
            return
        num_ctx = int(options.get("num_ctx") or DEFAULT_NUM_CTX)
        num_predict = int(options.get("num_predict", -1))
        room = max(num_ctx - len(prompt), 1)
        max_tokens = room if num_predict < 0 else min(num_predict, room)
        seed = int(options.get("seed", -1))
        if seed >= 0:
            mx.random.seed(seed)
        sampler = make_sampler(
            temp=float(options.get("temperature", 0.8)),
            top_p=_top_p(options.get("top_p", 0.9)),
            top_k=max(int(options.get("top_k", 40)), 0),
        )
        stopper = StopMatcher(list(options.get("stop", [])))
        detokenizer = self.tokenizer.detokenizer
        detokenizer.reset()

        generated: list[int] = []
        done_reason = "length"
        started = time.perf_counter_ns()
        first_at = started
        if max_tokens > 0:
            steps = generate_step(mx.array(prompt), self.model, max_tokens=max_tokens, sampler=sampler)
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
                    writer.send(protocol.text(request_id, out))
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
                writer.send(protocol.text(request_id, tail))
        stats: DoneStats = {
            "done_reason": done_reason,
            "prompt_eval_count": len(prompt),
            "prompt_eval_duration_ns": first_at - started,
            "eval_count": len(generated),
            "eval_duration_ns": max(finished - first_at, 0),
        }
        if command.get("return_context"):
            stats["context"] = prompt + generated
        writer.send(protocol.done(request_id, stats))
        writer.flush()


def _top_p(value: Any) -> float:
    # mlx-lm treats top_p 0 or 1 as "off"; Ollama's 1.0 means the same.
    p = float(value)
    return 0.0 if p >= 1.0 or p <= 0.0 else p


def _context_length(model: Any) -> int:
    args = getattr(model, "args", None)
    for key in ("max_position_embeddings", "max_seq_len", "context_length"):
        value = getattr(args, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_NUM_CTX
