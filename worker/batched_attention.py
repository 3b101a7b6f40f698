"""Decode attention for a continuous batch on CUDA, padding-aware, in one kernel.

A batch's sequences have different lengths, so mlx-lm's ``BatchKVCache`` left-pads them
and every decode step passes attention a boolean mask that hides each row's padding.
MLX's CUDA attention kernels (0.32) take no mask array for decoding, so a masked step falls
back to its unfused composition: about fifteen graph nodes per layer (broadcasts, two
matmuls, select, softmax), each one built in Python, encoded by the host and launched as
a kernel of its own every step (~430 graph nodes per step of a 7B model). The mask of a
decode step says one thing, "row b's keys start at ``left_padding[b]``", so this kernel
takes that instead: one block per (sequence, query head), warps striding over the keys
with an online softmax, merged in shared memory. Grouped-query attention reads the key and
value head its query head shares; the cache is read in place through its strides.

Only for decoding (one query per sequence) with a plain ``BatchKVCache``, half-precision,
head sizes a multiple of 32 up to 256, no attention sinks; everything else goes to
mlx-lm's ``scaled_dot_product_attention`` unchanged. Installed only while a batch runs;
``MLXD_BATCHED_ATTENTION=0`` turns it off.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models import base
from mlx_lm.models.cache import BatchKVCache

from worker.env import switch

# Warps per block, each striding over the keys, then merged: a block's keys are read by 16
# warps at once (4 warps were latency-bound: 3-4x slower at 160 keys, 8x at 4,200).
WARPS = 16

_SOURCE = """
    constexpr int EPL = D / 32;  // head elements per lane
    const float scale = __int_as_float(SCALE_BITS);
    const int Hq = q_shape[1];
    const int Hkv = k_shape[1];
    const int L = k_shape[2];
    const int b = blockIdx.x / Hq;
    const int h = blockIdx.x % Hq;
    const int hk = h / (Hq / Hkv);
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const int start = static_cast<int>(left_padding[b]);

    const T* qp = q + b * q_strides[0] + h * q_strides[1];
    const T* kp = k + b * k_strides[0] + hk * k_strides[1];
    const T* vp = v + b * v_strides[0] + hk * v_strides[1];
    float qv[EPL];
#pragma unroll
    for (int i = 0; i < EPL; ++i) {
        qv[i] = static_cast<float>(qp[(i * 32 + lane) * q_strides[3]]) * scale;
    }
    float m = -1e30f;  // running max of the scores this warp has seen
    float s = 0.0f;    // running sum of exp(score - m)
    float acc[EPL];
#pragma unroll
    for (int i = 0; i < EPL; ++i) {
        acc[i] = 0.0f;
    }
    for (int j = start + warp; j < L; j += WARPS) {
        const T* kr = kp + j * k_strides[2];
        float dot = 0.0f;
#pragma unroll
        for (int i = 0; i < EPL; ++i) {
            dot = fmaf(qv[i], static_cast<float>(kr[(i * 32 + lane) * k_strides[3]]), dot);
        }
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
            dot += __shfl_xor_sync(0xffffffffu, dot, off);
        }
        const float m_new = fmaxf(m, dot);
        const float correction = __expf(m - m_new);
        const float p = __expf(dot - m_new);
        s = s * correction + p;
        const T* vr = vp + j * v_strides[2];
#pragma unroll
        for (int i = 0; i < EPL; ++i) {
            acc[i] = acc[i] * correction + p * static_cast<float>(vr[(i * 32 + lane) * v_strides[3]]);
        }
        m = m_new;
    }

    __shared__ float warp_m[WARPS];
    __shared__ float warp_s[WARPS];
    __shared__ float warp_acc[WARPS][D];
    if (lane == 0) {
        warp_m[warp] = m;
        warp_s[warp] = s;
    }
#pragma unroll
    for (int i = 0; i < EPL; ++i) {
        warp_acc[warp][i * 32 + lane] = acc[i];
    }
    __syncthreads();
    if (warp != 0) {
        return;
    }
    float top = -1e30f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) {
        top = fmaxf(top, warp_m[w]);
    }
    float total = 0.0f;
    float o[EPL];
#pragma unroll
    for (int i = 0; i < EPL; ++i) {
        o[i] = 0.0f;
    }
#pragma unroll
    for (int w = 0; w < WARPS; ++w) {
        const float c = __expf(warp_m[w] - top);  // 0 for a warp that saw no key
        total += warp_s[w] * c;
#pragma unroll
        for (int i = 0; i < EPL; ++i) {
            o[i] += warp_acc[w][i * 32 + lane] * c;
        }
    }
    const float inv = 1.0f / total;
    T* op = out + (size_t)(b * Hq + h) * D;
#pragma unroll
    for (int i = 0; i < EPL; ++i) {
        op[i * 32 + lane] = static_cast<T>(o[i] * inv);
    }
