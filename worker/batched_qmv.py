"""A quantized matrix × few-vectors kernel for batched decode on CUDA.

A decode step of a batch of B sequences multiplies every weight matrix by B vectors. MLX's
CUDA backend (0.32) runs that product as B matrix-vector products, dequantizing each
weight B times, so a step of 8 sequences on a 7B model costs ~5× a step of one (measured
with ``python -m bench.batch_step``), where the weights' memory traffic should make them
cost about the same. This kernel dequantizes each packed weight word once and applies it
to all B vectors: ``ROWS`` output rows per warp, lanes striding over the packed words
(coalesced loads), ``B × ROWS`` float accumulators per lane, a warp reduction at the end.
Where a product has few output rows and a long K (an MLP's down projection), up to
``WARPS`` warps share the same rows, each taking a stretch of K, and add their sums in
shared memory (``k_split``): without it such a product runs a few hundred warps, each
walking thousands of words, and leaves most of the GPU idle.

Only used on CUDA, for affine 2/4/8-bit weights, with 2 ≤ B ≤ ``MAX_ROWS``; everything
else (one sequence, prefill, Metal, CPU) stays on ``mx.quantized_matmul``.
``MLXD_BATCHED_QMV=0`` turns it off.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from worker import batched_mma
from worker.env import switch

BUCKETS = (2, 4, 8, 16)  # row counts the kernel is compiled for (a batch of 3 runs as 4's)
MAX_ROWS = BUCKETS[-1]
ROWS = 4  # output rows per warp: each x load serves ROWS weight rows
WARPS = 8  # per thread block

# The accumulation loop, compiled twice: with 16-byte vector loads of the activations (any
# fresh array) and with element loads (a view that starts inside a buffer). The kernel picks
# one per launch, so neither carries the other's registers into its loop.
_HEADER = """
template <int BITS, int GROUP, int BM, int R, bool VEC, typename T, typename S>
__device__ __forceinline__ void mlxd_qmv_accumulate(
    const T* x, const uint32_t* w, const S* scales, const S* biases,
    int M, int K, int n0, int first, int stride, float (&acc)[BM][R]) {
    constexpr int VPW = 32 / BITS;  // values per packed 32-bit word
    constexpr uint32_t MASK = (1u << BITS) - 1u;
    struct alignas(VPW * sizeof(T) > 16 ? 16 : VPW * sizeof(T)) XVec {
        T v[VPW];
    };
    const int words = K / VPW;
    const int groups = K / GROUP;
    for (int kw = first; kw < words; kw += stride) {
        const int k = kw * VPW;
        const int g = k / GROUP;
        float wv[R][VPW];
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const size_t row = (size_t)(n0 + r);
            const uint32_t packed = w[row * words + kw];
            const float s = static_cast<float>(scales[row * groups + g]);
            const float b = static_cast<float>(biases[row * groups + g]);
#pragma unroll
            for (int i = 0; i < VPW; ++i) {
                wv[r][i] = s * static_cast<float>((packed >> (i * BITS)) & MASK) + b;
            }
        }
#pragma unroll
        for (int m = 0; m < BM; ++m) {
            if (m >= M) {
                break;
            }
            const T* xp = x + (size_t)m * K + k;
            float xv[VPW];
            if constexpr (VEC) {
                const XVec xr = *reinterpret_cast<const XVec*>(xp);
#pragma unroll
                for (int i = 0; i < VPW; ++i) {
                    xv[i] = static_cast<float>(xr.v[i]);
                }
            } else {
#pragma unroll
                for (int i = 0; i < VPW; ++i) {
                    xv[i] = static_cast<float>(xp[i]);
                }
            }
#pragma unroll
            for (int r = 0; r < R; ++r) {
                float dot = 0.0f;
#pragma unroll
                for (int i = 0; i < VPW; ++i) {
                    dot = fmaf(wv[r][i], xv[i], dot);
                }
                acc[m][r] += dot;
            }
        }
    }
}
"""

_SOURCE = """
    constexpr int VPW = 32 / BITS;
    constexpr size_t XALIGN = VPW * sizeof(T) > 16 ? 16 : VPW * sizeof(T);
    // x is (..., K): its leading dimensions are the rows, at most BM (the bucket compiled for).
    const int K = x_shape[x_ndim - 1];
    int M = 1;
    for (int d = 0; d < x_ndim - 1; ++d) {
        M *= x_shape[d];
    }
    const int N = w_shape[0];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    // KS consecutive warps share R output rows, each taking every KS-th stretch of words.
    const int part = warp % KS;
    const int n0 = ((blockIdx.x * blockDim.x + threadIdx.x) / (32 * KS)) * R;
    const bool active = n0 < N;  // no early return: the block meets at a barrier below
    float acc[BM][R];
