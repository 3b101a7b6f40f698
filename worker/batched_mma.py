"""A 4-bit matrix × few-vectors product on NVIDIA tensor cores, for batched decode.

``batched_qmv`` does a batch's products on CUDA cores: for 8 sequences each weight value it
dequantizes costs 8 fused multiply-adds, so at 8 rows it is bound by arithmetic, not by
reading the weights (measured: a 7B's MLP products take ~4.8 ms of a 10.5 ms step on an
H100 that reads those weights in ~1 ms). Here each warp dequantizes a 16 × 32 tile of
weights into registers, in the layout of ``mma.sync.m16n8k16``'s A operand, and multiplies
it by the batch's activations (the B operand: 16 values of K × 8 sequences) in two tensor
core instructions, accumulating in float32: 16 output rows per warp, up to 16 sequences
(two 8-column tiles), K split between ``KS`` warps that add their sums in shared memory.
On an H200 this takes a 7B's 8-sequence decode step from 11.2 ms to 8.4 ms (one sequence:
5.2 ms); at 2 and 4 rows the two kernels are close and the load-time tune picks.

Affine 4-bit weights with groups of 32, 64 or 128, N a multiple of 16, K of 32, half
precision activations (bfloat16 or float16, which also picks the dequantized type).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import mlx.core as mx

TILE_N = 16  # output rows per warp: the A operand's rows
TILE_K = 32  # K per loop step: two m16n8k16 steps, one 16-byte load per weight row
WARPS = 8  # per thread block
_TARGET_WARPS = 8192  # about what an H100/H200 holds at once (132 SMs × 64)

# One specialization per activation type, written out from one template: an inline-asm
# string must be a literal, so C++ cannot pick the PTX type names itself.
_HALF_TYPE = """
template <>
struct MlxdHalf<{scalar}> {{
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {{
        {pair} v = {convert}(lo, hi);
        return *reinterpret_cast<uint32_t*>(&v);
    }}
    static __device__ __forceinline__ void mma(
        float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {{
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.{ptx}.{ptx}.f32 "
            "{{%0,%1,%2,%3}}, {{%4,%5,%6,%7}}, {{%8,%9}}, {{%0,%1,%2,%3}};\\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }}
}};
"""
_HEADER = (
    """
// Half pairs and the tensor-core step for each activation type (MLX's headers bring
// cuda_bf16.h and cuda_fp16.h).
template <typename T>
struct MlxdHalf;
"""
    + _HALF_TYPE.format(
        scalar="__nv_bfloat16", pair="__nv_bfloat162", convert="__floats2bfloat162_rn", ptx="bf16"
    )
    + _HALF_TYPE.format(scalar="__half", pair="__half2", convert="__floats2half2_rn", ptx="f16")
    + """
// Two dequantized 4-bit values (nibbles i and i + 1 of a packed word) as a half pair.
template <typename T>
__device__ __forceinline__ uint32_t mlxd_dq2(uint32_t word, int i, float s, float b) {
    const float lo = s * static_cast<float>((word >> (4 * i)) & 15u) + b;
    const float hi = s * static_cast<float>((word >> (4 * i + 4)) & 15u) + b;
    return MlxdHalf<T>::pack(lo, hi);
}

// Activations x[row][k], x[row][k + 1] as a half pair (element loads: any 2-byte alignment).
__device__ __forceinline__ uint32_t mlxd_x2(const unsigned short* x, size_t at) {
    return static_cast<uint32_t>(x[at]) | (static_cast<uint32_t>(x[at + 1]) << 16);
}
"""
)

_SOURCE = """
    // Fragment layout of mma.m16n8k16 (PTX ISA): lane = 4 * g + t.
    //   A (16 x 16, row-major): {row g | g+8} x {cols 2t, 2t+1 | 2t+8, 2t+9}
    //   B (16 x 8, col-major): cols (sequences) g, rows (k) {2t, 2t+1 | 2t+8, 2t+9}
    //   C (16 x 8): rows {g | g+8} x cols {2t, 2t+1}
    const int K = x_shape[x_ndim - 1];
    int M = 1;
    for (int d = 0; d < x_ndim - 1; ++d) {
        M *= x_shape[d];
    }
    const int N = w_shape[0];
    const int words = K / 8;
    const int groups = K / GROUP;
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int g = lane >> 2;
    const int t = lane & 3;
    const int part = warp % KS;
    const int n0 = ((blockIdx.x * blockDim.x + threadIdx.x) / (32 * KS)) * 16;
    const bool active = n0 < N;  // no early return: the block meets at a barrier below
    const unsigned short* xs = reinterpret_cast<const unsigned short*>(x);

    float c[NT][4];
#pragma unroll
    for (int j = 0; j < NT; ++j) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            c[j][i] = 0.0f;
        }
    }
    if (active) {
        const int r0 = n0 + g;
        const int r1 = n0 + g + 8;
        const uint4* w0 = reinterpret_cast<const uint4*>(w + (size_t)r0 * words);
        const uint4* w1 = reinterpret_cast<const uint4*>(w + (size_t)r1 * words);
        for (int kk = part; kk < K / 32; kk += KS) {
            const uint4 p0 = w0[kk];  // row g: 32 values of K, 8 per word
            const uint4 p1 = w1[kk];  // row g + 8
            const int grp = (kk * 32) / GROUP;
            const float s0 = static_cast<float>(scales[(size_t)r0 * groups + grp]);
            const float b0 = static_cast<float>(biases[(size_t)r0 * groups + grp]);
            const float s1 = static_cast<float>(scales[(size_t)r1 * groups + grp]);
            const float b1 = static_cast<float>(biases[(size_t)r1 * groups + grp]);
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                // Words 2h and 2h + 1 of each row hold K values 16h .. 16h + 15 of this step.
                const uint32_t lo0 = h == 0 ? p0.x : p0.z;
                const uint32_t hi0 = h == 0 ? p0.y : p0.w;
                const uint32_t lo1 = h == 0 ? p1.x : p1.z;
                const uint32_t hi1 = h == 0 ? p1.y : p1.w;
                uint32_t a[4];
                a[0] = mlxd_dq2<T>(lo0, 2 * t, s0, b0);  // row g, cols 2t, 2t+1
                a[1] = mlxd_dq2<T>(lo1, 2 * t, s1, b1);  // row g+8, cols 2t, 2t+1
                a[2] = mlxd_dq2<T>(hi0, 2 * t, s0, b0);  // row g, cols 2t+8, 2t+9
                a[3] = mlxd_dq2<T>(hi1, 2 * t, s1, b1);  // row g+8, cols 2t+8, 2t+9
                const int k = kk * 32 + h * 16 + 2 * t;
#pragma unroll
                for (int j = 0; j < NT; ++j) {
                    const int row = j * 8 + g;  // the sequence this lane feeds
                    uint32_t bx0 = 0u, bx1 = 0u;
                    if (row < M) {
                        bx0 = mlxd_x2(xs, (size_t)row * K + k);
                        bx1 = mlxd_x2(xs, (size_t)row * K + k + 8);
                    }
                    MlxdHalf<T>::mma(c[j], a, bx0, bx1);
                }
            }
        }
    }
    if constexpr (KS > 1) {
        __shared__ float partial[NW][NT][4][32];
#pragma unroll
        for (int j = 0; j < NT; ++j) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                partial[warp][j][i][lane] = c[j][i];
            }
        }
        __syncthreads();
        if (part != 0) {
            return;
        }