"""


def kernel_text() -> str:
    """The kernel's text (a remembered batch tune is only valid for it)."""
    return _SOURCE


@cache
def _get_kernel() -> Any:
    """The kernel, built once per process (MLX compiles it per template on first use)."""
    return mx.fast.cuda_kernel(
        name="mlxd_batched_decode_attention",
        input_names=["q", "k", "v", "left_padding"],
        output_names=["out"],
        source=_SOURCE,
        ensure_row_contiguous=False,  # the cache is read in place, through its strides
    )


def decode_attention(
    queries: mx.array, keys: mx.array, values: mx.array, left_padding: mx.array, scale: float
) -> mx.array:
    """Attention of one query per sequence over its keys from ``left_padding[b]`` on.

    ``queries`` (B, Hq, 1, D), ``keys``/``values`` (B, Hkv, L, D), ``left_padding`` (B,)
    integers; returns (B, Hq, 1, D) in the queries' dtype (CUDA only)."""
    (out,) = _get_kernel()(inputs=[queries, keys, values, left_padding], **launch(queries, scale))
    return out


def launch(queries: mx.array, scale: float) -> dict[str, Any]:
    """The kernel's launch for these queries: template, grid, block, output (the tests run
    the same launch on the CPU through an emulation of CUDA)."""
    batch, heads, _, dim = queries.shape
    return {
        "template": [
            ("T", queries.dtype),
            ("D", dim),
            ("WARPS", WARPS),
            ("SCALE_BITS", _float_bits(scale)),
        ],
        "grid": (batch * heads * WARPS * 32, 1, 1),
        "threadgroup": (WARPS * 32, 1, 1),
        "output_shapes": [queries.shape],
        "output_dtypes": [queries.dtype],
    }


@cache  # one scale per model, asked for by every layer of every batched step
def _float_bits(value: float) -> int:
    """A float32's bits as an int (a template argument can only be an integer)."""
    return int(struct.unpack("<i", struct.pack("<f", value))[0])


_HALF = (mx.bfloat16, mx.float16)


def kernel_applies(queries: mx.array, keys: mx.array) -> bool:
    """Shapes and types the kernel computes: one half-precision query per sequence, head
    sizes a multiple of 32 up to 256, whole groups of query heads per key head."""
    return (
        queries.shape[2] == 1
        and queries.dtype in _HALF
        and keys.dtype == queries.dtype
        and queries.shape[-1] % 32 == 0
        and queries.shape[-1] <= 256
        and queries.shape[1] % keys.shape[1] == 0
    )


def applies(queries: mx.array, keys: mx.array, cache: Any, mask: Any, sinks: Any) -> bool:
    """A decode step of a plain batch cache that the kernel computes exactly as the mask says."""
    return (
        type(cache) is BatchKVCache
        and sinks is None
        and getattr(cache, "_right_padding", None) is None  # right padding: mid-prefill only
        and (mask is None or isinstance(mask, mx.array))
        and kernel_applies(queries, keys)
    )


def batched_sdpa(
    queries: mx.array,
    keys: mx.array,
    values: mx.array,
    cache: Any,
    scale: float,
    mask: Any,
    sinks: mx.array | None = None,
) -> mx.array:
    """mlx-lm's ``scaled_dot_product_attention``, with batched decode steps on the kernel."""
    if applies(queries, keys, cache, mask, sinks):
        return decode_attention(queries, keys, values, cache.left_padding, scale)
    return base.scaled_dot_product_attention(queries, keys, values, cache, scale, mask, sinks)


def _model_modules(model: nn.Module) -> list[Any]:
    """The Python modules of the model's layers that call mlx-lm's attention by name."""
    found: dict[str, Any] = {}
    for _, layer in model.named_modules():
        name = type(layer).__module__
        module = sys.modules.get(name)
        if module is not None and getattr(module, "scaled_dot_product_attention", None) is (
            base.scaled_dot_product_attention
        ):
            found[name] = module
    return list(found.values())


def enabled() -> bool:
    """Unless ``MLXD_BATCHED_ATTENTION=0`` (the switch itself only acts on CUDA)."""
    return switch("MLXD_BATCHED_ATTENTION")


@contextmanager
def installed(model: nn.Module, force: bool = False) -> Iterator[int]:
    """While the block runs, the model's attention calls go through ``batched_sdpa``; the
    number of model modules switched (0: not on CUDA, or the model calls attention some
    other way). ``force`` skips the device check (tests of the switch on any device)."""
    modules = _model_modules(model) if force or mx.cuda.is_available() else []
    for module in modules:
        module.scaled_dot_product_attention = batched_sdpa
    try:
        yield len(modules)
    finally:
        for module in modules:
            module.scaled_dot_product_attention = base.scaled_dot_product_attention
