"""Ollama's sampling options against mlx-lm's own sampler and logits processors."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.sample_utils import make_logits_processors, make_sampler

from worker.protocol import SamplingOptions
from worker.sampling import apply_typical_p, build_processors, build_sampler, seed_random

VOCAB = 64


def logprobs(seed: int = 0) -> mx.array:
    logits = mx.array(np.random.default_rng(seed).normal(0, 2, size=(1, VOCAB)).astype(np.float32))
    return logits - mx.logsumexp(logits, keepdims=True)


def draws(sampler: object, seed: int, n: int = 40) -> list[int]:
    mx.random.seed(seed)
    lp = logprobs()
    return [int(sampler(lp).item()) for _ in range(n)]  # type: ignore[operator]


@pytest.mark.parametrize(
    "options",
    [
        {"temperature": 0.8, "top_k": 40, "top_p": 0.9},  # Ollama's defaults
        {"temperature": 1.0, "top_k": 5, "top_p": 1.0},
        {"temperature": 0.5, "top_k": 0, "top_p": 0.5, "min_p": 0.05},
    ],
)
def test_same_draws_as_mlx_lm(options: SamplingOptions) -> None:
    ours = build_sampler(options, VOCAB)
    theirs = make_sampler(
        temp=options["temperature"],
        top_p=options["top_p"] if options["top_p"] < 1 else 0.0,
        top_k=options["top_k"],
        min_p=options.get("min_p", 0.0),
    )
    assert draws(ours, 7) == draws(theirs, 7)


def test_temperature_zero_is_argmax() -> None:
    lp = logprobs(3)
    assert int(build_sampler({"temperature": 0}, VOCAB)(lp).item()) == int(mx.argmax(lp).item())


def test_top_k_one_is_greedy_and_large_top_k_is_off() -> None:
    lp = logprobs(4)
    sampler = build_sampler({"temperature": 1.5, "top_k": 1, "top_p": 1.0}, VOCAB)
    assert {int(sampler(lp).item()) for _ in range(20)} == {int(mx.argmax(lp).item())}
    build_sampler({"temperature": 1.0, "top_k": 10 * VOCAB}, VOCAB)(lp)  # no error


def test_min_p_and_top_p_narrow_the_choice() -> None:
    lp = logprobs(5)
    wide = {
        int(build_sampler({"temperature": 2.0, "top_k": 0, "top_p": 1.0}, VOCAB)(lp).item())
        for _ in range(200)
    }
    narrow = {
        int(build_sampler({"temperature": 2.0, "top_k": 0, "top_p": 1.0, "min_p": 0.5}, VOCAB)(lp).item())
        for _ in range(200)
    }
    assert len(narrow) < len(wide)


def test_typical_p_keeps_the_tokens_closest_to_the_entropy() -> None:
    probs = np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32)
    lp = mx.log(mx.array(probs))[None]
    entropy = float(-(probs * np.log(probs)).sum())
    order = np.argsort(np.abs(-np.log(probs) - entropy))
    kept = np.isfinite(np.array(apply_typical_p(lp, 0.5))[0])
    # the closest token alone has < 0.5 of the mass, so the next closest is kept too
    assert set(np.flatnonzero(kept)) == set(order[:2])
    sampler = build_sampler({"temperature": 1.0, "top_k": 0, "top_p": 1.0, "typical_p": 0.5}, 4)
    assert {int(sampler(lp).item()) for _ in range(50)} <= set(order[:2].tolist())


def test_penalties_match_mlx_lm() -> None:
    tokens = mx.array([1, 2, 2, 3, 9, 9, 9])
    logits = logprobs(6)
    options: SamplingOptions = {"repeat_penalty": 1.3, "presence_penalty": 0.5, "frequency_penalty": 0.2}
    ours = build_processors({**options, "repeat_last_n": 4}, 4096)
    theirs = make_logits_processors(
        repetition_penalty=1.3,
        repetition_context_size=4,
        presence_penalty=0.5,
        presence_context_size=4,
        frequency_penalty=0.2,
        frequency_context_size=4,
    )
    a, b = mx.array(logits), mx.array(logits)  # mlx-lm's processors write in place
    for p in ours:
        a = p(tokens, a)
    for p in theirs:
        b = p(tokens, b)
    assert mx.allclose(a, b).item()
    assert not mx.allclose(a, logits).item()


def test_neutral_penalties_add_no_processor() -> None:
    assert build_processors({}, 4096) == []  # repeat_penalty 1.0, no presence/frequency
    assert build_processors({"repeat_penalty": 1.5, "repeat_last_n": 0}, 4096) == []
    assert len(build_processors({"repeat_penalty": 1.5, "repeat_last_n": -1}, 4096)) == 1


def test_seed() -> None:
    sampler = build_sampler({"temperature": 1.0, "top_k": 0, "top_p": 1.0}, VOCAB)
    lp = logprobs(8)

    def sample(options: SamplingOptions) -> list[int]:
        seed_random(options)
        return [int(sampler(lp).item()) for _ in range(30)]

    assert sample({"seed": 42}) == sample({"seed": 42})
    assert sample({"seed": 42}) != sample({"seed": 43})
    assert sample({"seed": -1}) != sample({"seed": -1})
