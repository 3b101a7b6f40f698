"""The prompt cache gives the same tokens as a cold run and evaluates only the new suffix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

mx = pytest.importorskip("mlx.core")

from mlx_lm import load  # noqa: E402
from mlx_lm.generate import generate_step  # noqa: E402
from mlx_lm.sample_utils import make_sampler  # noqa: E402

from worker.prefix_cache import PrefixCache  # noqa: E402


@pytest.fixture(scope="module")
def model_and_tokens(tiny_model_dir: Path) -> tuple[Any, list[int]]:
    model, tokenizer = load(str(tiny_model_dir))[:2]
    return model, list(tokenizer.encode("The river town woke slowly on autumn mornings, and the baker"))


def cold(model: Any, tokens: list[int], n: int = 8) -> list[int]:
    return [
        int(t) for t, _ in generate_step(mx.array(tokens), model, max_tokens=n, sampler=make_sampler(0.0))
    ]


def cached(cache: PrefixCache, tokens: list[int], n: int = 8) -> tuple[list[int], int]:
    hit = cache.fetch(tokens)
    assert hit.rest, "there is always a token left to evaluate"
    steps = generate_step(
        mx.array(hit.rest), cache.model, max_tokens=n, sampler=make_sampler(0.0), prompt_cache=hit.cache
    )
    out = [int(t) for t, _ in steps]
    cache.store(tokens + out, hit.cache)
    return out, hit.reused


def test_cached_runs_equal_cold_runs(model_and_tokens: tuple[Any, list[int]]) -> None:
    model, tokens = model_and_tokens
    cache = PrefixCache(model)
    first, reused = cached(cache, tokens)
    assert (first, reused) == (cold(model, tokens), 0)
    longer = [*tokens, *first, 5, 6, 7]  # the next turn: history + answer + new message
    out, reused = cached(cache, longer)
    assert out == cold(model, longer)
    assert reused >= len(tokens) + len(first) - 1
    again, reused = cached(cache, longer)  # the same prompt again: all but one token reused
    assert again == out and reused == len(longer) - 1
    shorter = tokens[:5]  # a prefix of a cached sequence: trimmed copy
    out, reused = cached(cache, shorter)
    assert out == cold(model, shorter) and reused == 4


def test_disabled_by_environment(
    model_and_tokens: tuple[Any, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tokens = model_and_tokens
    monkeypatch.setenv("MLXD_PROMPT_CACHE", "0")
    cache = PrefixCache(model)
    cached(cache, tokens)
    _, reused = cached(cache, tokens)
    assert reused == 0 and len(cache) == 0


def test_bounded_number_of_entries(model_and_tokens: tuple[Any, list[int]]) -> None:
    model, tokens = model_and_tokens
    cache = PrefixCache(model, entries=2)
    for i in range(4):
        cached(cache, [i + 1, *tokens], n=2)
    assert len(cache) == 2


def test_a_cache_that_went_past_its_tokens_is_stored_trimmed_to_them(
    model_and_tokens: tuple[Any, list[int]],
) -> None:
    # A lone request whose stop string was found on the token thread decoded a step or two
    # past it: the cache holds tokens the answer does not. They must not be reused.
    model, tokens = model_and_tokens
    cache = PrefixCache(model)
    hit = cache.fetch(tokens)
    sampler = make_sampler(0.0)
    steps = generate_step(mx.array(hit.rest), model, max_tokens=6, sampler=sampler, prompt_cache=hit.cache)
    out = [int(t) for t, _ in steps]
    kept = [*tokens, *out[:2]]  # the answer ended after two tokens
    assert hit.cache[0].offset > len(kept)
    cache.store(kept, hit.cache)
    assert len(cache) == 1
    longer = [*kept, 9, 10]  # the next turn continues from what was kept, not from the rest
    again, reused = cached(cache, longer)
    assert again == cold(model, longer)
    assert reused == len(kept)
