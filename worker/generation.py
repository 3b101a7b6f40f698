"""The MLX side of a worker: load a model, warm it up, and run generations.

Everything here runs on one dedicated thread: MLX streams are thread-local, so the
model is loaded and used on the same thread (a lone request's per-token bookkeeping
runs beside it: ``worker.token_thread``). A request that runs alone takes mlx-lm's
``generate_step`` (no batching overhead); when others arrive while it runs, it moves,
with its KV cache, into a continuous batch (``worker.batching``). Either way the KV cache
of a finished request is kept for the next one that shares its prefix
(``worker.prefix_cache``). Per-request state is ``worker.sequence``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_lm import load as load_model
from mlx_lm.generate import BatchGenerator, generate_step
from mlx_lm.models.cache import trim_prompt_cache
from mlx_lm.utils import maybe_set_recommended_wired_limit

from worker import batched_attention, batched_qmv, protocol, route_memory, token_thread
from worker.batching import NO_JOBS, BatchRunner, Cancelled, JobSource, Moved, num_parallel
from worker.constrained import Constraints
from worker.prefix_cache import PrefixCache
from worker.prompt import PromptBuilder, PromptError
from worker.protocol import GenerateCommand, ModelInfo
from worker.sampling import build_sampler
from worker.sequence import DEFAULT_NUM_CTX, Sequence, SequenceError, fail, request_num_ctx
from worker.token_bytes import token_bytes
from worker.token_thread import TokenThread
from worker.transport import EventWriter

log = logging.getLogger("mlxd.worker")

# Prompt lengths prefilled at load: one per row-count class of MLX's quantized matmul
# kernels (up to 16, 32 and 64 rows on CUDA; longer prompts use the 64-row one).
PREFILL_WARM_UP = (16, 32, 64, 128)
SLOW_WARM_UP = 10.0  # seconds; a warm-up this slow built kernels, worth a line in the log


class Generator:
    """A loaded model and its tokenizer, and the prompt cache shared by its requests."""

    def __init__(self, model_dir: Path, progress: Callable[[], None] = lambda: None) -> None:
        """Load the model in ``model_dir`` and warm it up, calling ``progress`` after each step
        (a first load on a GPU can spend minutes building kernels; each step shows it is alive)."""
        started = time.perf_counter()
        self.model_dir = model_dir
        loaded: tuple[Any, Any] = load_model(str(model_dir))  # type: ignore[assignment]
        self.model, self.tokenizer = loaded
        progress()
        self.eos_ids = set(self.tokenizer.eos_token_ids)
        self.vocab_size = _vocab_size(self.model, self.tokenizer)
        self._wire_memory()
        # Batched decode routes few-row products by what ``batched_qmv.tune`` measured, on
        # CUDA; the layers are swapped only while a batch runs, so a lone request pays no
        # Python dispatch per layer.
        self.batched_qmv = batched_qmv.enabled()
        self.batched_attention = batched_attention.enabled()
        warming = time.perf_counter()
        self._warm_up(progress)
        if (took := time.perf_counter() - warming) > SLOW_WARM_UP:
            log.info("warm-up took %.0fs: kernels were built for this machine (kept for later loads)", took)
        self.load_seconds = time.perf_counter() - started
        self.context_length = _context_length(self.model)
        self.prompts = PromptBuilder(self.tokenizer)
        self.constraints = Constraints(self.tokenizer, self.vocab_size, sorted(self.eos_ids))
        self.prefix_cache = PrefixCache(self.model)
        self.token_bytes = token_bytes(self.tokenizer)  # for ``logprobs`` entries
        self.tokens = TokenThread() if token_thread.wanted() else None

    def info(self) -> ModelInfo:
        weights = _weight_bytes(self.model)
        return {
            "load_seconds": self.load_seconds,
            "context_length": self.context_length,
            "vocab_size": len(self.tokenizer.get_vocab()),
            "eos_token_ids": sorted(self.eos_ids),
            "memory_bytes": int(weights),
            "device": str(mx.default_device()),
        }

    def _wire_memory(self) -> None:
        # Metal: keep the weights wired (resident) for the worker's lifetime, up to the GPU's
        # recommended working set, so an idle model is not paged out between requests (the
        # worker exits on unload, which releases them). Other devices report no such size.
        if maybe_set_recommended_wired_limit() is None:
            return
        weights = _weight_bytes(self.model)
        recommended = int(mx.device_info().get("max_recommended_working_set_size", 0))
        if weights > 0.9 * recommended:
            log.warning(
                "the model's weights (%d MiB) are close to the GPU's recommended working set"
                " (%d MiB): generation may be slow",
                weights >> 20,
                recommended >> 20,
            )

    def _warm_up(self, progress: Callable[[], None]) -> None:
        # One short generation compiles the kernels the first real request would otherwise
        # pay for (on a GPU the first decode after load runs at about half speed).
        prompt = self.tokenizer.encode("Hello")[:4] or [0]
        for _ in generate_step(mx.array(prompt), self.model, max_tokens=2):
            pass
        progress()
        # Ollama's default sampling (temperature, top_k, top_p): mlx-lm compiles its steps,
        # kernels that CUDA builds on first use too (half a minute on a machine's first load).
        sampler = build_sampler({}, self.vocab_size)
        for _ in generate_step(mx.array(prompt), self.model, max_tokens=2, sampler=sampler):
            pass
        progress()
        if not builds_kernels_per_shape():
            return  # nothing more to build (and a CPU's prefill is slow: 128 tokens take seconds)
        # A prompt's prefill multiplies as many rows as it has tokens, by kernels chosen per
        # row-count class (MLX's CUDA backend builds each class's kernel on its first use:
        # over 30 s apiece on an H100, then cached on disk): build them now, not in a request.
        for length in PREFILL_WARM_UP:
            for _ in generate_step(mx.array((prompt * length)[:length]), self.model, max_tokens=1):
                pass
            progress()
        if num_parallel() < 2:
            return  # no batch runs with one slot
        # A GPU compiles kernels per batch shape too (seconds each on CUDA the first time):
        # pay for the common sizes now rather than during the first concurrent requests.
        most = min(num_parallel(), batched_qmv.MAX_ROWS)
        with self.batch_routing() as routed:
            if routed:  # quantized layers to route: measure how, or recall an earlier answer
                self._route_batches(most)
                progress()
            for size in sorted({b for b in batched_qmv.BUCKETS if b <= most} | {most} - {1}):
                batch = BatchGenerator(
                    self.model, stop_tokens=[], completion_batch_size=size, prefill_batch_size=size
                )
                batch.insert([prompt] * size, max_tokens=[2] * size)
                finished = 0
                while finished < size:
                    finished += sum(r.finish_reason is not None for r in batch.next_generated())
                batch.close()
                progress()
        mx.clear_cache()  # the warm-up's buffers are not the ones requests will need

    def _route_batches(self, most: int) -> None:
        """Route batches of up to ``most`` rows as the last load of this model on this
        machine measured, or measure now (``batched_qmv.tune``) and remember it."""
        kernels = batched_qmv.kernel_text() + batched_attention.kernel_text()
        entry = route_memory.key(self.model_dir, most, kernels)
        routes = route_memory.recall(entry)
        if routes is not None:
            batched_qmv.use(routes)
            log.info("batched decode routes by batch size: %s (as measured at an earlier load)", routes)
            return
        started = time.perf_counter()
        routes = batched_qmv.tune(self.model, most)
        took = time.perf_counter() - started
        log.info("batched decode routes by batch size: %s (measured in %.1fs)", routes, took)
        route_memory.remember(entry, routes)

    @contextmanager
    def batch_routing(self) -> Iterator[int]:
        """While a batch runs (CUDA): few-row products routed through ``batched_qmv``, decode
        attention through ``batched_attention``; the number of quantized layers routed (what
        the load-time tune measures)."""
        with ExitStack() as stack:
            if self.batched_attention:
                stack.enter_context(batched_attention.installed(self.model))
            yield stack.enter_context(batched_qmv.installed(self.model)) if self.batched_qmv else 0

    def run(self, command: GenerateCommand, writer: EventWriter, cancelled: Callable[[], bool]) -> None:
        """Generate for one command by itself."""
        self.serve(command, NO_JOBS, writer, lambda _: cancelled())

    def serve(
        self, first: GenerateCommand, jobs: JobSource, writer: EventWriter, cancelled: Cancelled
    ) -> None:
        """Run ``first`` and, while it runs, whatever generation commands arrive: alone on
        mlx-lm's ``generate_step`` (the fastest path for one request), in a continuous batch
        as soon as a second one comes."""
        seq = self.sequence(first, writer, cancelled)
        if seq is None:
            return
        # One sequence at a time (OLLAMA_NUM_PARALLEL=1): nothing could join a batch, so the
        # request keeps the fast path to its end and the next one waits in the queue.
        moved = self.run_alone(seq, jobs if num_parallel() > 1 else NO_JOBS)
        if moved is not None:
            with self.batch_routing():
                BatchRunner(self, writer, cancelled).run([moved], jobs)

    def sequence(
        self, command: GenerateCommand, writer: EventWriter, cancelled: Cancelled
    ) -> Sequence | None:
        if command.get("render_only"):
            self._render(command, writer)
            return None
        try:
            return Sequence(self, command, writer, partial(cancelled, command["id"]))
        except SequenceError as exc:
            fail(writer, command["id"], exc.message, exc.status)
            return None

    def _render(self, command: GenerateCommand, writer: EventWriter) -> None:
        """``_debug_render_only``: the prompt as the model would see it, decoded from its tokens
        (special tokens included), then done; nothing is generated."""
        try:
            prompt = self.prompts.build(command, request_num_ctx(self, command))
        except PromptError as exc:
            fail(writer, command["id"], exc.message, exc.status)
            return
        text = str(self.tokenizer.decode(prompt.tokens, skip_special_tokens=False))
        writer.send(protocol.text(command["id"], text))
        writer.send(
            protocol.done(command["id"], {"done_reason": "stop", "prompt_eval_count": len(prompt.tokens)})
        )
        writer.flush()

    def run_alone(self, seq: Sequence, jobs: JobSource) -> Moved | None:
        """Generate ``seq`` by itself. If other requests arrive meanwhile (and its cache can
        move), stop and hand it over, with its cache, to a batch: returns what the batch needs."""
        if seq.max_tokens <= 0:
            seq.finish("length")
            seq.writer.flush()
            return None
        if seq.rotating is not None:
            cache, rest = seq.rotating, seq.tokens  # context shifting: no prefix reuse
        else:
            hit = self.prefix_cache.fetch(seq.tokens)
            cache, rest = hit.cache, hit.rest
        seq.evaluated = len(rest)
        steps = generate_step(
            mx.array(rest),
            self.model,
            max_tokens=seq.max_tokens,
            sampler=seq.sampler,
            logits_processors=seq.processors or None,
            prompt_cache=cache,
        )
        # Past the first token (sent at once, for the time to first token), the per-token
        # work can run beside the next step's launch (``worker.token_thread``); not when
        # log-probabilities are asked for, which read the step's MLX arrays.
        tokens = None if seq.logprobs else self.tokens
        try:
            moved = self._decode(seq, steps, cache, jobs, tokens)
        except BaseException:
            if tokens is not None:
                tokens.abandon(seq)  # what it still holds of this request is not sent
            raise
        finally:
            steps.close()  # on this thread: mlx-lm's step generator must end where it began
        if moved is not None:
            return moved
        if tokens is not None:
            tokens.drain()
        seq.finish("length")
        seq.writer.flush()
        if seq.rotating is None:
            self.prefix_cache.store(seq.fed, cache)
        return None

    def _decode(
        self,
        seq: Sequence,
        steps: Iterator[Any],
        cache: list[Any],
        jobs: JobSource,
        tokens: TokenThread | None,
    ) -> Moved | None:
        """Feed ``seq`` the tokens of ``steps`` until it ends, or until other requests arrive:
        then what the batch needs to take it over."""
        first = True
        for step, logprobs in steps:
            token = int(step)
            if tokens is None or first:
                first = False
                if seq.accept(token, logprobs):
                    return None
                seq.flush_token()
            else:
                tokens.push(seq, token)
                # An end-of-sequence token ends the request here, as the budget ends the loop;
                # a stop string or a cancel shows a step or two later.
                if token in seq.eos_ids or seq.done_reason is not None:
                    return None
            if seq.rotating is None and jobs.pending():
                if tokens is not None:
                    tokens.drain()
                    if seq.done_reason is not None:
                        return None
                # The cache already holds the token just sampled (generate_step runs one
                # step ahead); drop it again so the batch feeds it as the first input.
                held = cache[0].offset
                trim_prompt_cache(cache, held - (len(seq.fed) - 1))
                if seq.constraint is not None:
                    seq.constraint.replay_next()
                return Moved(seq, cache, [seq.fed[-1]])
        return None


def builds_kernels_per_shape() -> bool:
    """Whether MLX may build kernels per shape class on first use: on a GPU (CUDA compiles
    them; Metal ships most prebuilt, and its warm-up then costs a few prefills), never on
    the CPU."""
    return bool(mx.default_device() == mx.gpu)


def _weight_bytes(model: Any) -> int:
    params: list[tuple[str, Any]] = tree_flatten(model.parameters())  # type: ignore[assignment]
    return int(sum(v.nbytes for _, v in params))


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
