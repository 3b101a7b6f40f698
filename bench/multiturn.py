"""Multi-turn chat: time to first token per turn as the history grows, with and without
the worker's prompt cache.

    python -m bench.multiturn --model random:qwen2.5-7b --turns 5 --history-tokens 2000

Each turn adds a user message and, from the second turn on, the previous assistant
answer; both are fixed texts, so that turn k's prompt extends turn k-1's prompt exactly
(the case a prompt cache serves: an agent or chat UI resending its history). By the last
turn the history holds about ``--history-tokens`` tokens. The daemon runs once with
``MLXD_PROMPT_CACHE=0`` and once with it on. Prints one JSON object.

From the second turn on, a turn brings an answer and a question (turn 1 only a question),
so with the cache a later turn still evaluates more new tokens than the first (see
``prompt_eval_count``). With ``--own-replies`` the answers in the history are the model's
own, as a chat UI sends them back, and each question is as long as a fixed answer and a
question together: the cache holds those answers already wherever their text encodes to
the tokens generated (a real tokenizer; the random models' synthetic one spells a made-up
word out in letters, so there each answer is evaluated again).

``--conversations N`` holds N conversations one after another on each daemon, each with
its own texts and lengths (so no turn meets a prompt length, or a cached prefix, that an
earlier conversation compiled or left behind), and reports each turn's median TTFT.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from statistics import median_low
from typing import Any

import httpx
import orjson

from bench.harness import daemon, device_name, emit, median, resolve_model

SYSTEM = "You are a terse assistant."


def _text(tokens: int, seed: int) -> str:
    words = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")
    out: list[str] = []
    while sum(len(w) + 1 for w in out) < tokens:
        out.append(words[(len(out) * 7 + seed) % len(words)])
    return " ".join(out)[:tokens]


@dataclass(frozen=True)
class Chat:
    """The shape of each conversation: ``turns`` turns growing to ``history`` tokens, answers
    of ``reply`` tokens, and whether the history holds the model's own answers."""

    turns: int
    history: int
    reply: int
    own_replies: bool = False


def _turns(url: str, chat: Chat, system: str, conversation: int = 0) -> list[dict[str, Any]]:
    # Each conversation's messages are a few characters longer than the last one's, in
    # another order of words. With the model's own answers (short) in the history, each
    # question is as long as a fixed answer and a question together.
    share = chat.history // chat.turns if chat.own_replies else chat.history // chat.turns // 2
    per_turn = max(share, 8) + 3 * conversation
    seed = 5 * conversation
    messages: list[dict[str, str]] = [{"role": "system", "content": system}]
    out = []
    answer = ""
    with httpx.Client(timeout=None) as client:
        for turn in range(1, chat.turns + 1):
            if turn > 1:
                text = answer if chat.own_replies else _text(per_turn, turn * 2 + seed)
                messages.append({"role": "assistant", "content": text})
            messages.append({"role": "user", "content": _text(per_turn, turn * 2 + 1 + seed)})
            body = {
                "model": "bench",
                "messages": messages,
                "options": {"temperature": 0, "num_predict": chat.reply, "num_ctx": chat.history * 2 + 512},
            }
            started = time.perf_counter()
            first = 0.0
            final: dict[str, Any] = {}
            parts: list[str] = []
            with client.stream("POST", url + "/api/chat", content=orjson.dumps(body)) as response:
                response.raise_for_status()
                for line in response.iter_lines():
                    chunk = orjson.loads(line)
                    if "error" in chunk:
                        raise RuntimeError(chunk["error"])
                    if not first:
                        first = time.perf_counter()
                    parts.append(chunk.get("message", {}).get("content", ""))
                    if chunk.get("done"):
                        final = chunk
            answer = "".join(parts)
            out.append(
                {
                    "turn": turn,
                    "ttft_ms": round((first - started) * 1000, 2),
                    "prompt_eval_count": final.get("prompt_eval_count", 0),
                }
            )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.multiturn", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="installed tag, model dir, or random:<shape>")
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--history-tokens", type=int, default=2000)
    parser.add_argument("--reply-tokens", type=int, default=16)
    parser.add_argument("--conversations", type=int, default=1, help="conversations per daemon, one by one")
    parser.add_argument(
        "--own-replies",
        action="store_true",
        help="the history holds the model's own answers (as a chat UI sends them back), not fixed texts",
    )
    parser.add_argument("--ipc", choices=["shm", "stdio"], default="shm")
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args(argv)
    if args.turns < 1 or args.conversations < 1:
        parser.error("--turns and --conversations must be at least 1")
    model_dir = resolve_model(args.model)

    result: dict[str, Any] = {
        "bench": "multiturn",
        "model": args.model,
        "device": device_name(),
        "turns": args.turns,
        "history_tokens": args.history_tokens,
        "conversations": args.conversations,
        "own_replies": args.own_replies,
    }
    chat = Chat(args.turns, args.history_tokens, args.reply_tokens, args.own_replies)
    for label, flag in (("without_cache", "0"), ("with_cache", "1")):
        with daemon(model_dir, ipc=args.ipc, env={"MLXD_PROMPT_CACHE": flag}) as url:
            # Load and warm up on another conversation, so that turn 1 starts cold.
            _turns(url, Chat(1, args.history_tokens, 2), system="Warm-up.")
            held = [_turns(url, chat, system, c) for c, system in enumerate(_systems(args.conversations))]
        result.update(summary(label, held))
    emit(result, args.table)


def _systems(count: int) -> list[str]:
    """A system prompt per conversation, different from its first character on."""
    return [SYSTEM] + [f"{c}: {SYSTEM}" for c in range(1, count)]


def summary(label: str, conversations: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """Each turn's median TTFT and evaluated tokens over ``conversations`` (lists of turn
    rows), turn N's median over turn 1's, and, with several, every conversation's rows."""
    turns = zip(*conversations, strict=True)
    rows = [
        {
            "turn": same[0]["turn"],
            "ttft_ms": round(median([row["ttft_ms"] for row in same]), 2),
            "prompt_eval_count": median_low([row["prompt_eval_count"] for row in same]),
        }
        for same in turns
    ]
    out: dict[str, Any] = {
        label: rows,
        f"{label}_last_over_first": round(rows[-1]["ttft_ms"] / rows[0]["ttft_ms"], 2),
    }
    if len(conversations) > 1:
        out[f"{label}_each"] = conversations
        out[f"{label}_last_over_first_each"] = [
            round(c[-1]["ttft_ms"] / c[0]["ttft_ms"], 2) for c in conversations
        ]
    return out


if __name__ == "__main__":
    main()
