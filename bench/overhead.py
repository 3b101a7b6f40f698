"""Single-stream overhead: native mlx-lm decode vs the same generation through the daemon.

    python -m bench.overhead --model random:qwen2.5-0.5b --tokens 256 --prompt-tokens 64 --runs 3

Native: ``generate_step`` in this process, greedy, timed per token. Server: a real
``mlxd serve`` + worker, ``/api/generate`` (raw, greedy) streamed over HTTP and timed
from the client: TTFT from sending the request to the first chunk, decode speed from the
first to the last chunk, and its median time between tokens (``itl``: the steady
per-token cost, without the stalls a whole generation's time includes). The two take
turns against one running daemon (an idle worker uses no CPU), each round in the other
order than the last and with a prompt of the warm-up's length that shares no prefix with
any prompt the server's prompt cache still holds (TTFT is a cold prefill of
already-compiled shapes on both sides). Both sides make exactly ``--tokens`` tokens
(random models cannot emit their end-of-sequence token). Prints one JSON object;
``bench.pool`` joins the rounds of several runs.

``--env-b NAME=VALUE`` starts a second daemon with those variables (e.g.
``MLXD_TOKEN_THREAD=0``) and runs three sides each round, in six orders in turn (a multiple
of 6 rounds balances them exactly); the ``b_*`` fields compare it with native and, round
by round, with the first daemon: between runs minutes apart the machine's speed moves more
than a small difference, within one round much less.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson

from bench.harness import (
    common_args,
    daemon,
    device_name,
    distinct_prompts,
    emit,
    host_id,
    median,
    prompt_text,
    resolve_model,
)
from worker.prefix_cache import cache_entries


class Native:
    """mlx-lm's ``generate_step`` in this process, greedy, on the model the daemon serves."""

    def __init__(self, model_dir: Path, tokens: int) -> None:
        from mlx_lm import load
        from mlx_lm.sample_utils import make_sampler

        self.model, self.tokenizer = load(str(model_dir))[:2]
        self.sampler = make_sampler(temp=0.0)
        self.tokens = tokens

    def prompt_tokens(self, prompt: str) -> int:
        return len(self.tokenizer.encode(prompt))

    def encode(self, text: str) -> list[int]:
        """Token ids without special tokens."""
        ids: list[int] = self.tokenizer.encode(text, add_special_tokens=False)
        return ids

    def run(self, prompt: str) -> tuple[float, float, float]:
        """(tok/s, TTFT ms, median ms between tokens) of one generation."""
        import mlx.core as mx
        from mlx_lm.generate import generate_step

        started = time.perf_counter()
        stamps: list[float] = []
        ids = mx.array(self.tokenizer.encode(prompt))
        for _ in generate_step(ids, self.model, max_tokens=self.tokens, sampler=self.sampler):
            stamps.append(time.perf_counter())
        count = len(stamps)
        assert count == self.tokens, f"native run made {count} tokens, not {self.tokens}"
        return (count - 1) / (stamps[-1] - stamps[0]), (stamps[0] - started) * 1000, gap_ms(stamps)


def server_run(client: httpx.Client, url: str, prompt: str, tokens: int) -> tuple[float, float, float, float]:
    """(tok/s, TTFT ms, the worker's own tok/s, median ms between tokens) of one streamed
    ``/api/generate``: all but the third timed from the client's side, the third from the
    final chunk's ``eval_count`` and ``eval_duration`` (which separates the worker's speed
    from the delivery's)."""
    body = {
        "model": "bench",
        "prompt": prompt,
        "raw": True,
        "stream": True,
        "options": {"temperature": 0, "num_predict": tokens, "seed": 0},
    }
    started = time.perf_counter()
    stamps: list[float] = []  # when each chunk with text arrived
    last = started
    final: dict[str, Any] = {}
    with client.stream("POST", url + "/api/generate", content=orjson.dumps(body)) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            last = time.perf_counter()
            chunk = orjson.loads(line)
            if "error" in chunk:
                raise RuntimeError(chunk["error"])
            if chunk.get("done"):
                final = chunk
            else:
                stamps.append(last)
    made = int(final.get("eval_count", 0))
    assert made == tokens and stamps, f"server run made {made} tokens, not {tokens}"
    first = stamps[0]
    # eval_duration runs from the first token to the last, like the client's window.
    worker = (made - 1) / (int(final.get("eval_duration", 0)) / 1e9 or float("inf"))
    return (made - 1) / (last - first), (first - started) * 1000, worker, gap_ms(stamps)


def load_model(client: httpx.Client, url: str) -> None:
    """Has the daemon load ``bench`` into a worker (an empty prompt only loads, as in Ollama),
    kept loaded however long this process takes to load its own copy."""
    body = {"model": "bench", "prompt": "", "stream": False, "keep_alive": -1}
    client.post(url + "/api/generate", json=body).raise_for_status()


def gap_ms(stamps: list[float]) -> float:
    """The median time between consecutive stamps, in ms (0 with fewer than two)."""
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return median(gaps) * 1000 if gaps else 0.0


