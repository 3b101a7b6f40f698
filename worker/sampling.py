"""Ollama's sampling options as mlx-lm samplers and logits processors.

``temperature``, ``top_k``, ``top_p`` and ``min_p`` go to mlx-lm's ``make_sampler`` unchanged,
so a request samples exactly as mlx-lm would with the same settings. ``typical_p`` (locally
typical sampling, which mlx-lm lacks) adds one filter; the chain then runs in llama.cpp's
order: top_k → typical_p → top_p → min_p → temperature. ``repeat_penalty``,
``presence_penalty`` and ``frequency_penalty`` are mlx-lm's logits processors over the last
``repeat_last_n`` tokens (prompt included, as llama.cpp counts them).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import lru_cache, partial
from typing import Any

import mlx.core as mx
from mlx_lm.sample_utils import (
    apply_min_p,
    apply_top_k,
    apply_top_p,
    categorical_sampling,
    make_logits_processors,
    make_sampler,
)

from worker.protocol import SamplingOptions

Sampler = Callable[[mx.array], mx.array]
LogitsProcessor = Callable[[mx.array, mx.array], mx.array]

# Ollama's DefaultOptions().
DEFAULTS: SamplingOptions = {
    "temperature": 0.8,
    "top_k": 40,
    "top_p": 0.9,
    "min_p": 0.0,
    "typical_p": 1.0,
    "repeat_penalty": 1.0,
    "repeat_last_n": 64,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "seed": -1,
    "num_keep": 4,
}


def _get(options: SamplingOptions, key: str) -> float:
    value: Any = options.get(key, DEFAULTS.get(key))
    return float(value) if value is not None else 0.0


def apply_typical_p(logprobs: mx.array, typical_p: float) -> mx.array:
    """Locally typical sampling: keep the tokens whose surprise is closest to the entropy,
    the smallest such set whose probability reaches ``typical_p``."""
    probs = mx.exp(logprobs)
    entropy = -mx.sum(mx.where(probs > 0, probs * logprobs, 0.0), axis=-1, keepdims=True)
    distance = mx.abs(-logprobs - entropy)
    order = mx.argsort(distance, axis=-1)
    sorted_probs = mx.take_along_axis(probs, order, axis=-1)
    before = mx.cumsum(sorted_probs, axis=-1) - sorted_probs  # mass of the closer tokens
    keep_sorted = before < typical_p
    keep = mx.put_along_axis(mx.zeros(logprobs.shape, dtype=mx.bool_), order, keep_sorted, axis=-1)
    return mx.where(keep, logprobs, -float("inf"))


GREEDY: Sampler = make_sampler(temp=0.0)


@lru_cache(maxsize=64)
def _shared_sampler(temperature: float, top_p: float, min_p: float, top_k: int) -> Sampler:
    # Requests with the same settings share one sampler object: a batch whose requests all
    # share one samples every row in one call instead of one call per row.
    return make_sampler(temp=temperature, top_p=top_p, min_p=min_p, top_k=top_k)


def build_sampler(options: SamplingOptions, vocab_size: int) -> Sampler:
    """The sampler for one request. ``temperature`` ≤ 0 is greedy (argmax)."""
    temperature = _get(options, "temperature")
    top_k = int(_get(options, "top_k"))
    top_k = top_k if 0 < top_k < vocab_size else 0  # 0 or ≥ vocab: off
    top_p = _get(options, "top_p")
    top_p = top_p if 0.0 < top_p < 1.0 else 0.0  # mlx-lm's "off"
    min_p = min(max(_get(options, "min_p"), 0.0), 1.0)
    typical_p = _get(options, "typical_p")
    if temperature <= 0:
        return GREEDY
    if not 0.0 < typical_p < 1.0:
        return _shared_sampler(temperature, top_p, min_p, top_k)
    stages: list[Sampler] = []
    if top_k:
        stages.append(partial(apply_top_k, top_k=top_k))
    stages.append(partial(apply_typical_p, typical_p=typical_p))
    if top_p:
        stages.append(partial(apply_top_p, top_p=top_p))
    if min_p:
        stages.append(partial(apply_min_p, min_p=min_p))

    def sampler(logprobs: mx.array) -> mx.array:
        for stage in stages:
            logprobs = stage(logprobs)
        return categorical_sampling(logprobs, temperature)

    return sampler


def build_processors(options: SamplingOptions, num_ctx: int) -> list[LogitsProcessor]:
    """Repetition, presence and frequency penalties over the last ``repeat_last_n`` tokens
    (0: none, -1: the whole context). Neutral values add no processor at all."""
    last_n = int(_get(options, "repeat_last_n"))
    if last_n < 0:
        last_n = num_ctx
    if last_n == 0:
        return []
    repeat = _get(options, "repeat_penalty")
    presence = _get(options, "presence_penalty")
    frequency = _get(options, "frequency_penalty")
    processors: list[LogitsProcessor] = make_logits_processors(
        repetition_penalty=repeat if repeat > 0 and repeat != 1.0 else None,
        repetition_context_size=last_n,
        presence_penalty=presence or None,
        presence_context_size=last_n,
        frequency_penalty=frequency or None,
        frequency_context_size=last_n,
    )
    return processors


def seed_random(options: SamplingOptions) -> None:
    """Seed MLX's generator: the request's ``seed`` when ≥ 0 (same seed, same request ⇒ same
    output), otherwise fresh entropy so no earlier request's seed carries over."""
    seed = int(options.get("seed", -1))
    if seed < 0:
        seed = int.from_bytes(os.urandom(8), "little") >> 1
    mx.random.seed(seed % (1 << 63))
