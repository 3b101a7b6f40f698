"""Single-stream overhead: native mlx-lm decode vs the same generation through the daemon.

    python -m bench.overhead --model random:qwen2.5-0.5b --tokens 256 --prompt-tokens 64 --runs 3

Native: ``generate_step`` in this process, greedy, timed per token. Server: a real
``mlxd serve`` + worker, ``/api/generate`` (raw, greedy) streamed over HTTP and timed
from the client: TTFT from sending the request to the first chunk, decode speed from the
first to the last chunk. Both sides make exactly ``--tokens`` tokens (random models cannot
emit their end-of-sequence token). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.harness import common_args, daemon, device_name, emit, median, prompt_text, resolve_model


def native_runs(model_dir: Path, prompt: str, tokens: int, runs: int) -> tuple[list[float], list[float], int]:
    """(tok/s per run, TTFT ms per run, prompt tokens) for mlx-lm in this process."""
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import make_sampler

    model, tokenizer = load(str(model_dir))[:2]
    ids = mx.array(tokenizer.encode(prompt))
    sampler = make_sampler(temp=0.0)
    speeds, ttfts = [], []
    for run in range(runs + 1):  # the first run warms the kernels up, as the worker does at load
        started = time.perf_counter()
        first = last = started
        count = 0
        for count, _ in enumerate(generate_step(ids, model, max_tokens=tokens, sampler=sampler), 1):
            last = time.perf_counter()
            if count == 1:
                first = last
        if run == 0:
            continue
        assert count == tokens, f"native run made {count} tokens, not {tokens}"
        speeds.append((count - 1) / (last - first))
        ttfts.append((first - started) * 1000)
    n_prompt = int(ids.size)
    del model, tokenizer, ids
    gc.collect()
    mx.clear_cache()
    return speeds, ttfts, n_prompt


def server_runs(url: str, prompt: str, tokens: int, runs: int) -> tuple[list[float], list[float]]:
    body = {
        "model": "bench",
        "prompt": prompt,
        "raw": True,
        "stream": True,
        "options": {"temperature": 0, "num_predict": tokens, "seed": 0},
    }
    speeds, ttfts = [], []
    with httpx.Client(timeout=None) as client:
        for run in range(runs + 1):  # the first run loads the model
            started = time.perf_counter()
            first = last = started
            chunks = 0
            final: dict[str, Any] = {}
            with client.stream("POST", url + "/api/generate", content=orjson.dumps(body)) as response:
                response.raise_for_status()
                for line in response.iter_lines():
                    last = time.perf_counter()
                    chunk = orjson.loads(line)
                    if "error" in chunk:
                        raise RuntimeError(chunk["error"])
                    chunks += 1
                    if chunks == 1:
                        first = last
                    if chunk.get("done"):
                        final = chunk
            if run == 0:
                continue
            made = int(final.get("eval_count", 0))
            assert made == tokens, f"server run made {made} tokens, not {tokens}"
            speeds.append((made - 1) / (last - first))
            ttfts.append((first - started) * 1000)
    return speeds, ttfts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.split("\n")[0])
    common_args(parser)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ipc", choices=["shm", "stdio"], default="shm")
    args = parser.parse_args(argv)

    model_dir = resolve_model(args.model)
    prompt = prompt_text(args.prompt_tokens)
    native_speed, native_ttft, n_prompt = native_runs(model_dir, prompt, args.tokens, args.runs)
    with daemon(model_dir, ipc=args.ipc) as url:
        server_speed, server_ttft = server_runs(url, prompt, args.tokens, args.runs)
    native, server = median(native_speed), median(server_speed)
    emit(
        {
            "bench": "overhead",
            "model": args.model,
            "device": device_name(),
            "ipc": args.ipc,
            "tokens": args.tokens,
            "prompt_tokens": n_prompt,
            "runs": args.runs,
            "native_tok_s": round(native, 2),
            "server_tok_s": round(server, 2),
            "overhead_pct": round((1 - server / native) * 100, 2),
            "native_ttft_ms": round(median(native_ttft), 2),
            "server_ttft_ms": round(median(server_ttft), 2),
            "native_tok_s_runs": [round(s, 2) for s in native_speed],
            "server_tok_s_runs": [round(s, 2) for s in server_speed],
        },
        args.table,
    )


if __name__ == "__main__":
    main()
