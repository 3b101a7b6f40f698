"""Continuous batching in the worker (in process, tiny model): batched output equals the
output of the same requests run alone, requests join and leave mid-flight, a cancelled
request frees its slot at once, and the prompt cache counts only evaluated tokens."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from worker.batching import JobQueue

pytestmark = pytest.mark.e2e

_ids = itertools.count(1000)


class Recorder:
    """An EventWriter that sorts events by request and can act after a given event."""

    def __init__(self) -> None:
        self.by_id: dict[int, list[dict[str, Any]]] = defaultdict(list)
        self.order: list[int] = []  # request id of every text event, in order
        self.flushes = 0
        self.hooks: list[tuple[Callable[[], bool], Callable[[], None]]] = []

    def send(self, payload: bytes) -> None:
        event = orjson.loads(payload)
        self.by_id[event["id"]].append(event)
        if event["t"] == "x":
            self.order.append(event["id"])
        for when, then in list(self.hooks):
            if when():
                self.hooks.remove((when, then))
                then()

    def flush(self) -> None:
        self.flushes += 1

    def text(self, request_id: int) -> str:
        return "".join(e["s"] for e in self.by_id[request_id] if e["t"] == "x")

    def stats(self, request_id: int) -> dict[str, Any]:
        [done] = [e for e in self.by_id[request_id] if e["t"] == "d"]
        return dict(done["stats"])

    def count(self, request_id: int) -> int:
        return sum(1 for e in self.by_id[request_id] if e["t"] == "x")


def command(prompt: str, num_predict: int = 12, **options: Any) -> dict[str, Any]:
    return {
        "op": "generate",
        "id": next(_ids),
        "messages": [{"role": "user", "content": prompt}],
        "options": {"temperature": 0, "num_predict": num_predict, **options},
    }


PROMPTS = ["Hello there", "What is the capital of France?", "Tell me about the river town", "Count to ten"]


@pytest.fixture(scope="module")
def generator(tiny_model_dir: Path) -> Iterator[Any]:
    from worker.generation import Generator

    yield Generator(tiny_model_dir)


def run_alone(generator: Any, cmd: dict[str, Any]) -> Recorder:
    """``cmd`` by itself, as request 1, with a cold cache."""
    rec = Recorder()
    generator.prefix_cache.enabled = False
    try:
        generator.run({**cmd, "id": 1}, rec, lambda: False)
    finally:
        generator.prefix_cache.enabled = True
    return rec


def alone(generator: Any, cmd: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    rec = run_alone(generator, cmd)
    return rec.text(1), rec.stats(1)


def serve(
    generator: Any, commands: list[dict[str, Any]], rec: Recorder, cancelled: set[int] | None = None
) -> None:
    jobs = JobQueue()
    for cmd in commands[1:]:
        jobs.put(cmd)  # type: ignore[arg-type]
    generator.serve(commands[0], jobs, rec, lambda rid: rid in (cancelled or set()))


def test_batched_equals_alone(generator: Any) -> None:
    commands = [command(p, num_predict=8 + 2 * i) for i, p in enumerate(PROMPTS)]
    expected = [alone(generator, c) for c in commands]
    rec = Recorder()
    serve(generator, commands, rec)
    for cmd, (text, stats) in zip(commands, expected, strict=True):
        assert rec.text(cmd["id"]) == text
        got = rec.stats(cmd["id"])
        assert got["eval_count"] == stats["eval_count"]
        assert got["done_reason"] == stats["done_reason"]
    # They really ran together: text events of different requests interleave.
    firsts = [rec.order.index(c["id"]) for c in commands if c["id"] in rec.order]
    lasts = [len(rec.order) - 1 - rec.order[::-1].index(c["id"]) for c in commands if c["id"] in rec.order]
    assert max(firsts) < min(lasts)
    # One flush per step, not per token.
    assert rec.flushes < len(rec.order)


def test_join_and_leave_mid_flight(generator: Any) -> None:
    first = command(PROMPTS[0], num_predict=30)
    short = command(PROMPTS[1], num_predict=3)
    late = command(PROMPTS[2], num_predict=6)
    rec = Recorder()
    jobs = JobQueue()
    jobs.put(short)  # type: ignore[arg-type]
    # ``late`` arrives once ``first`` has produced 10 text events: it joins a running batch.
    rec.hooks.append((lambda: rec.count(first["id"]) == 10, lambda: jobs.put(late)))  # type: ignore[arg-type]
    generator.serve(first, jobs, rec, lambda rid: False)
    assert rec.stats(short["id"])["eval_count"] <= 3  # left early
    assert rec.stats(late["id"])["done_reason"] in ("stop", "length")
    assert rec.order.index(late["id"]) > 10 - 1  # joined after the first 10 tokens
    assert rec.text(late["id"]) == alone(generator, late)[0]
    assert rec.text(first["id"]) == alone(generator, first)[0]


def test_one_slot_keeps_the_running_request_on_the_fast_path(
    generator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With OLLAMA_NUM_PARALLEL=1 a request that arrives meanwhile cannot join, so the running
    one is not moved into a batch (a slower path, for nothing): it finishes alone, with the
    output it has alone, and the other stays queued for the worker's next turn."""
    from worker import generation

    def no_batch(*args: Any) -> None:
        raise AssertionError("moved into a batch with one slot")

    monkeypatch.setenv("OLLAMA_NUM_PARALLEL", "1")
    monkeypatch.setattr(generation, "BatchRunner", no_batch)
    first = command(PROMPTS[0], num_predict=8)
    second = command(PROMPTS[1], num_predict=4)
    rec = Recorder()
    jobs = JobQueue()
    jobs.put(second)  # type: ignore[arg-type]
    generator.serve(first, jobs, rec, lambda rid: False)
    assert rec.text(first["id"]) == alone(generator, first)[0]
    assert rec.stats(first["id"])["eval_count"] == 8
    assert jobs.take() == second
    assert not rec.by_id[second["id"]]


