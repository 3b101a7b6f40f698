"""The worker's CUDA kernels, run on the CPU through ``cuda_emulation``: each launched as the
worker launches it (``launch``), compared with the same arithmetic done by MLX on the CPU.

The products: rows 1–16 (every bucket, and row counts between buckets), 4- and 8-bit
weights, K split between 1, 2, 4 and 8 warps, activations that start one element into
their buffer (the element-load path). The attention: rows whose keys start at different
paddings, grouped query heads, float16 and bfloat16. Skipped where no C++20 compiler exists
(g++ 12 or clang 15 and later).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlx.core as mx
import pytest

from tests import cuda_emulation
from worker import batched_attention, batched_mma, batched_qmv

pytestmark = pytest.mark.skipif(cuda_emulation.compiler() is None, reason="no C++20 compiler")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("cuda-emulation")


def _relative_error(got: mx.array, expected: mx.array) -> float:
    got, expected = got.astype(mx.float32), expected.astype(mx.float32)
    return (mx.abs(got - expected).max() / mx.abs(expected).max()).item()


def _product(x: mx.array, bits: int, n: int, split: int | None, workdir: Path) -> tuple[mx.array, mx.array]:
    k = x.shape[-1]
    w = mx.random.normal((n, k), key=mx.random.key(n + k)) * 0.05
    wq, scales, biases = mx.quantize(w.astype(x.dtype), group_size=64, bits=bits)
    (got,) = cuda_emulation.run(
        header=batched_qmv._HEADER,
        source=batched_qmv._SOURCE,
        inputs={"x": x, "w": wq, "scales": scales, "biases": biases},
        workdir=workdir,
        **batched_qmv.launch(x, wq, bits, 64, split),
    )
    # In float32: MLX's CPU product in bfloat16 is itself ~5% off (it accumulates in bfloat16).
    weights = mx.dequantize(wq, scales, biases, group_size=64, bits=bits).astype(mx.float32)
    return got, x.astype(mx.float32) @ weights.T


@pytest.mark.parametrize(
    ("rows", "bits", "split"),
    [(1, 4, 1), (2, 4, 2), (3, 8, 1), (4, 4, 4), (5, 4, 8), (8, 8, 2), (11, 4, 1), (16, 4, 8), (8, 4, None)],
)
def test_the_few_vector_product_is_mlx_s(rows: int, bits: int, split: int | None, workdir: Path) -> None:
    x = mx.random.normal((rows, 1, 512), key=mx.random.key(rows)).astype(mx.bfloat16)
    got, expected = _product(x, bits, 48, split, workdir)
    assert got.shape == (rows, 1, 48)
    assert _relative_error(got, expected) < 0.01  # bfloat16 outputs round at ~0.4%


def test_the_product_reads_rows_that_start_inside_a_buffer(workdir: Path) -> None:
    flat = mx.random.normal((1 + 4 * 256,), key=mx.random.key(7)).astype(mx.float16)
    x = flat[1:].reshape(4, 256)  # one element in: not 16-byte aligned
    got, expected = _product(x, 4, 32, 2, workdir)
    assert _relative_error(got, expected) < 0.01


@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16])
def test_decode_attention_skips_each_rows_padding(dtype: mx.Dtype, workdir: Path) -> None:
    batch, heads, kv_heads, length, dim = 3, 4, 2, 37, 64
    keys = [mx.random.normal((batch, kv_heads, length, dim), key=mx.random.key(i)) for i in range(2)]
    k, v = (a.astype(dtype) for a in keys)
    q = mx.random.normal((batch, heads, 1, dim), key=mx.random.key(3)).astype(dtype)
    padding = mx.array([0, 5, 36])  # the last row has one key
    scale = dim**-0.5
    (got,) = cuda_emulation.run(
        header="",
        source=batched_attention._SOURCE,
        inputs={"q": q, "k": k, "v": v, "left_padding": padding},
        workdir=workdir,
        **batched_attention.launch(q, scale),
    )
    mask = (mx.arange(length)[None, :] >= padding[:, None])[:, None, None, :]
    expected = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
    assert got.shape == q.shape
    assert _relative_error(got, expected) < 0.01
    # The last row attends to its one key only: its output is that key's value.
    one = mx.repeat(v[2:3, :, 36:37, :], heads // kv_heads, axis=1)
    assert _relative_error(got[2:3], one) < 0.01


@pytest.mark.parametrize(
    ("rows", "dtype", "split"),
    [(1, mx.bfloat16, 1), (3, mx.float16, 2), (8, mx.bfloat16, 4), (11, mx.bfloat16, 2), (16, mx.float16, 8)],
)
def test_the_tensor_core_product_is_mlx_s(rows: int, dtype: mx.Dtype, split: int, workdir: Path) -> None:
    k, n = 512, 48
    x = mx.random.normal((rows, 1, k), key=mx.random.key(rows)).astype(dtype)
    w = mx.random.normal((n, k), key=mx.random.key(11)) * 0.05
    wq, scales, biases = mx.quantize(w.astype(dtype), group_size=64, bits=4)
    (got,) = cuda_emulation.run(
        header=batched_mma._HEADER,
        source=batched_mma._SOURCE,
        inputs={"x": x, "w": wq, "scales": scales, "biases": biases},
        workdir=workdir,
        **batched_mma.launch(x, wq, 64, split),
    )
    weights = mx.dequantize(wq, scales, biases, group_size=64, bits=4).astype(mx.float32)
    assert got.shape == (rows, 1, n)
    assert _relative_error(got, x.astype(mx.float32) @ weights.T) < 0.01