#pragma unroll
    for (int m = 0; m < BM; ++m) {
#pragma unroll
        for (int r = 0; r < R; ++r) {
            acc[m][r] = 0.0f;
        }
    }
    if (active) {
        // Rows start every K elements: with K a whole number of words, all are aligned when x is.
        const int first = part * 32 + lane;
        const int stride = 32 * KS;
        if (reinterpret_cast<size_t>(x) % XALIGN == 0) {
            mlxd_qmv_accumulate<BITS, GROUP, BM, R, true>(
                x, w, scales, biases, M, K, n0, first, stride, acc);
        } else {
            mlxd_qmv_accumulate<BITS, GROUP, BM, R, false>(
                x, w, scales, biases, M, K, n0, first, stride, acc);
        }
    }
    __shared__ float partial[KS > 1 ? NW : 1][BM][R];
#pragma unroll
    for (int m = 0; m < BM; ++m) {
        if (m >= M) {
            break;
        }
#pragma unroll
        for (int r = 0; r < R; ++r) {
            float v = acc[m][r];
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) {
                v += __shfl_xor_sync(0xffffffffu, v, off);
            }
            if (lane == ((m * R + r) & 31)) {
                if constexpr (KS == 1) {
                    if (active) {
                        out[(size_t)m * N + n0 + r] = static_cast<T>(v);
                    }
                } else {
                    partial[warp][m][r] = v;
                }
            }
        }
    }
    if constexpr (KS > 1) {
        __syncthreads();
        if (part != 0 || !active) {
            return;
        }
#pragma unroll
        for (int m = 0; m < BM; ++m) {
            if (m >= M) {
                break;
            }
#pragma unroll
            for (int r = 0; r < R; ++r) {
                if (lane == ((m * R + r) & 31)) {
                    float v = 0.0f;
#pragma unroll
                    for (int j = 0; j < KS; ++j) {
                        v += partial[warp + j][m][r];
                    }
                    out[(size_t)m * N + n0 + r] = static_cast<T>(v);
                }
            }
        }
    }
