"""Routing of few-row quantized products (worker.batched_qmv).

The CUDA kernel itself only runs on an NVIDIA GPU (``python -m bench.batch_step`` checks
it against ``mx.quantized_matmul`` there); here the routing around it is checked on the
CPU: which layers are swapped, which products leave MLX's path, and that the "flat" route
gives MLX's own numbers for every shape a decode or prefill produces.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import pytest

from worker import batched_qmv


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    yield
    batched_qmv.STRATEGY = "auto"
    batched_qmv._choice.clear()


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # Any: nn.quantize swaps these for their quantized classes in place.
        self.embed: Any = nn.Embedding(256, 128)
        self.proj: Any = nn.Linear(128, 64, bias=True)
        self.odd: Any = nn.Linear(128, 62)  # 62 rows: not a multiple of the kernel's rows per warp
        self.norm = nn.RMSNorm(128)


def _quantized() -> Tiny:
    model = Tiny()
    nn.quantize(
        model, group_size=64, bits=4, class_predicate=lambda _, m: isinstance(m, nn.Linear | nn.Embedding)
    )
    model.set_dtype(mx.bfloat16)
    return model


def test_install_is_off_on_the_cpu_and_by_env(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _quantized()
    assert not batched_qmv.enabled()
    assert batched_qmv.install(model) == 0
    assert type(model.proj) is nn.QuantizedLinear
    monkeypatch.setenv("MLXD_BATCHED_QMV", "0")
    assert not batched_qmv.enabled()


def test_install_swaps_supported_layers_and_uninstall_restores() -> None:
    model = _quantized()
    assert batched_qmv.install(model, force=True) == 2  # proj and embed; odd stays
    assert type(model.proj) is batched_qmv.BatchedQuantizedLinear
    assert type(model.embed) is batched_qmv.BatchedQuantizedEmbedding
    assert type(model.odd) is nn.QuantizedLinear
    assert type(model.norm) is nn.RMSNorm
    batched_qmv.uninstall(model)
    assert type(model.proj) is nn.QuantizedLinear
    assert type(model.embed) is nn.QuantizedEmbedding


@pytest.mark.parametrize(
    "shape", [(1, 1, 128), (3, 1, 128), (8, 1, 128), (1, 5, 128), (2, 7, 128), (40, 1, 128)]
)
def test_flat_route_matches_mlx(shape: tuple[int, ...]) -> None:
    model = _quantized()
    x = mx.random.normal(shape).astype(mx.bfloat16)
    expected = (model.proj(x), model.embed.as_linear(x))
    batched_qmv.install(model, force=True)
    batched_qmv.STRATEGY = "flat"
    got = (model.proj(x), model.embed.as_linear(x))
    for e, g in zip(expected, got, strict=True):
        assert g.shape == e.shape and g.dtype == e.dtype
        assert mx.array_equal(g, e).item()


def test_only_few_row_half_precision_products_leave_mlx() -> None:
    model = _quantized()
    batched_qmv.install(model, force=True)
    batched_qmv.STRATEGY = "flat"
    assert batched_qmv._product(model.proj, mx.zeros((4, 1, 128), dtype=mx.bfloat16)) is not None
    assert batched_qmv._product(model.proj, mx.zeros((1, 1, 128), dtype=mx.bfloat16)) is None  # one row
    assert batched_qmv._product(model.proj, mx.zeros((17, 1, 128), dtype=mx.bfloat16)) is None  # > MAX_ROWS
    assert batched_qmv._product(model.proj, mx.zeros((4, 1, 128), dtype=mx.float32)) is None


def test_auto_routes_by_the_tuned_bucket() -> None:
    model = _quantized()
    batched_qmv.install(model, force=True)
    x3 = mx.zeros((3, 1, 128), dtype=mx.bfloat16)
    assert batched_qmv._product(model.proj, x3) is None  # untuned: MLX's own path
    batched_qmv._choice[4] = "flat"  # 3 rows fall in the bucket of 4
    assert batched_qmv._product(model.proj, x3) is not None
    assert batched_qmv._product(model.proj, mx.zeros((8, 1, 128), dtype=mx.bfloat16)) is None


def test_tune_measures_every_bucket_up_to_the_batch_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, int]] = []
    cost = {"stock": 1.0, "flat": 0.5, "kernel": 0.97, "mma": 0.98}

    def fake_time(model: nn.Module, rows: int, steps: int) -> float:
        seen.append((batched_qmv.STRATEGY, rows))
        return cost[batched_qmv.STRATEGY] * (1 if rows < 8 else 3)

    monkeypatch.setattr(batched_qmv, "_time_step", fake_time)
    choice = batched_qmv.tune(nn.Module(), max_rows=8)
    assert choice == {2: "flat", 4: "flat", 8: "flat"}
    assert {rows for _, rows in seen} == {2, 4, 8}
    assert batched_qmv.STRATEGY == "auto"
    cost["flat"] = 0.97  # within 5% of MLX's path: not worth leaving it
    assert batched_qmv.tune(nn.Module(), max_rows=2) == {2: "stock", 4: "flat", 8: "flat"}


def test_a_gpu_load_warms_every_batch_bucket_up_to_the_limit(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a GPU the worker runs a short batch of each bucket size (and the limit itself) at
    load, so the first concurrent requests find their kernels compiled; the CPU skips it."""
    from worker import generation

    sizes: list[int] = []

    class SpyBatch(generation.BatchGenerator):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            sizes.append(kwargs["completion_batch_size"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(generation, "BatchGenerator", SpyBatch)
    monkeypatch.setenv("OLLAMA_NUM_PARALLEL", "5")
    generation.Generator(tiny_model_dir)
    assert sizes == []  # CPU: nothing to compile per shape
    gen = generation.Generator(tiny_model_dir)
    monkeypatch.setattr(generation.mx, "default_device", lambda: generation.mx.gpu)
    gen._warm_up(lambda: None)
    assert sizes == [2, 4, 5]


def test_the_kernel_route_takes_the_rows_as_they_come(monkeypatch: pytest.MonkeyPatch) -> None:
    """No reshape around the kernel (each would be a graph node per layer per step): it gets
    the (B, 1, K) activations as they are and its output is the layer's, plus the bias."""
    model = _quantized()
    batched_qmv.install(model, force=True)
    batched_qmv.STRATEGY = "kernel"
    shapes: list[tuple[int, ...]] = []

    def fake_kernel(x: mx.array, w: mx.array, *rest: Any) -> mx.array:
        shapes.append(tuple(x.shape))
        return mx.zeros((*x.shape[:-1], w.shape[0]), dtype=x.dtype)

    monkeypatch.setattr(batched_qmv, "batched_qmv", fake_kernel)
    y = model.proj(mx.ones((4, 1, 128), dtype=mx.bfloat16))
    assert shapes == [(4, 1, 128)]
    assert y.shape == (4, 1, 64)
    assert mx.array_equal(y, mx.broadcast_to(model.proj["bias"], (4, 1, 64))).item()


def test_products_with_few_output_rows_and_a_long_k_split_it_between_warps() -> None:
    """A 7B's MLP down projection (3584 × 18944) would run 896 warps walking 2,368 words each:
    it gets the most warps per rows; the gate/up products (18944 × 3584) fill the GPU as they
    are; a split never leaves a warp fewer than two strides of words."""
    assert batched_qmv.k_split(3584, 18944, 4) == batched_qmv.WARPS
    assert batched_qmv.k_split(18944, 3584, 4) == 1
    assert batched_qmv.k_split(152064, 3584, 4) == 1  # an output projection
    assert batched_qmv.k_split(3584, 3584, 4) == 4  # 448 words: 4 warps walk 3.5 strides each
    assert batched_qmv.k_split(512, 3584, 4) == 4
    assert batched_qmv.k_split(64, 128, 4) == 1  # 16 words: nothing to split
    for n, k, bits in [(3584, 18944, 4), (512, 896, 8), (4864, 896, 4), (64, 4096, 2)]:
        split = batched_qmv.k_split(n, k, bits)
        assert batched_qmv.WARPS % split == 0  # a block holds whole groups of warps
        assert split == 1 or k * bits // 32 // (32 * split) >= 2


def test_the_tune_times_steps_on_the_caches_a_batch_runs_on(tiny_model_dir: Path) -> None:
    """A batch decodes on mlx-lm's ``BatchKVCache`` (masked attention, per-row offsets), so
    the tune times that, not a single sequence's plain cache."""
    from mlx_lm import load
    from mlx_lm.models.cache import BatchKVCache

    model = load(str(tiny_model_dir))[0]
    seen: set[type] = set()
    real = type(model).__call__

    class Spy(type(model)):  # type: ignore[misc]
        def __call__(self, inputs: mx.array, cache: Any = None, **kwargs: Any) -> mx.array:
            seen.update(type(c) for c in cache)
            return real(self, inputs, cache=cache, **kwargs)

    model.__class__ = Spy
    assert batched_qmv._time_step(model, rows=3, steps=2) > 0
    assert seen == {BatchKVCache}


def test_the_mma_route_takes_4_bit_weights_and_leaves_the_rest_to_the_kernel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker import batched_mma

    calls: list[str] = []

    def fake(name: str) -> Any:
        def product(x: mx.array, w: mx.array, *rest: Any, **kwargs: Any) -> mx.array:
            calls.append(name)
            return mx.zeros((*x.shape[:-1], w.shape[0]), dtype=x.dtype)

        return product

    monkeypatch.setattr(batched_mma, "batched_mma", fake("mma"))
    monkeypatch.setattr(batched_qmv, "batched_qmv", fake("kernel"))
    monkeypatch.setattr(batched_qmv, "STRATEGY", "mma")
    four = _quantized()
    eight = Tiny()
    nn.quantize(eight, group_size=64, bits=8, class_predicate=lambda _, m: isinstance(m, nn.Linear))
    eight.set_dtype(mx.bfloat16)
    x = mx.ones((4, 1, 128), dtype=mx.bfloat16)
    assert batched_qmv._product(four.proj, x) is not None
    assert batched_qmv._product(eight.proj, x) is not None
    assert calls == ["mma", "kernel"]


def test_the_mma_kernel_takes_whole_tiles_of_4_bit_weights() -> None:
    from worker import batched_mma

    def packed(n: int, k: int, bits: int = 4) -> mx.array:
        return mx.zeros((n, k * bits // 32), dtype=mx.uint32)

    assert batched_mma.supported(packed(3584, 18944), 4, 64)
    assert batched_mma.supported(packed(512, 896), 4, 32)
    assert not batched_mma.supported(packed(3584, 3584, 8), 8, 64)  # 8-bit
    assert not batched_mma.supported(packed(3580, 3584), 4, 64)  # N not whole tiles of 16
    assert not batched_mma.supported(packed(512, 880), 4, 16)  # K not whole steps of 32
    assert not batched_mma.supported(packed(512, 896), 4, 64, mode="mxfp4")
    assert batched_mma.k_split(3584, 18944) == batched_mma.WARPS  # down projection: 224 tiles
    assert batched_mma.k_split(18944, 3584) == 4
    assert batched_mma.k_split(16, 64) == 1  # two steps of K: nothing to split
