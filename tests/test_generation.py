"""The worker's generation loop in process (no daemon): options, prompts, ``format``, tools,
thinking, on the tiny models."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from registry.tiny_model import AGENT_ANSWER, AGENT_THOUGHT, write_tiny_model

pytestmark = pytest.mark.e2e

_ids = itertools.count(1)
GREEDY = {"temperature": 0, "num_predict": 16}
USER = [{"role": "user", "content": "Hello there"}]


class Events:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def send(self, payload: bytes) -> None:
        self.events.append(orjson.loads(payload))

    def flush(self) -> None:
        pass

    def of(self, tag: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["t"] == tag]

    @property
    def text(self) -> str:
        return "".join(e["s"] for e in self.of("x"))

    @property
    def thinking(self) -> str:
        return "".join(e["s"] for e in self.of("h"))

    @property
    def stats(self) -> dict[str, Any]:
        [done] = self.of("d")
        return dict(done["stats"])

    @property
    def error(self) -> tuple[str, int]:
        [error] = self.of("e")
        return error["msg"], error["status"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> Iterator[Any]:
    from worker.generation import Generator

    yield Generator(tiny_model_dir)


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from worker.generation import Generator

    path = tmp_path_factory.mktemp("models") / "agent"
    write_tiny_model(path, flavour="agent")
    yield Generator(path)


def run(generator: Any, **command: Any) -> Events:
    events = Events()
    command.setdefault("messages", USER)
    generator.run({"op": "generate", "id": next(_ids), **command}, events, lambda: False)
    return events


def test_num_predict_bounds_the_output(tiny: Any) -> None:
    for n in (1, 5):
        stats = run(tiny, options={"temperature": 0, "num_predict": n}).stats
        assert stats["eval_count"] <= n
    # -2: until the context is full
    stats = run(tiny, options={"temperature": 0, "num_predict": -2, "num_ctx": 24}).stats
    assert stats["prompt_eval_count"] + stats["eval_count"] <= 24


def test_repeat_penalty_changes_greedy_output(tiny: Any) -> None:
    options = {"temperature": 0, "num_predict": 24}
    plain = run(tiny, options=options).text
    penalised = run(tiny, options={**options, "repeat_penalty": 2.0, "repeat_last_n": 64}).text
    assert plain != penalised
    assert run(tiny, options={**options, "repeat_penalty": 2.0, "repeat_last_n": 0}).text == plain
    for key in ("presence_penalty", "frequency_penalty"):
        assert run(tiny, options={**options, key: 5.0}).text != plain


def test_seed_reproducibility(tiny: Any) -> None:
    options = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "num_predict": 12, "typical_p": 0.9}
    first = run(tiny, options={**options, "seed": 7}).text
    assert run(tiny, options={**options, "seed": 7}).text == first
    assert len({run(tiny, options={**options, "seed": s}).text for s in (1, 2, 3)} | {first}) > 1


def test_stop_never_leaks_even_across_tokens(tiny: Any) -> None:
    full = run(tiny, options={"temperature": 0, "num_predict": 30}).text
    assert len(full) > 12
    for start in range(0, 10):  # stops that straddle token boundaries at various places
        stop = full[start : start + 4]
        if not stop.strip():
            continue
        cut = run(tiny, options={"temperature": 0, "num_predict": 30, "stop": [stop]})
        assert cut.text == full[: full.index(stop)]
        assert cut.stats["done_reason"] == "stop"


def test_context_shift_keeps_generating(tiny: Any) -> None:
    options = {"temperature": 0, "num_predict": 30, "num_ctx": 20}
    stats = run(tiny, options=options).stats
    assert stats["eval_count"] == 30 and stats["done_reason"] == "length"
    # num_keep decides what survives the shift, so it changes what follows
    texts = {run(tiny, options={**options, "num_keep": k}).text for k in (0, 12)}
    assert len(texts) == 2
    stats = run(tiny, options=options, shift=False).stats
    assert stats["prompt_eval_count"] + stats["eval_count"] <= 20


def test_truncation_drops_old_messages_but_keeps_system(tiny: Any) -> None:
    messages = [
        {"role": "system", "content": "SYSTEM RULES"},
        *(
            {"role": role, "content": f"message number {i} " * 4}
            for i, role in zip(range(8), itertools.cycle(("user", "assistant")), strict=False)
        ),
        {"role": "user", "content": "the last question"},
    ]
    tokenizer = tiny.tokenizer
    events = run(
        tiny,
        messages=messages,
        options={"temperature": 0, "num_predict": 1, "num_ctx": 80},
        return_context=True,
    )
    prompt = tokenizer.decode(events.stats["context"][: events.stats["prompt_eval_count"]])
    assert events.stats["prompt_eval_count"] <= 80
    assert "SYSTEM RULES" in prompt and "the last question" in prompt
    assert "message number 0" not in prompt and "message number 7" in prompt
    refused = run(tiny, messages=messages, options={"num_ctx": 80}, truncate=False)
    assert refused.error[1] == 400 and refused.error[0].startswith(
        "the prompt is longer than the context length"
    )


def test_go_template_prompt(tiny: Any) -> None:
    template = "{{ if .System }}{{ .System }}\n{{ end }}Q: {{ .Prompt }}\nA: {{ .Response }}"
    messages = [{"role": "system", "content": "Sys"}, {"role": "user", "content": "Why?"}]
    events = run(
        tiny,
        messages=messages,
        template=template,
        options={"temperature": 0, "num_predict": 1},
        return_context=True,
    )
    prompt = tiny.tokenizer.decode(events.stats["context"][: events.stats["prompt_eval_count"]])
    assert prompt == "Sys\nQ: Why?\nA: "
    broken = run(tiny, template="{{ .Prompt ", options=GREEDY)
    assert broken.error[1] == 500


def test_context_is_prepended(tiny: Any) -> None:
    first = run(tiny, options={"temperature": 0, "num_predict": 4}, return_context=True).stats["context"]
    again = run(tiny, options={"temperature": 0, "num_predict": 1}, context=first, return_context=True)
    assert again.stats["context"][: len(first)] == first


def test_suffix_without_fim_tokens(tiny: Any) -> None:
    events = run(tiny, prompt="def f(", suffix="return 1", options=GREEDY)
    assert events.error == ("this model does not support insert", 400)


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "age", "tags", "ok"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_format_schema_is_enforced_on_a_random_model(tiny: Any, seed: int) -> None:
    events = run(
        tiny,
        format=SCHEMA,
        options={"temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": seed, "num_predict": 200},
    )
    assert events.stats["done_reason"] == "stop", events.text
    jsonschema.validate(orjson.loads(events.text), SCHEMA)


def test_format_json_is_an_object(tiny: Any) -> None:
    events = run(tiny, format="json", options={"temperature": 0.7, "seed": 5, "num_predict": 200})
    assert isinstance(json.loads(events.text), dict)  # valid JSON (numbers may be huge)


def test_format_errors(tiny: Any) -> None:
    assert run(tiny, format="xml", options=GREEDY).error[1] == 500
    assert run(tiny, format={"type": "nonsense"}, options=GREEDY).error[1] == 500


def test_agent_thinks_answers_and_calls_a_tool(agent: Any) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    events = run(agent, tools=tools, options={"temperature": 1.0, "num_predict": 20})
    assert events.thinking == AGENT_THOUGHT
    assert events.text == AGENT_ANSWER
    [calls] = events.of("c")
    assert calls["calls"][0]["function"] == {
        "index": 0,
        "name": "get_weather",
        "arguments": {"city": "Paris"},
    }
    # think off: the template closes the reasoning block, the model answers directly
    events = run(agent, tools=tools, think=False, options={"temperature": 0, "num_predict": 20})
    assert events.thinking == "" and events.text == AGENT_ANSWER and events.of("c")
    # no tools: the call markup is plain content
    events = run(agent, options={"temperature": 0, "num_predict": 20})
    assert events.text.startswith(AGENT_ANSWER + "<tool_call>") and not events.of("c")


SKY = {
    "type": "object",
    "properties": {"sky": {"enum": ["clear", "cloudy"]}},
    "required": ["sky"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_format_applies_after_thinking(agent: Any, temperature: float) -> None:
    """As Ollama runs a thinking model with ``format``: the reasoning block first, free, then
    the answer under the schema (the scripted agent model opens the block with its first
    token, so a schema from the first token would have suppressed it)."""
    options = {"temperature": temperature, "seed": 3, "num_predict": 40}
    events = run(agent, format=SKY, options=options)
    assert events.thinking == AGENT_THOUGHT
    assert orjson.loads(events.text)["sky"] in ("clear", "cloudy")
    assert events.stats["done_reason"] == "stop"
    # think off: the template closes the block, the schema applies from the first token
    events = run(agent, format=SKY, think=False, options=options)
    assert events.thinking == ""
    assert orjson.loads(events.text)["sky"] in ("clear", "cloudy")
    # raw: no template and no reasoning parser, so the schema applies from the first token
    prompt = "<|im_start|>user\nWeather?<|im_end|>\n<|im_start|>assistant\n"
    events = run(agent, raw=True, prompt=prompt, messages=[], format=SKY, options=options)
    assert orjson.loads(events.text)["sky"] in ("clear", "cloudy")


def test_logprobs_of_every_generated_token(tiny: Any) -> None:
    events = run(tiny, logprobs=True, top_logprobs=3, options=GREEDY)
    entries = [entry for event in events.of("l") for entry in event["lp"]]
    assert len(entries) == events.stats["eval_count"] > 0
    # one entry per token, in order (the response drops the output's leading space); the
    # raw bytes add up to the text even where a character spans tokens
    assert "".join(e["token"] for e in entries).lstrip() == events.text
    assert b"".join(bytes(e["bytes"]) for e in entries).decode(errors="replace").lstrip() == events.text
    for entry in entries:
        assert entry["logprob"] <= 0.0
        top = entry["top_logprobs"]
        assert len(top) == 3
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert top[0]["token"] == entry["token"]  # greedy: the chosen token is the likeliest
        assert top[0]["logprob"] == pytest.approx(entry["logprob"])
    # each token's entry is sent before the text it produced
    order = [e["t"] for e in events.events if e["t"] in ("l", "x")]
    assert order[0] == "l"
    # without top_logprobs: no alternatives; without logprobs: nothing
    plain = run(tiny, logprobs=True, options=GREEDY)
    assert all("top_logprobs" not in e for event in plain.of("l") for e in event["lp"])
    assert run(tiny, options=GREEDY).of("l") == []


def test_format_ignores_schema_keywords_it_cannot_enforce(tiny: Any) -> None:
    """Like Ollama's grammar conversion: keywords outside what can be enforced token by token
    (``uniqueItems``, ``if``/``then``, ``not``…) are left out; the rest still binds."""
    schema = {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2, "uniqueItems": True}
        },
        "required": ["tags"],
        "additionalProperties": False,
        "if": {"properties": {"tags": {"minItems": 1}}},
        "then": {"required": ["tags"]},
        "not": {"required": ["other"]},
    }
    events = run(tiny, format=schema, options={"temperature": 1.0, "seed": 2, "num_predict": 60})
    assert events.stats["done_reason"] == "stop", events.text
    value = orjson.loads(events.text)
    assert set(value) == {"tags"} and set(value["tags"]) <= {"a", "b"} and len(value["tags"]) <= 2


def test_metal_wires_the_weights_and_warns_when_they_barely_fit(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """On Metal the worker sets the wired limit to the GPU's recommended working set (for
    its whole life); a model near that size gets a warning. Elsewhere nothing is wired."""
    import mlx.core as mx

    from worker import generation

    wired: list[bool] = []
    monkeypatch.setattr(generation, "maybe_set_recommended_wired_limit", lambda: wired.append(True) or 0)
    monkeypatch.setattr(mx, "device_info", lambda: {"max_recommended_working_set_size": 1 << 40})
    generation.Generator(tiny_model_dir)
    assert wired == [True] and "working set" not in caplog.text
    monkeypatch.setattr(mx, "device_info", lambda: {"max_recommended_working_set_size": 1000})
    generation.Generator(tiny_model_dir)
    assert "close to the GPU's recommended working set" in caplog.text


@pytest.mark.parametrize(
    ("ending", "opened"),
    [
        ("<think>", True),
        ("<think>\n", True),
        ("<think>\n\n", True),
        ("", False),
        ("<think></think>\n", False),
    ],
)
def test_a_prompt_that_ends_inside_the_reasoning_block(agent: Any, ending: str, opened: bool) -> None:
    """Templates that open the block for the model (DeepSeek-R1's end with ``<think>\\n``):
    the output starts as thinking, so ``format`` waits for the block to close."""
    template = "<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n" + ending
    command = {"op": "generate", "id": 1, "messages": USER, "template": template}
    assert agent.prompts.build(command, 256).opened_thinking is opened


def test_a_character_cut_short_by_the_end_is_dropped(tiny: Any) -> None:
    """A response that ends inside a multi-byte character (``num_predict`` reached after its
    first byte's token) ends without U+FFFD, like Ollama's; whole characters are kept."""

    def finish(pieces: list[str]) -> Events:
        events = Events()
        command = {"op": "generate", "id": next(_ids), "messages": USER, "options": GREEDY}
        seq = tiny.sequence(command, events, lambda _: False)
        for piece in pieces:  # byte-level BPE: one character per byte
            seq.accept(tiny.tokenizer.convert_tokens_to_ids(piece))
        seq.finish("length")
        return events

    e_acute = [chr(0xC3), chr(0xA9)]  # "é" is C3 A9
    assert finish(["H", "i", *e_acute]).text == "Hié"
    assert finish(["H", "i", e_acute[0]]).text == "Hi"
    assert finish([e_acute[0]]).of("x") == []  # nothing left to send: no empty chunk
    assert finish(["H", "i", e_acute[0]]).stats["eval_count"] == 3


def test_the_load_prefills_one_prompt_per_kernel_size_class(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """So that a GPU builds its prefill kernels at load, not in a user's first request; the CPU
    builds none per shape, and its prefill is slow: it skips them."""
    import worker.generation as generation

    lengths: list[int] = []
    real = generation.generate_step

    def recording(prompt: Any, model: Any, **kwargs: Any) -> Any:
        lengths.append(prompt.size)
        return real(prompt, model, **kwargs)

    monkeypatch.setattr(generation, "generate_step", recording)
    generation.Generator(tiny_model_dir)  # on this machine's CPU
    assert not generation.builds_kernels_per_shape()
    assert set(generation.PREFILL_WARM_UP).isdisjoint(lengths)
    lengths.clear()
    monkeypatch.setattr(generation, "builds_kernels_per_shape", lambda: True)  # as on a GPU
    monkeypatch.setenv("OLLAMA_NUM_PARALLEL", "1")  # the batch warm-up needs a GPU indeed
    generation.Generator(tiny_model_dir)
    assert set(generation.PREFILL_WARM_UP) <= set(lengths)
    assert max(generation.PREFILL_WARM_UP) > 64  # past the largest class (64 rows)


def test_the_load_reports_each_step(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker turns each call into a ``loading`` event, which keeps a long first load on
    a GPU within ``OLLAMA_LOAD_TIMEOUT``: weights read, greedy and sampled warm-ups, and on a
    GPU each prefill size too."""
    import worker.generation as generation

    steps: list[int] = []
    generation.Generator(tiny_model_dir, lambda: steps.append(1))
    assert len(steps) == 3  # this machine's CPU
    steps.clear()
    monkeypatch.setattr(generation, "builds_kernels_per_shape", lambda: True)
    monkeypatch.setenv("OLLAMA_NUM_PARALLEL", "1")
    generation.Generator(tiny_model_dir, lambda: steps.append(1))
    assert len(steps) == 3 + len(generation.PREFILL_WARM_UP)
