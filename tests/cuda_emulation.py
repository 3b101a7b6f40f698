"""Run the worker's CUDA kernels on the CPU: their text compiled by the host's C++ compiler
against an emulated CUDA thread model, so their index arithmetic is tested without a GPU.

``mx.fast.cuda_kernel`` wraps a kernel body in a generated signature (each input as a
pointer with its ``_shape``/``_strides``/``_ndim`` when the body names them, then the
outputs, then the template arguments as ``constexpr``/``using``). ``run`` generates the same
around the same body and runs the launch MLX would: ``grid`` threads in blocks of
``threadgroup``, every thread a host thread. Blocks run one after another; within a block
``__syncthreads`` is a barrier, ``__shfl_xor_sync`` an exchange between the 32 lanes of a
warp, and ``mma.sync.m16n8k16`` (inline PTX) is replaced by a warp-collective product that
lays the operands out as the PTX ISA documents. Numbers are real: bfloat16 and float16
round as on the device, accumulation is float32.

This checks what a kernel computes, not how fast, and not what only the device can say
(the PTX itself, register limits, alignment faults): the GPU benchmarks do that.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np


@cache
def compiler() -> str | None:
    """A C++20 compiler with ``<barrier>`` and ``_Float16`` (g++ 12, clang 15), or None."""
    for name in ("g++", "clang++"):
        path = shutil.which(name)
        if path is None:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            probe = Path(tmp) / "probe.cpp"
            probe.write_text(
                "#include <barrier>\nint main() { std::barrier<> b(1); _Float16 h = 1; return int(h) - 1; }\n"
            )
            done = subprocess.run(
                [path, "-std=c++20", "-pthread", str(probe), "-o", str(Path(tmp) / "probe")],
                capture_output=True,
            )
            if done.returncode == 0:
                return path
    return None


_PRELUDE = r"""
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>
#define __device__
#define __global__
#define __forceinline__ inline
#define __shared__ static
#define __grid_constant__

struct Dim3 { unsigned x = 0, y = 0, z = 0; };
thread_local Dim3 threadIdx, blockIdx;
Dim3 blockDim, gridDim;
std::barrier<>* emu_block_barrier;
inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }

struct Shape { int32_t v[8]; int32_t operator[](int i) const { return v[i]; } };
struct Strides { int64_t v[8]; int64_t operator[](int i) const { return v[i]; } };
struct uint4 { uint32_t x, y, z, w; };

static uint16_t emu_f2bf(float f) {
  uint32_t u; std::memcpy(&u, &f, 4); u += 0x7FFFu + ((u >> 16) & 1u); return uint16_t(u >> 16);
}
static float emu_bf2f(uint16_t b) {
  uint32_t u = uint32_t(b) << 16; float f; std::memcpy(&f, &u, 4); return f;
}
struct __nv_bfloat16 {
  uint16_t v = 0;
  __nv_bfloat16() = default;
  __nv_bfloat16(float f) : v(emu_f2bf(f)) {}
  operator float() const { return emu_bf2f(v); }
};
struct __half {
  _Float16 v = 0;
  __half() = default;
  __half(float f) : v(static_cast<_Float16>(f)) {}
  operator float() const { return static_cast<float>(v); }
};
struct __nv_bfloat162 { __nv_bfloat16 lo, hi; };
struct __half2 { __half lo, hi; };
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) { return {lo, hi}; }
inline __half2 __floats2half2_rn(float lo, float hi) { return {lo, hi}; }
inline float __expf(float x) { return std::exp(x); }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }

// Per-warp exchange slots: a warp's 32 lanes meet at its barrier.
struct EmuWarp {
  std::barrier<>* barrier;
  float f[32];
  uint32_t a[32][4], b[32][2];
  float c[32][4];
};
EmuWarp emu_warps[32];
inline EmuWarp& emu_warp() { return emu_warps[threadIdx.x >> 5]; }

inline float __shfl_xor_sync(unsigned, float v, int offset) {
  EmuWarp& w = emu_warp();
  const int lane = threadIdx.x & 31;
  w.f[lane] = v;
  w.barrier->arrive_and_wait();
  const float out = w.f[lane ^ offset];
  w.barrier->arrive_and_wait();
  return out;
}

