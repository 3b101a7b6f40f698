"""The worker's own decode loop, in this process, with no daemon and no IPC: how long one
step takes at each number of concurrent requests, and where the host spends it.

    python -m bench.worker_step --model random:qwen2.5-7b --streams 1,8 --tokens 128 --profile 25

For each stream count S it loads nothing new: one ``worker.generation.Generator`` (the
worker's load, warm-up and batch tuning included) serves S raw greedy requests submitted
together, exactly as the worker's job loop hands them over (the first runs alone, the
rest join it in a continuous batch). Events go to a writer that only counts them, so the
figures are the worker's decode loop: model graph, mlx-lm's ``BatchGenerator``, per-token
detokenizing and stop checks, event encoding.

``step_ms`` is the median time between flushes (one per decode step) once every request
is decoding; ``tok_s`` the batch's tokens per second at that step time. With ``--profile
N`` the run is repeated under ``cProfile`` and the N functions with the most own time are
listed, with ``wait_ms``: time per step spent blocked on the device in ``mx.eval`` (the
batch path's one wait per step; ``mlx_async_eval_launch`` is the host encoding the step's
kernels). When ``wait_ms`` is near zero a batch is bound by the host, not the GPU.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import time
from typing import Any

from bench.harness import device_name, median, prompt_text, resolve_model


class CountingWriter:
    """An ``EventWriter`` that keeps nothing: counts events, and times each flush."""

    def __init__(self) -> None:
        self.events = 0
        self.flushes: list[float] = []

    def send(self, payload: bytes) -> None:
        self.events += 1

    def flush(self) -> None:
        self.flushes.append(time.perf_counter())

    def close(self) -> None:
        pass


def _serve(generator: Any, streams: int, tokens: int, prompt_tokens: int) -> CountingWriter:
    from worker.batching import JobQueue
    from worker.protocol import GenerateCommand

    jobs = JobQueue()
    prompt = prompt_text(prompt_tokens)
    for i in range(streams):
        command: GenerateCommand = {
            "op": "generate",
            "id": i + 1,
            "prompt": f"{i} {prompt}",  # distinct prompts: no prefix-cache shortcut between them
            "raw": True,
            "options": {"temperature": 0, "num_predict": tokens},
        }
        jobs.put(command)
    writer = CountingWriter()
    first = jobs.take()
    assert first is not None
    generator.serve(first, jobs, writer, lambda _: False)
    return writer


def _steady_step_ms(writer: CountingWriter) -> float:
    """Median flush interval over the middle of the run (after the joins, before the ends)."""
    gaps = [(b - a) * 1000 for a, b in zip(writer.flushes, writer.flushes[1:], strict=False)]
    start, end = len(gaps) // 4, max(len(gaps) * 3 // 4, len(gaps) // 4 + 1)
    return median(gaps[start:end]) if gaps else 0.0


def _profile(generator: Any, streams: int, tokens: int, prompt_tokens: int, top: int) -> dict[str, Any]:
    import mlx.core as mx

    # Python stand-ins for ``mx.eval`` and ``mx.async_eval``: cProfile does not see calls into
    # MLX's extension, so their time would count as their caller's. ``eval`` blocks until the
    # device is done; ``async_eval`` is where the host encodes the step's kernels.
    real_eval, real_async = mx.eval, mx.async_eval

    def mlx_eval_wait(*args: Any) -> None:
        real_eval(*args)

    def mlx_async_eval_launch(*args: Any) -> None:
        real_async(*args)

    profiler = cProfile.Profile()
    mx.eval, mx.async_eval = mlx_eval_wait, mlx_async_eval_launch
    try:
        profiler.enable()
        writer = _serve(generator, streams, tokens, prompt_tokens)
        profiler.disable()
    finally:
        mx.eval, mx.async_eval = real_eval, real_async
    stats = pstats.Stats(profiler)
    steps = max(len(writer.flushes), 1)
    rows = []
    wait = 0.0
    entries: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (filename, line, name), (_, calls, own, cumulative, _) in entries.items():
        label = f"{os.path.basename(filename)}:{line}:{name}" if line else name
        if name == "mlx_eval_wait":
            wait += own
        rows.append((own, cumulative, calls, label))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    return {
        "profiled_step_ms": round(total / steps * 1000, 3),
        "wait_ms": round(wait / steps * 1000, 3),
        "top": [
            {
                "own_ms_per_step": round(o / steps * 1000, 4),
                "cum_ms_per_step": round(c / steps * 1000, 4),
                "calls_per_step": round(n / steps, 2),
                "fn": label,
            }
            for o, c, n, label in rows[:top]
        ],
    }


def main(argv: list[str] | None = None) -> None:
    from worker import batched_qmv

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="random:qwen2.5-0.5b")
    parser.add_argument("--streams", default="1,8")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--profile", type=int, default=0, help="list the N costliest functions")
    parser.add_argument(
        "--route",
        choices=("auto", *batched_qmv.ROUTES),
        default="auto",
        help="how a batch's quantized products run (CUDA; auto: as the load-time tune chose)",
    )
    args = parser.parse_args(argv)
    counts = [int(s) for s in args.streams.split(",")]
    os.environ.setdefault("OLLAMA_NUM_PARALLEL", str(max(counts)))

    from worker.generation import Generator

    generator = Generator(resolve_model(args.model))
    batched_qmv.STRATEGY = args.route
    rows: list[dict[str, Any]] = []
    for streams in counts:
        _serve(generator, streams, 8, args.prompt_tokens)  # this shape's first run compiles
        writer = _serve(generator, streams, args.tokens, args.prompt_tokens)
        step = _steady_step_ms(writer)
        row: dict[str, Any] = {
            "streams": streams,
            "step_ms": round(step, 3),
            "tok_s": round(streams * 1000 / step, 1) if step else 0.0,
            "steps": len(writer.flushes),
            "events": writer.events,
        }
        if args.profile:
            row.update(_profile(generator, streams, args.tokens, args.prompt_tokens, args.profile))
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {
        "model": args.model,
        "device": device_name(),
        "load_s": round(generator.load_seconds, 2),
        "routes": {"tuned": batched_qmv.tuned(), "used": args.route},
        "env": {k: v for k, v in os.environ.items() if k.startswith(("MLX_", "MLXD_", "OLLAMA_NUM"))},
        "rows": rows,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