# Orders of the sides by round, repeated. Over one period every side runs right after every
# side (itself included, across rounds too) equally often: on a 2-core CPU a daemon's side
# ran 1–4 % slower right after the other daemon's side than right after native's, which a
# plain rotation (N A B, A B N, B N A) puts on the second daemon twice as often as on the first.
_ORDERS: dict[int, list[tuple[int, ...]]] = {
    1: [(0,)],
    2: [(0, 1), (1, 0)],
    3: [(0, 1, 2), (2, 1, 0), (0, 2, 1), (1, 0, 2), (2, 0, 1), (1, 2, 0)],
}


def round_order(r: int, sides: int) -> tuple[int, ...]:
    """The order in which round ``r`` runs its sides (0 is native)."""
    orders = _ORDERS[sides]
    return orders[r % len(orders)]


def overhead_pct(native: float, server: float) -> float:
    return (1 - server / native) * 100


def itl_overhead_pct(native_ms: float, server_ms: float) -> float:
    """``overhead_pct`` of the speeds that two times between tokens make."""
    return overhead_pct(1 / native_ms, 1 / server_ms) if native_ms > 0 and server_ms > 0 else 0.0


T = TypeVar("T")


def _bootstrap(items: list[T], statistic: Callable[[list[T]], float], draws: int) -> tuple[float, float]:
    """A 95% bootstrap interval of ``statistic`` over ``items`` resampled, with a fixed seed."""
    rng = random.Random(0)
    values = sorted(statistic([items[rng.randrange(len(items))] for _ in items]) for _ in range(draws))
    return values[int(0.025 * (draws - 1))], values[int(0.975 * (draws - 1))]


def overhead_interval(native: list[float], server: list[float], draws: int = 2000) -> tuple[float, float]:
    """A 95% bootstrap interval for the overhead of the medians (%): rounds resampled as
    pairs. Wider than the target means this run cannot tell."""

    def overhead(pairs: list[tuple[float, float]]) -> float:
        return overhead_pct(median([n for n, _ in pairs]), median([s for _, s in pairs]))

    return _bootstrap(list(zip(native, server, strict=True)), overhead, draws)


def median_interval(values: list[float], draws: int = 2000) -> tuple[float, float]:
    """A 95% bootstrap interval for the median of ``values``."""
    return _bootstrap(values, median, draws)