"""


@cache
def _get_kernel() -> Any:
    """The kernel, built once per process (MLX compiles it per template on first use)."""
    return mx.fast.cuda_kernel(
        name="mlxd_batched_qmv",
        input_names=["x", "w", "scales", "biases"],
        output_names=["out"],
        source=_SOURCE,
        header=_HEADER,
    )


_TARGET_WARPS = 8192  # about what an H100/H200 holds at once (132 SMs × 64)


@cache  # called for every product of every batched step: a lookup, not a loop, after the first
def k_split(n: int, k: int, bits: int) -> int:
    """Warps that share each ``ROWS`` output rows, splitting K between them: as many as keep
    the GPU's warp slots filled (a product with few output rows and a long K, such as an MLP's
    down projection, would otherwise run a few hundred warps walking thousands of words each)
    while each still walks a few stretches of words."""
    words = k * bits // 32
    warps = -(-n // ROWS)
    split = 1
    while split < WARPS and warps * split * 2 <= _TARGET_WARPS and words // (64 * split) >= 2:
        split *= 2
    return split


def batched_qmv(
    x: mx.array,
    w: mx.array,
    scales: mx.array,
    biases: mx.array,
    bits: int,
    group_size: int,
    split: int | None = None,
) -> mx.array:
    """``x @ dequantize(w).T`` for ``x`` of shape (..., K) with 1 to MAX_ROWS rows
    (CUDA only). The output keeps ``x``'s leading shape: no reshapes around the kernel
    (each is a graph node the host would build and encode every step). ``split``: warps per
    output rows (``k_split``'s choice unless given)."""
    (out,) = _get_kernel()(inputs=[x, w, scales, biases], **launch(x, w, bits, group_size, split))
    return out


def launch(x: mx.array, w: mx.array, bits: int, group_size: int, split: int | None = None) -> dict[str, Any]:
    """The kernel's launch for these operands: template, grid, block, output (the tests run
    the same launch on the CPU through an emulation of CUDA)."""
    shape = x.shape
    n = w.shape[0]
    if split is None:
        split = k_split(n, shape[-1], bits)
    return {
        # One compiled kernel per bucket of rows (not per row count): compiling costs seconds.
        "template": [
            ("T", x.dtype),
            ("BITS", bits),
            ("GROUP", group_size),
            ("BM", _BUCKET_OF[x.size // shape[-1]]),
            ("R", ROWS),
            ("KS", split),
            ("NW", WARPS),
        ],
        "grid": ((n + ROWS - 1) // ROWS * 32 * split, 1, 1),
        "threadgroup": (WARPS * 32, 1, 1),
        "output_shapes": [(*shape[:-1], n)],
        "output_dtypes": [x.dtype],
    }


Quantized = nn.QuantizedLinear | nn.QuantizedEmbedding


def supported(layer: Quantized) -> bool:
    """Layers the kernel handles: affine 2/4/8-bit, ``ROWS`` | N, whole words per group."""
    if getattr(layer, "mode", "affine") != "affine" or layer.bits not in (2, 4, 8):
        return False
    if "biases" not in layer or layer["weight"].ndim != 2:
        return False
    n = layer["weight"].shape[0]
    return n % ROWS == 0 and layer.group_size % (32 // layer.bits) == 0


# How few-row products run: "stock" (MLX unchanged: a (B, 1, K) input runs as B
# matrix-vector products), "flat" (MLX's matmul on the rows flattened to 2-D, which lets it
# pick its tensor-core kernel from 8 rows), "kernel" (``batched_qmv``), "mma" (``batched_mma``
# where the weights are 4-bit, the kernel elsewhere), or "auto": what
# ``tune`` measured fastest for the batch's bucket. Benchmarks switch it.
ROUTES = ("stock", "flat", "kernel", "mma")
STRATEGY = "auto"
_choice: dict[int, str] = {}  # bucket → one of ROUTES


_HALF = (mx.bfloat16, mx.float16)
_BUCKET_OF = [next((b for b in BUCKETS if b >= rows), 0) for rows in range(MAX_ROWS + 1)]


def _product(layer: Quantized, x: mx.array) -> mx.array | None:
    """The layer's product for a few rows, or None where MLX's own path is the one.
    Runs for every quantized layer of every batched step: kept lean on purpose."""
    rows = x.size // x.shape[-1]
    if not 2 <= rows <= MAX_ROWS or x.dtype not in _HALF:
        return None
    route = STRATEGY if STRATEGY != "auto" else _choice.get(_BUCKET_OF[rows], "stock")
    if route == "mma" and _mma_fits(layer):
        return batched_mma.batched_mma(x, layer["weight"], layer["scales"], layer["biases"], layer.group_size)
    if route in ("kernel", "mma"):  # the tensor-core kernel takes 4-bit weights only
        return batched_qmv(x, layer["weight"], layer["scales"], layer["biases"], layer.bits, layer.group_size)
    if route != "flat" or x.shape[-2] == rows:
        return None  # MLX's own path; or rows already on the second-to-last axis, its 2-D one
    k = x.shape[-1]
    y = mx.quantized_matmul(
        x.reshape(rows, k),
        layer["weight"],
        scales=layer["scales"],
        biases=layer["biases"],
        transpose=True,
        group_size=layer.group_size,
        bits=layer.bits,
    )
    return y.reshape(*x.shape[:-1], y.shape[-1])


def _mma_fits(layer: Quantized) -> bool:
    """Whether the tensor-core kernel takes the layer's weights. Fixed per layer, and
    asked for every product of every batched step: worked out once, kept on the layer."""
    try:
        fits: bool = layer._mlxd_mma_fits
    except AttributeError:
        mode = getattr(layer, "mode", "affine")
        fits = batched_mma.supported(layer["weight"], layer.bits, layer.group_size, mode)
        layer._mlxd_mma_fits = fits  # a plain attribute: not a parameter of the model
    return fits


class BatchedQuantizedLinear(nn.QuantizedLinear):
    """A ``QuantizedLinear`` that sends few-row products to ``batched_qmv``."""

    def __call__(self, x: mx.array) -> mx.array:
        y = _product(self, x)
        if y is None:
            return super().__call__(x)
        return y + self["bias"] if "bias" in self else y


class BatchedQuantizedEmbedding(nn.QuantizedEmbedding):
    """A tied ``QuantizedEmbedding`` whose output projection goes to ``batched_qmv``."""

    def as_linear(self, x: mx.array) -> mx.array:
        y = _product(self, x)
        return super().as_linear(x) if y is None else y


_SWAPS: dict[type, type] = {
    nn.QuantizedLinear: BatchedQuantizedLinear,
    nn.QuantizedEmbedding: BatchedQuantizedEmbedding,
}


def enabled() -> bool:
    """On CUDA unless ``MLXD_BATCHED_QMV=0``."""
    return switch("MLXD_BATCHED_QMV") and bool(mx.cuda.is_available()) and mx.default_device() == mx.gpu


def install(model: nn.Module, force: bool = False) -> int:
    """Route the model's supported quantized layers through the kernel; the count swapped.

    ``force`` skips the device check (for tests of the routing on any device)."""
    if not (force or enabled()):
        return 0
    swapped = 0
    for _, module in model.named_modules():
        swap = _SWAPS.get(type(module))
        if swap is not None and supported(module):
            module.__class__ = swap
            swapped += 1
    return swapped


@contextmanager
def installed(model: nn.Module) -> Iterator[int]:
    """``install`` for the duration of a block (a batch), then ``uninstall``."""
    try:
        yield install(model, force=True)
    finally:
        uninstall(model)


def uninstall(model: nn.Module) -> None:
    """Undo ``install`` (benchmarks compare both in one process)."""
    back = {v: k for k, v in _SWAPS.items()}
    for _, module in model.named_modules():
        if type(module) in back:
            module.__class__ = back[type(module)]


def tune(model: nn.Module, max_rows: int, steps: int = 12) -> dict[int, str]:
    """Time a decode step of the whole model at each batch bucket up to ``max_rows`` with
    each routing, and route every later batch of that bucket by the fastest (MLX's own path
    unless another beats it by 5%: the products are shape- and card-dependent, a step is
    what counts). Compiles each bucket's kernels on the way."""
    global STRATEGY
    for bucket in [b for b in BUCKETS if b <= max(max_rows, 2)]:
        timings: dict[str, float] = {}
        for route in ROUTES:
            STRATEGY = route
            try:
                timings[route] = _time_step(model, bucket, steps)
            finally:
                STRATEGY = "auto"
        best = min(timings, key=lambda route: timings[route])
        _choice[bucket] = best if timings[best] < 0.95 * timings["stock"] else "stock"
    return dict(_choice)


def use(routes: dict[int, str]) -> None:
    """Route batches by ``routes`` (a tune's answer remembered from an earlier load)."""
    _choice.clear()
    _choice.update(routes)


def kernel_text() -> str:
    """The text of the kernels a tune measures (its answer is only valid for this text)."""
    return _HEADER + _SOURCE + batched_mma.kernel_text()


def tuned() -> dict[int, str]:
    """What ``tune`` chose per bucket ({} before it ran, or off CUDA)."""
    return dict(_choice)


def _time_step(model: nn.Module, rows: int, steps: int) -> float:
    """Seconds per decode step of ``rows`` sequences: steps chained and evaluated ahead as
    generation runs them (a per-step sync would time launch latency, not the step), best
    of two runs, after a warm-up that compiles what the shape needs."""
    from mlx_lm.models.cache import BatchKVCache, KVCache, make_prompt_cache

    cache = make_prompt_cache(model)
    if all(type(c) is KVCache for c in cache):
        cache = [BatchKVCache([0] * rows) for _ in cache]  # what a batch of these runs on
    mx.eval(model(mx.zeros((rows, 4), dtype=mx.int32), cache=cache))
    tokens = mx.zeros((rows, 1), dtype=mx.int32)

    def run(n: int) -> float:
        nonlocal tokens
        tic = time.perf_counter()
        for _ in range(n):
            tokens = mx.argmax(model(tokens, cache=cache)[:, -1:, :], axis=-1)
            mx.async_eval(tokens)
        mx.eval(tokens)
        return (time.perf_counter() - tic) / n

    run(2)
    return min(run(steps), run(steps))
