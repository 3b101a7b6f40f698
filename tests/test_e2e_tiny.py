"""End to end: a real daemon, a real worker process, real MLX, the unchanged ``ollama`` client.

Runs once per IPC build (shared memory and stdio) through the ``tiny_daemon`` fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from tests.conftest import TINY, Daemon

pytestmark = pytest.mark.e2e

GREEDY = {"temperature": 0, "num_predict": 12}


@pytest.fixture(scope="module")
def client(tiny_daemon: Daemon) -> Iterator[ollama.Client]:
    client = ollama.Client(host=tiny_daemon.url)
    yield client
    client._client.close()  # otherwise its pooled connection is reported as unclosed at exit


def test_list_and_show(client: ollama.Client) -> None:
    models = client.list().models
    assert [m.model for m in models] == [f"{TINY}:latest"]
    assert models[0].digest and len(models[0].digest) == 64
    assert models[0].size and models[0].size > 0
    assert models[0].details and models[0].details.family == "qwen2"
    show = client.show(TINY)
    assert show.modelinfo is not None and show.modelinfo["general.architecture"] == "qwen2"
    assert show.template and "<|im_start|>" in show.template
    assert show.capabilities == ["completion"]


def test_generate_streamed_and_not(client: ollama.Client) -> None:
    whole = client.generate(model=TINY, prompt="Hello there", options=GREEDY)
    assert whole.done and whole.done_reason in ("stop", "length")
    assert whole.model == TINY
    assert whole.eval_count and 0 < whole.eval_count <= 12
    assert whole.prompt_eval_count and whole.prompt_eval_count > 3
    assert whole.total_duration and whole.eval_duration and whole.prompt_eval_duration
    assert whole.context and len(whole.context) == whole.prompt_eval_count + whole.eval_count
    parts = list(client.generate(model=TINY, prompt="Hello there", options=GREEDY, stream=True))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(p.response for p in parts) == whole.response
    assert parts[-1].eval_count == whole.eval_count


def test_chat_streamed_and_not(client: ollama.Client) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    whole = client.chat(model=TINY, messages=messages, options=GREEDY)
    assert whole.message.role == "assistant"
    assert whole.done and whole.eval_count and whole.prompt_eval_count
    parts = list(client.chat(model=TINY, messages=messages, options=GREEDY, stream=True))
    assert parts[-1].done and parts[-1].done_reason == whole.done_reason
    assert "".join(p.message.content or "" for p in parts) == whole.message.content


def test_num_predict_limits_tokens(client: ollama.Client) -> None:
    out = client.generate(model=TINY, prompt="Count", options={"temperature": 0, "num_predict": 3})
    # A random model may emit EOS early; it never exceeds the budget.
    assert out.eval_count is not None and out.eval_count <= 3
    if out.eval_count == 3:
        assert out.done_reason == "length"


def test_seed_makes_sampling_reproducible(client: ollama.Client) -> None:
    options = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": 1234, "num_predict": 16}
    first = client.generate(model=TINY, prompt="Once upon a time", options=options).response
    second = client.generate(model=TINY, prompt="Once upon a time", options=options).response
    assert first == second
    others = {
        client.generate(model=TINY, prompt="Once upon a time", options={**options, "seed": s}).response
        for s in (1, 2, 3)
    }
    assert len(others | {first}) > 1, "different seeds should sample different text"


def test_stop_string_is_not_emitted(client: ollama.Client) -> None:
    full = client.generate(model=TINY, prompt="Tell me", options={"temperature": 0, "num_predict": 24})
    text = full.response
    if len(text) < 6:
        pytest.skip("the random model ended too early to pick a stop string")
    stop = text[3:6]
    cut = client.generate(
        model=TINY, prompt="Tell me", options={"temperature": 0, "num_predict": 24, "stop": [stop]}
    )
    assert cut.response == text[: text.index(stop)]
    assert cut.done_reason == "stop"


def test_greedy_equals_mlx_lm(client: ollama.Client, tiny_model_dir: Path) -> None:
    from mlx_lm import generate as mlx_generate
    from mlx_lm import load
    from mlx_lm.sample_utils import make_sampler

    model, tokenizer = load(str(tiny_model_dir))
    messages = [{"role": "user", "content": "What is MLX?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    expected = mlx_generate(model, tokenizer, prompt, max_tokens=20, sampler=make_sampler(temp=0.0))
    got = client.chat(model=TINY, messages=messages, options={"temperature": 0, "num_predict": 20})
    assert got.message.content == expected


def test_unknown_model_is_404(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.generate(model="nope", prompt="hi")
    assert info.value.status_code == 404
    assert info.value.error == "model 'nope' not found"


def test_load_and_unload_idioms(client: ollama.Client) -> None:
    loaded = client.generate(model=TINY, prompt="")
    assert loaded.done and loaded.done_reason == "load"
    unloaded = client.generate(model=TINY, prompt="", keep_alive=0)
    assert unloaded.done and unloaded.done_reason == "unload"
    # The next request loads it again.
    again = client.generate(model=TINY, prompt="Hi", options=GREEDY)
    assert again.done and again.load_duration and again.load_duration > 0


def test_logprobs(client: ollama.Client) -> None:
    """``logprobs``/``top_logprobs`` through the official client: one entry per generated
    token, each streamed chunk carrying those of its own tokens, all of them at once
    without streaming."""
    whole = client.generate(model=TINY, prompt="Hello there", options=GREEDY, logprobs=True, top_logprobs=2)
    assert whole.logprobs and len(whole.logprobs) == whole.eval_count
    for entry in whole.logprobs:
        assert entry.logprob <= 0 and entry.top_logprobs and len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].token == entry.token  # greedy
    parts = list(
        client.generate(model=TINY, prompt="Hello there", options=GREEDY, logprobs=True, stream=True)
    )
    streamed = [entry for part in parts for entry in part.logprobs or []]
    assert [e.token for e in streamed] == [e.token for e in whole.logprobs]
    assert all(e.top_logprobs is None for e in streamed)
    chat = client.chat(
        model=TINY, messages=[{"role": "user", "content": "Hi"}], options=GREEDY, logprobs=True
    )
    assert chat.logprobs and len(chat.logprobs) == chat.eval_count
    assert client.generate(model=TINY, prompt="Hello there", options=GREEDY).logprobs is None


def test_debug_render_only(tiny_daemon: Daemon) -> None:
    """``_debug_render_only``: the prompt as the model would see it, nothing generated."""
    body = {"model": TINY, "prompt": "Hello there", "system": "Be brief.", "_debug_render_only": True}
    answer = httpx.post(tiny_daemon.url + "/api/generate", json=body, timeout=60).json()
    assert answer["response"] == "" and answer["done"] is False and "eval_count" not in answer
    rendered = answer["_debug_info"]["rendered_template"]
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHello there<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    messages = [{"role": "user", "content": "Hi"}]
    answer = httpx.post(
        tiny_daemon.url + "/api/chat",
        json={"model": TINY, "messages": messages, "_debug_render_only": True, "stream": True},
        timeout=60,
    ).json()
    assert answer["message"] == {"role": "", "content": ""}
    assert answer["_debug_info"]["rendered_template"].endswith(
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
