"""Concurrent streams: aggregate and per-stream decode speed and TTFT, mlxd vs mlx_lm.server.

    python -m bench.concurrency --model random:qwen2.5-0.5b --streams 1,2,4,8,16 --tokens 128

For each stream count S, S clients start together and each streams one greedy completion
of ``--tokens`` tokens (mlxd: ``/api/generate`` raw; mlx_lm.server: ``/v1/completions``
with ``stream: true``, the same prompt and sampling). Aggregate tok/s is all tokens over
the wall time from the first request to the last token. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.harness import (
    common_args,
    daemon,
    device_name,
    emit,
    free_port,
    median,
    prompt_text,
    resolve_model,
)


async def _mlxd_stream(client: httpx.AsyncClient, url: str, prompt: str, tokens: int) -> dict[str, float]:
    body = {
        "model": "bench",
        "prompt": prompt,
        "raw": True,
        "options": {"temperature": 0, "num_predict": tokens},
    }
    started = time.perf_counter()
    first = last = 0.0
    count = 0
    async with client.stream("POST", url + "/api/generate", content=orjson.dumps(body)) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            chunk = orjson.loads(line)
            if "error" in chunk:
                raise RuntimeError(chunk["error"])
            last = time.perf_counter()
            if not first:
                first = last
            if chunk.get("done"):
                count = int(chunk["eval_count"])
    return {"started": started, "first": first, "last": last, "tokens": count}


async def _mlx_lm_stream(client: httpx.AsyncClient, url: str, prompt: str, tokens: int) -> dict[str, float]:
    body = {"prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True}
    started = time.perf_counter()
    first = last = 0.0
    count = 0
    async with client.stream("POST", url + "/v1/completions", content=orjson.dumps(body)) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = orjson.loads(line[6:])
            for choice in chunk.get("choices", []):
                if choice.get("text"):
                    count += 1
                    last = time.perf_counter()
                    if not first:
                        first = last
    return {"started": started, "first": first, "last": last, "tokens": count}


async def _round(kind: str, url: str, prompt: str, tokens: int, streams: int) -> dict[str, Any]:
    one = _mlxd_stream if kind == "mlxd" else _mlx_lm_stream
    limits = httpx.Limits(max_connections=streams + 4)
    async with httpx.AsyncClient(timeout=None, limits=limits) as client:
        # Warm-up round of the same shape: the model is loaded, and the kernels for this
        # batch size are compiled (MLX compiles per shape on first use; ~seconds on CUDA).
        await asyncio.gather(*(one(client, url, prompt, 8) for _ in range(streams)))
        runs = await asyncio.gather(*(one(client, url, prompt, tokens) for _ in range(streams)))
    start = min(r["started"] for r in runs)
    end = max(r["last"] for r in runs)
    total = sum(r["tokens"] for r in runs)
    per_stream = [(r["tokens"] - 1) / (r["last"] - r["first"]) for r in runs if r["last"] > r["first"]]
    ttfts = [(r["first"] - r["started"]) * 1000 for r in runs]
    return {
        "streams": streams,
        "aggregate_tok_s": round(total / (end - start), 2),
        "per_stream_tok_s": round(median(per_stream), 2) if per_stream else 0.0,
        "ttft_ms_median": round(median(ttfts), 2),
        "ttft_ms_max": round(max(ttfts), 2),
        "tokens": total,
    }


@contextmanager
def mlx_lm_server(model_dir: Path, tokens: int) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlx_lm", "server", "--model", str(model_dir), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("mlx_lm.server did not start")
            try:
                httpx.get(url + "/v1/models", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.concurrency", description=__doc__.split("\n")[0])
    common_args(parser)
    parser.add_argument("--streams", default="1,2,4,8,16")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--ipc", choices=["shm", "stdio"], default="shm")
    parser.add_argument("--skip-mlx-lm", action="store_true", help="measure mlxd only")
    args = parser.parse_args(argv)
    counts = [int(s) for s in args.streams.split(",")]
    model_dir = resolve_model(args.model)
    prompt = prompt_text(args.prompt_tokens)

    results: dict[str, list[dict[str, Any]]] = {}
    with daemon(model_dir, ipc=args.ipc) as url:
        results["mlxd"] = [asyncio.run(_round("mlxd", url, prompt, args.tokens, s)) for s in counts]
    if not args.skip_mlx_lm:
        rows: list[dict[str, Any]] = []
        with mlx_lm_server(model_dir, args.tokens) as url:
            for s in counts:
                try:
                    rows.append(asyncio.run(_round("mlx_lm", url, prompt, args.tokens, s)))
                except httpx.HTTPError as exc:  # report it and keep the rest of the figures
                    rows.append({"streams": s, "error": f"{type(exc).__name__}: {exc}"})
        results["mlx_lm_server"] = rows
    out: dict[str, Any] = {
        "bench": "concurrency",
        "model": args.model,
        "device": device_name(),
        "ipc": args.ipc,
        "tokens": args.tokens,
        **results,
    }
    single = results["mlxd"][0]["aggregate_tok_s"] if counts[0] == 1 else None
    if single:
        out["mlxd_scaling"] = {
            str(r["streams"]): round(r["aggregate_tok_s"] / single, 2) for r in results["mlxd"]
        }
    emit(out, args.table)


if __name__ == "__main__":
    main()
