"""Decode attention of a continuous batch (worker.batched_attention).

The CUDA kernel only runs on an NVIDIA GPU (checked there against MLX's masked attention
for 160 to 4,200 keys, float16 and bfloat16). Here, on the CPU: that the
rule the kernel implements ("row b attends to its keys from ``left_padding[b]`` on") is
exactly what mlx-lm's mask says for a real batch cache whose rows joined with different
prompt lengths, that only such decode steps are sent to it, and that the switch of the
model's attention function is undone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest
from mlx_lm import load
from mlx_lm.generate import BatchGenerator
from mlx_lm.models import base, qwen2
from mlx_lm.models.cache import BatchKVCache, KVCache

from worker import batched_attention


def _padded_rule(q: mx.array, k: mx.array, v: mx.array, left_padding: mx.array, scale: float) -> mx.array:
    """Per row, plain attention over the keys from ``left_padding[b]`` on (no mask at all)."""
    rows = []
    repeats = q.shape[1] // k.shape[1]
    for b, start in enumerate(left_padding.tolist()):
        keys = mx.repeat(k[b : b + 1, :, start:], repeats, axis=1)
        values = mx.repeat(v[b : b + 1, :, start:], repeats, axis=1)
        weights = mx.softmax((q[b : b + 1] * scale) @ keys.swapaxes(-1, -2), axis=-1, precise=True)
        rows.append(weights @ values)
    return mx.concatenate(rows, axis=0)


def _batch_caches(model_dir: Path) -> tuple[Any, list[Any]]:
    """The model and its batch caches after rows with prompts of 3, 9 and 17 tokens joined
    and decoded a few steps (so their left paddings differ)."""
    model = load(str(model_dir))[0]
    batch = BatchGenerator(model, stop_tokens=[], completion_batch_size=3, prefill_batch_size=3)
    batch.insert([[5] * 3, [6] * 9, [7] * 17], max_tokens=[20] * 3)
    for _ in range(4):
        batch.next_generated()
    caches = batch._generation_batch.prompt_cache
    return model, caches


def test_the_mask_of_a_decode_step_is_the_left_padding_rule(tiny_model_dir: Path) -> None:
    _, caches = _batch_caches(tiny_model_dir)
    cache = caches[0]
    assert isinstance(cache, BatchKVCache)
    assert len(set(cache.left_padding.tolist())) == 3  # three different paddings
    # A decode step as the model runs it: the mask first, then this step's key and value.
    mask = cache.make_mask(1)
    kv_heads, dim = cache.keys.shape[1], cache.keys.shape[-1]
    new = mx.random.normal((2, 3, kv_heads, 1, dim), key=mx.random.key(0))
    keys, values = cache.update_and_fetch(new[0], new[1])
    assert mask.shape[-1] == keys.shape[2]
    q = mx.random.normal((3, kv_heads * 2, 1, dim), key=mx.random.key(1))
    scale = keys.shape[-1] ** -0.5
    expected = base.scaled_dot_product_attention(q, keys, values, cache, scale, mask)
    got = _padded_rule(q, keys, values, cache.left_padding, scale)
    assert mx.allclose(got, expected, atol=1e-5).item()


def test_only_half_precision_decode_steps_of_a_batch_cache_go_to_the_kernel() -> None:
    cache = BatchKVCache([2, 0])
    cache.update_and_fetch(
        mx.zeros((2, 2, 5, 64), dtype=mx.bfloat16), mx.zeros((2, 2, 5, 64), dtype=mx.bfloat16)
    )
    keys = cache.keys_and_values()[0]
    q = mx.zeros((2, 4, 1, 64), dtype=mx.bfloat16)
    mask = cache.make_mask(1)
    assert batched_attention.applies(q, keys, cache, mask, None)
    assert not batched_attention.applies(q.astype(mx.float32), keys.astype(mx.float32), cache, mask, None)
    prefill = mx.zeros((2, 4, 3, 64), dtype=mx.bfloat16)
    assert not batched_attention.applies(prefill, keys, cache, mask, None)
    assert not batched_attention.applies(q, keys, cache, mask, mx.zeros((4,)))  # attention sinks
    assert not batched_attention.applies(q, keys, KVCache(), None, None)  # one sequence
    odd = mx.zeros((2, 4, 1, 48), dtype=mx.bfloat16)  # head size not a multiple of 32
    assert not batched_attention.applies(odd, odd, cache, mask, None)


def test_the_switch_is_off_on_the_cpu_and_undone_after_the_batch(tiny_model_dir: Path) -> None:
    model = load(str(tiny_model_dir))[0]
    with batched_attention.installed(model) as switched:
        assert switched == 0  # no CUDA here
        assert qwen2.scaled_dot_product_attention is base.scaled_dot_product_attention
    with batched_attention.installed(model, force=True) as switched:
        assert switched == 1
        assert qwen2.scaled_dot_product_attention is batched_attention.batched_sdpa
    assert qwen2.scaled_dot_product_attention is base.scaled_dot_product_attention


def test_steps_the_kernel_does_not_take_run_as_before(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the switch on, a batch of the (float32) tiny model never reaches the kernel and
    decodes exactly the tokens it decodes without it."""

    def no_kernel(*args: Any) -> mx.array:
        raise AssertionError("the kernel was called")

    monkeypatch.setattr(batched_attention, "decode_attention", no_kernel)

    def tokens(switched: bool) -> list[list[int]]:
        model = load(str(tiny_model_dir))[0]
        batch = BatchGenerator(model, stop_tokens=[], completion_batch_size=3, prefill_batch_size=3)
        batch.insert([[5] * 3, [6] * 9, [7] * 17], max_tokens=[12] * 3)
        out: dict[int, list[int]] = {}
        with batched_attention.installed(model, force=switched):
            while len(out) < 3 or any(len(t) < 12 for t in out.values()):
                for r in batch.next_generated():
                    out.setdefault(r.uid, []).append(int(r.token))
        return [out[uid] for uid in sorted(out)]

    assert tokens(True) == tokens(False)