def median_fields(values: list[float], median_key: str, interval_key: str) -> dict[str, Any]:
    """``{median_key: median, interval_key: [low, high]}`` of ``values``, rounded for output."""
    return {
        median_key: round(median(values), 2),
        interval_key: [round(v, 2) for v in median_interval(values)],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.split("\n")[0])
    common_args(parser)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ipc", choices=["shm", "stdio"], default="shm")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="start no round after this many seconds of rounds; report the rounds done",
    )
    parser.add_argument(
        "--env-b",
        type=assignment,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="also run a second daemon with this variable set (repeatable); each round runs native "
        "and both daemons (in six orders in turn), and b_* fields compare the second with both",
    )
    args = parser.parse_args(argv)

    began = time.monotonic()
    model_dir = resolve_model(args.model)
    text = prompt_text(args.prompt_tokens)
    env_b = dict(args.env_b)
    with ExitStack() as stack:
        url = stack.enter_context(daemon(model_dir, ipc=args.ipc))
        url_b = stack.enter_context(daemon(model_dir, ipc=args.ipc, env=env_b)) if env_b else None
        client = stack.enter_context(httpx.Client(timeout=None))
        # The workers load (and warm up) while this process loads and warms up its own copy:
        # each run of new processes reaches its first round sooner.
        loading = stack.enter_context(ThreadPoolExecutor(max_workers=2))
        loads = [loading.submit(load_model, client, u) for u in (url, url_b) if u is not None]
        native = Native(model_dir, args.tokens)
        # A prompt per round (so TTFT is a cold prefill on both sides, not the server's prompt
        # cache, which keeps the last few only), all of the warm-up's length (so no round
        # compiles kernels for a new shape).
        window = 2 * cache_entries()
        warm_up, *prompts = distinct_prompts(native.encode, text, args.runs + 1, window)
        sides: list[Callable[[str], Any]] = [native.run, lambda p: server_run(client, url, p, args.tokens)]
        if url_b is not None:
            sides.append(lambda p: server_run(client, url_b, p, args.tokens))
        native.run(warm_up)  # compiles the kernels, as the worker does at load
        for load in loads:
            load.result()
        for side in sides[1:]:
            side(warm_up)  # each daemon's first generation, at the rounds' prompt length
        setup_s = time.monotonic() - began
        # The order changes every round (``round_order``), so a drift of the machine's speed
        # and the side that ran just before fall on every side alike.
        results: list[list[Any]] = []  # per round: native, server[, server B]
        deadline = None if args.max_seconds is None else time.monotonic() + args.max_seconds
        for r, prompt in enumerate(prompts):
            if deadline is not None and time.monotonic() >= deadline and results:
                break
            done = {i: sides[i](prompt) for i in round_order(r, len(sides))}
            results.append([done[i] for i in range(len(sides))])
        n_prompt = native.prompt_tokens(prompts[0])
        del native
        gc.collect()
    rounds: list[tuple[tuple[float, float, float], tuple[float, float, float, float]]]
    rounds = [(n, s) for n, s, *_ in results]
    native_speed = [n[0] for n, _ in rounds]
    server_speed = [s[0] for _, s in rounds]
    native_tok_s, server_tok_s = median(native_speed), median(server_speed)
    # What the server adds to each round's TTFT: both sides prefill the same fresh prompt.
    ttft_extra = [s[1] - n[1] for n, s in rounds]
    paired = [overhead_pct(n[0], s[0]) for n, s in rounds]
    # The same from each round's median time between tokens (1 / itl as the speed).
    paired_itl = [itl_overhead_pct(n[2], s[3]) for n, s in rounds]
    result: dict[str, Any] = {
        "bench": "overhead",
        "model": args.model,
        "device": device_name(),
        "host": host_id(),
        "ipc": args.ipc,
        "tokens": args.tokens,
        "prompt_tokens": n_prompt,
        "runs": len(rounds),
        # From the start (the model built or found) to the first round: the cost of a run
        # of new processes, which pooled short runs pay each time.
        "setup_s": round(setup_s, 1),
        "native_tok_s": round(native_tok_s, 2),
        "server_tok_s": round(server_tok_s, 2),
        "overhead_pct": round(overhead_pct(native_tok_s, server_tok_s), 2),
        # Each round's own ratio: the machine's speed moves between rounds, less within one.
        **median_fields(paired, "overhead_pct_paired_median", "overhead_pct_paired_ci95"),
        "overhead_pct_ci95": [round(v, 2) for v in overhead_interval(native_speed, server_speed)],
        "native_itl_ms": round(median([n[2] for n, _ in rounds]), 4),
        "server_itl_ms": round(median([s[3] for _, s in rounds]), 4),
        **median_fields(paired_itl, "itl_overhead_pct_paired_median", "itl_overhead_pct_paired_ci95"),
        "native_ttft_ms": round(median([n[1] for n, _ in rounds]), 2),
        "server_ttft_ms": round(median([s[1] for _, s in rounds]), 2),
        **median_fields(ttft_extra, "ttft_extra_ms_paired_median", "ttft_extra_ms_ci95"),
        "native_ttft_ms_runs": [round(n[1], 2) for n, _ in rounds],
        "server_ttft_ms_runs": [round(s[1], 2) for _, s in rounds],
        "native_tok_s_runs": [round(v, 2) for v in native_speed],
        "server_tok_s_runs": [round(v, 2) for v in server_speed],
        "native_itl_ms_runs": [round(n[2], 4) for n, _ in rounds],
        "server_itl_ms_runs": [round(s[3], 4) for _, s in rounds],
        # The worker's own decode speed, as its final chunk reports it: a gap between this
        # and server_tok_s is delivery (daemon, HTTP, client), the rest is the worker.
        "server_eval_tok_s": round(median([s[2] for _, s in rounds]), 2),
        "server_eval_tok_s_runs": [round(s[2], 2) for _, s in rounds],
    }
    if env_b:
        result.update(second_server(env_b, native_speed, server_speed, results))
    emit(result, args.table)


def second_server(
    env: dict[str, str], native: list[float], server: list[float], results: list[list[Any]]
) -> dict[str, Any]:
    """The figures of the daemon run with ``--env-b``, against native and against the first."""
    speed = [b[0] for _, _, b in results]
    paired = [overhead_pct(n, b) for n, b in zip(native, speed, strict=True)]
    versus = [overhead_pct(a, b) for a, b in zip(server, speed, strict=True)]
    extra = [b[1] - n[1] for n, _, b in results]
    paired_itl = [itl_overhead_pct(n[2], b[3]) for n, _, b in results]
    versus_itl = [itl_overhead_pct(a[3], b[3]) for _, a, b in results]
    return {
        "b_env": env,
        "b_server_tok_s": round(median(speed), 2),
        **median_fields(paired, "b_overhead_pct_paired_median", "b_overhead_pct_paired_ci95"),
        # Below 0: the second daemon is the faster; measured in the same rounds as the first.
        **median_fields(versus, "b_vs_a_pct_paired_median", "b_vs_a_pct_paired_ci95"),
        **median_fields(paired_itl, "b_itl_overhead_pct_paired_median", "b_itl_overhead_pct_paired_ci95"),
        **median_fields(versus_itl, "b_vs_a_itl_pct_paired_median", "b_vs_a_itl_pct_paired_ci95"),
        "b_ttft_extra_ms_paired_median": round(median(extra), 2),
        "b_server_ttft_ms_runs": [round(b[1], 2) for _, _, b in results],
        "b_server_tok_s_runs": [round(v, 2) for v in speed],
        "b_server_itl_ms_runs": [round(b[3], 4) for _, _, b in results],
    }


def assignment(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` from the command line."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


if __name__ == "__main__":
    main()