#pragma unroll
        for (int j = 0; j < NT; ++j) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                float v = 0.0f;
#pragma unroll
                for (int p = 0; p < KS; ++p) {
                    v += partial[warp + p][j][i][lane];
                }
                c[j][i] = v;
            }
        }
    }
    if (!active) {
        return;
    }
#pragma unroll
    for (int j = 0; j < NT; ++j) {
        const int seq = j * 8 + 2 * t;  // C's columns 2t, 2t + 1
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int m = seq + (i & 1);
            const int n = n0 + g + (i >= 2 ? 8 : 0);
            if (m < M) {
                out[(size_t)m * N + n] = static_cast<T>(c[j][i]);
            }
        }
    }
"""


def kernel_text() -> str:
    """The kernel's text (a remembered batch tune is only valid for it)."""
    return _HEADER + _SOURCE


@cache
def _get_kernel() -> Any:
    """The kernel, built once per process (MLX compiles it per template on first use)."""
    return mx.fast.cuda_kernel(
        name="mlxd_batched_mma",
        input_names=["x", "w", "scales", "biases"],
        output_names=["out"],
        source=_SOURCE,
        header=_HEADER,
    )


def supported(w: mx.array, bits: int, group_size: int, mode: str = "affine") -> bool:
    """Weights this kernel takes: affine 4-bit, groups of 32/64/128, N % 16 == 0, K % 32 == 0."""
    if mode != "affine" or bits != 4 or group_size not in (32, 64, 128) or w.ndim != 2:
        return False
    n, words = w.shape
    return n % TILE_N == 0 and (words * 8) % TILE_K == 0


@cache  # asked for every product of every batched step: a lookup, not the loop
def k_split(n: int, k: int) -> int:
    """Warps sharing each 16 output rows, splitting K: as many as keep the GPU's warp slots
    filled while each still takes at least two 32-wide steps of K."""
    warps = -(-n // TILE_N)
    steps = k // TILE_K
    split = 1
    while split < WARPS and warps * split * 2 <= _TARGET_WARPS and steps // (split * 2) >= 2:
        split *= 2
    return split


def batched_mma(
    x: mx.array,
    w: mx.array,
    scales: mx.array,
    biases: mx.array,
    group_size: int,
    split: int | None = None,
) -> mx.array:
    """``x @ dequantize(w).T`` for ``x`` of shape (..., K) with 1 to 16 rows, 4-bit ``w``
    (CUDA only; ``supported`` says which weights). The output keeps ``x``'s leading shape."""
    (out,) = _get_kernel()(inputs=[x, w, scales, biases], **launch(x, w, group_size, split))
    return out


def launch(x: mx.array, w: mx.array, group_size: int, split: int | None = None) -> dict[str, Any]:
    """The kernel's launch for these operands: template, grid, block, output (the tests run
    the same launch on the CPU through an emulation of CUDA)."""
    shape = x.shape
    n, k = w.shape[0], shape[-1]
    rows = x.size // k
    if split is None:
        split = k_split(n, k)
    return {
        "template": [
            ("T", x.dtype),
            ("GROUP", group_size),
            ("NT", 1 if rows <= 8 else 2),
            ("KS", split),
            ("NW", WARPS),
        ],
        "grid": (-(-n // TILE_N) * 32 * split, 1, 1),
        "threadgroup": (WARPS * 32, 1, 1),
        "output_shapes": [(*shape[:-1], n)],
        "output_dtypes": [x.dtype],
    }