bool emu_mma_bf16 = true;
static float emu_half_of(uint32_t r, int hi) {
  const uint16_t h = hi ? uint16_t(r >> 16) : uint16_t(r & 0xFFFFu);
  if (emu_mma_bf16) return emu_bf2f(h);
  _Float16 f; std::memcpy(&f, &h, 2); return static_cast<float>(f);
}
// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}: D = A (16x16) B (16x8) + C, fragments
// by lane = 4 * group + t as the PTX ISA lays them out.
inline void emu_mma(bool bf16, float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  EmuWarp& w = emu_warp();
  const int lane = threadIdx.x & 31;
  for (int i = 0; i < 4; ++i) { w.a[lane][i] = a[i]; w.c[lane][i] = c[i]; }
  w.b[lane][0] = b0; w.b[lane][1] = b1;
  w.barrier->arrive_and_wait();
  if (lane == 0) {
    emu_mma_bf16 = bf16;
    float A[16][16], B[16][8], C[16][8];
    for (int l = 0; l < 32; ++l) {
      const int g = l >> 2, t = l & 3;
      for (int i = 0; i < 8; ++i) {
        const int row = (i % 4 < 2) ? g : g + 8;
        const int col = 2 * t + (i & 1) + (i >= 4 ? 8 : 0);
        A[row][col] = emu_half_of(w.a[l][i / 2], i & 1);
      }
      for (int i = 0; i < 4; ++i)
        B[2 * t + (i & 1) + (i >= 2 ? 8 : 0)][g] = emu_half_of(w.b[l][i / 2], i & 1);
      for (int i = 0; i < 4; ++i) C[i < 2 ? g : g + 8][2 * t + (i & 1)] = w.c[l][i];
    }
    for (int m = 0; m < 16; ++m)
      for (int n = 0; n < 8; ++n) {
        float s = C[m][n];
        for (int k = 0; k < 16; ++k) s += A[m][k] * B[k][n];
        C[m][n] = s;
      }
    for (int l = 0; l < 32; ++l)
      for (int i = 0; i < 4; ++i) w.c[l][i] = C[i < 2 ? (l >> 2) : (l >> 2) + 8][2 * (l & 3) + (i & 1)];
  }
  w.barrier->arrive_and_wait();
  for (int i = 0; i < 4; ++i) c[i] = w.c[lane][i];
  w.barrier->arrive_and_wait();
}
"""

_CUDA_TYPE = {
    mx.bfloat16: "__nv_bfloat16",
    mx.float16: "__half",
    mx.float32: "float",
    mx.uint32: "uint32_t",
    mx.int32: "int32_t",
}
_NUMPY_TYPE = {
    mx.bfloat16: np.uint16,  # raw bits
    mx.float16: np.float16,
    mx.float32: np.float32,
    mx.uint32: np.uint32,
    mx.int32: np.int32,
}


def _emulated_asm(text: str) -> str:
    """Inline ``mma.sync`` PTX → the emulated warp product (its operands kept)."""

    def call(match: re.Match[str]) -> str:
        kind = "true" if ".bf16.bf16." in match.group(0) else "false"
        return f"emu_mma({kind}, c, a, b0, b1);"

    # The statement ends at its last operand, ``"r"(b1));`` (the PTX text has ';' of its own).
    return re.sub(r'asm volatile\(\s*"mma\.sync.*?"r"\(b1\)\);', call, text, flags=re.S)


def _to_numpy(array: mx.array) -> np.ndarray:
    if array.dtype == mx.bfloat16:
        return np.array(array.view(mx.uint16))
    return np.array(array)


def _from_numpy(data: np.ndarray, dtype: Any, shape: tuple[int, ...]) -> mx.array:
    out = mx.array(data.reshape(shape))
    return out.view(mx.bfloat16) if dtype == mx.bfloat16 else out


def run(
    *,
    header: str,
    source: str,
    inputs: dict[str, mx.array],
    template: list[tuple[str, Any]],
    grid: tuple[int, int, int],
    threadgroup: tuple[int, int, int],
    output_shapes: list[tuple[int, ...]],
    output_dtypes: list[Any],
    output_names: tuple[str, ...] = ("out",),
    workdir: Path | None = None,
) -> list[mx.array]:
    """The kernel's outputs for these inputs, as ``mx.fast.cuda_kernel`` would launch it
    (1-D grids; inputs row-contiguous or read through their strides, as the kernel says)."""
    cxx = compiler()
    assert cxx is not None, "no C++20 compiler"
    params, loads = [], []
    for index, (name, array) in enumerate(inputs.items()):
        params.append(f"const {_CUDA_TYPE[array.dtype]}* {name}")
        if f"{name}_shape" in source:
            params.append(f"Shape {name}_shape")
        if f"{name}_strides" in source:
            params.append(f"Strides {name}_strides")
        if f"{name}_ndim" in source:
            params.append(f"int {name}_ndim")
        loads.append((name, array, index))
    for name, dtype in zip(output_names, output_dtypes, strict=True):
        params.append(f"{_CUDA_TYPE[dtype]}* {name}")
    constants = []
    for name, value in template:
        if isinstance(value, bool):
            constants.append(f"  constexpr bool {name} = {'true' if value else 'false'};")
        elif isinstance(value, int):
            constants.append(f"  constexpr int {name} = {value};")
        else:
            constants.append(f"  using {name} = {_CUDA_TYPE[value]};")
    kernel = "void emu_kernel(" + ", ".join(params) + ") {\n" + "\n".join(constants) + "\n" + source + "\n}\n"

    # main(): read every input's bytes, shape and strides; launch; write the outputs.
    args, setup = [], []
    for name, array, index in loads:
        ctype = _CUDA_TYPE[array.dtype]
        setup.append(f"  auto {name}_data = emu_read<{ctype}>({index});")
        args.append(f"{name}_data.data()")
        shape = ", ".join(str(s) for s in array.shape) or "0"
        strides = ", ".join(str(s) for s in _strides(array.shape)) or "0"
        if f"{name}_shape" in source:
            setup.append(f"  Shape {name}_shape{{{{{shape}}}}};")
            args.append(f"{name}_shape")
        if f"{name}_strides" in source:
            setup.append(f"  Strides {name}_strides{{{{{strides}}}}};")
            args.append(f"{name}_strides")
        if f"{name}_ndim" in source:
            args.append(str(array.ndim))
    for name, dtype, shape in zip(output_names, output_dtypes, output_shapes, strict=True):
        size = int(np.prod(shape))
        setup.append(f"  std::vector<{_CUDA_TYPE[dtype]}> {name}_data({size});")
        args.append(f"{name}_data.data()")
    block = min(threadgroup[0], grid[0])
    blocks = -(-grid[0] // block)
    writes = "\n".join(f"  emu_write({name}_data, {i});" for i, name in enumerate(output_names))
    main = f"""