def test_cancel_frees_the_slot(generator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_NUM_PARALLEL", "2")
    long_a = command(PROMPTS[0], num_predict=40)
    long_b = command(PROMPTS[1], num_predict=40)
    waiting = command(PROMPTS[2], num_predict=4)
    cancelled: set[int] = set()
    rec = Recorder()
    rec.hooks.append((lambda: rec.count(long_b["id"]) == 3, lambda: cancelled.add(long_b["id"])))
    serve(generator, [long_a, long_b, waiting], rec, cancelled)
    assert rec.stats(long_b["id"])["done_reason"] == "cancel"
    assert rec.stats(long_b["id"])["eval_count"] <= 4
    # The waiting request took the freed slot while long_a was still running.
    a_events = [i for i, rid in enumerate(rec.order) if rid == long_a["id"]]
    w_events = [i for i, rid in enumerate(rec.order) if rid == waiting["id"]]
    assert rec.stats(long_a["id"])["eval_count"] == 40, "the test needs long_a to run its full budget"
    assert w_events and w_events[0] < a_events[-1]
    assert rec.stats(waiting["id"])["done_reason"] in ("stop", "length")


def test_prompt_cache_counts_only_evaluated_tokens(generator: Any) -> None:
    first = command("The river town woke slowly on autumn mornings.", num_predict=4)
    rec = Recorder()
    generator.run(first, rec, lambda: False)
    full = rec.stats(first["id"])["prompt_eval_count"]
    again = {**first, "id": next(_ids)}
    generator.run(again, rec, lambda: False)
    assert rec.stats(again["id"])["prompt_eval_count"] == 1  # everything else came from the cache
    assert rec.text(again["id"]) == rec.text(first["id"])
    assert full > 5


def test_format_survives_the_move_into_a_batch(generator: Any) -> None:
    """A constrained request that starts alone (here from an exact prompt-cache hit) and
    moves into a batch must not feed its last token to the grammar twice."""
    schema = {
        "type": "object",
        "properties": {"sky": {"enum": ["clear", "cloudy"]}},
        "required": ["sky"],
        "additionalProperties": False,
    }
    options = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "num_predict": 40}

    def constrained(seed: int) -> dict[str, Any]:
        return {**command("Weather?"), "format": schema, "options": {**options, "seed": seed}}

    rec = Recorder()
    warm = constrained(1)
    generator.run(warm, rec, lambda: False)  # fills the prompt cache
    first, second = constrained(2), constrained(3)
    serve(generator, [first, second], rec)
    for cmd in (warm, first, second):
        assert orjson.loads(rec.text(cmd["id"]))["sky"] in ("clear", "cloudy")


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from registry.tiny_model import write_tiny_model
    from worker.generation import Generator

    path = tmp_path_factory.mktemp("models") / "agent"
    write_tiny_model(path, flavour="agent")
    yield Generator(path)


def test_format_after_thinking_survives_the_move_into_a_batch(agent: Any) -> None:
    """A thinking request with ``format`` that moves into a batch right after opening its
    reasoning block keeps thinking freely and then answers under the schema."""
    from registry.tiny_model import AGENT_THOUGHT

    schema = {"type": "object", "properties": {"sky": {"enum": ["clear"]}}, "required": ["sky"]}
    options = {"temperature": 0, "num_predict": 40}
    first, second = ({**command("Weather?"), "format": schema, "options": options} for _ in range(2))
    rec = Recorder()
    serve(agent, [first, second], rec)
    for cmd in (first, second):
        thoughts = "".join(e["s"] for e in rec.by_id[cmd["id"]] if e["t"] == "h")
        assert thoughts == AGENT_THOUGHT
        assert orjson.loads(rec.text(cmd["id"])) == {"sky": "clear"}


def test_logprobs_in_a_batch_equal_those_alone(generator: Any) -> None:
    commands = [{**command(p, num_predict=6), "logprobs": True, "top_logprobs": 2} for p in PROMPTS[:3]]

    def entries(rec: Recorder, request_id: int) -> list[dict[str, Any]]:
        return [e for event in rec.by_id[request_id] if event["t"] == "l" for e in event["lp"]]

    alone_entries = [entries(run_alone(generator, cmd), 1) for cmd in commands]
    rec = Recorder()
    serve(generator, commands, rec)
    for cmd, expected in zip(commands, alone_entries, strict=True):
        got = entries(rec, cmd["id"])
        assert len(got) == rec.stats(cmd["id"])["eval_count"] == len(expected)
        assert [e["token"] for e in got] == [e["token"] for e in expected]
        for g, e in zip(got, expected, strict=True):
            assert g["logprob"] == pytest.approx(e["logprob"], abs=1e-4)
            assert [t["token"] for t in g["top_logprobs"]] == [t["token"] for t in e["top_logprobs"]]