template <typename T> std::vector<T> emu_read(int index) {{
  char path[64]; std::snprintf(path, sizeof path, "in%d.bin", index);
  FILE* f = std::fopen(path, "rb");
  std::fseek(f, 0, SEEK_END); long n = std::ftell(f); std::fseek(f, 0, SEEK_SET);
  std::vector<T> v(n / sizeof(T)); if (n) std::fread(v.data(), 1, n, f); std::fclose(f); return v;
}}
template <typename T> void emu_write(const std::vector<T>& v, int index) {{
  char path[64]; std::snprintf(path, sizeof path, "out%d.bin", index);
  FILE* f = std::fopen(path, "wb"); std::fwrite(v.data(), sizeof(T), v.size(), f); std::fclose(f);
}}
int main() {{
{chr(10).join(setup)}
  blockDim.x = {block}; blockDim.y = blockDim.z = 1; gridDim.x = {blocks};
  for (unsigned bx = 0; bx < {blocks}; ++bx) {{
    std::barrier<> block_barrier({block});
    emu_block_barrier = &block_barrier;
    std::vector<std::barrier<>*> warps;
    for (int w = 0; w < {block} / 32; ++w) {{
      warps.push_back(new std::barrier<>(32));
      emu_warps[w].barrier = warps.back();
    }}
    std::vector<std::thread> threads;
    for (unsigned tx = 0; tx < {block}; ++tx)
      threads.emplace_back([&, tx, bx] {{
        threadIdx.x = tx; blockIdx.x = bx;
        emu_kernel({", ".join(args)});
      }});
    for (auto& t : threads) t.join();
    for (auto* w : warps) delete w;
  }}
{writes}
  return 0;
}}
"""
    text = _PRELUDE + _emulated_asm(header) + kernel + main
    work = workdir or Path(tempfile.mkdtemp(prefix="mlxd-cuda-emu-"))
    binary = work / ("k" + hashlib.sha1(text.encode()).hexdigest()[:16])
    if not binary.exists():
        cpp = binary.with_suffix(".cpp")
        cpp.write_text(text)
        subprocess.run(
            [cxx, "-std=c++20", "-O1", "-pthread", "-w", str(cpp), "-o", str(binary)],
            check=True,
            capture_output=True,
        )
    for _, array, index in loads:
        (work / f"in{index}.bin").write_bytes(_to_numpy(array).tobytes())
    subprocess.run([str(binary)], cwd=work, check=True, capture_output=True, timeout=300)
    outputs = []
    for index, (dtype, shape) in enumerate(zip(output_dtypes, output_shapes, strict=True)):
        data = np.fromfile(work / f"out{index}.bin", dtype=_NUMPY_TYPE[dtype])
        outputs.append(_from_numpy(data, dtype, tuple(shape)))
    return outputs


def _strides(shape: tuple[int, ...]) -> list[int]:
    out, step = [], 1
    for size in reversed(shape):
        out.append(step)
        step *= size
    return list(reversed(out))
