"""Where a batched decode step spends its time, by batch size, with no server in the way.

    python -m bench.batch_step --model random:qwen2.5-7b --batch 1,2,4,8 --steps 64

For each batch size B it times, in this process:

- ``mlp``: the MLP products of one step (every layer's gate, up and down projections,
  B rows each), the bulk of a decode step's weight traffic;
- ``forward``: the model's decode step on B sequences of equal length with a plain KV
  cache and one argmax for the batch, pipelined like ``generate_step`` (the floor);
- ``batch_shared``: mlx-lm's ``BatchGenerator`` with one sampler shared by the batch;
- ``batch_per_request``: the same with one (greedy) sampler object per request;
- ``graph_build``: of a ``batch_per_request`` step, the host time spent recording the
  model's graph (where it nears the step time, a batch is bound by the host, not the GPU);
- on CUDA, for B ≥ 2, ``mlp_kernel``, ``forward_kernel`` and ``batch_kernel``: the same
  through ``worker.batched_qmv`` (and ``kernel_rel_err``, its largest difference from
  ``mx.quantized_matmul`` relative to the largest output).

Each figure is milliseconds per step and tokens per second for the batch; the first
pass at each size is a warm-up (CUDA compiles kernels per shape).
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from typing import Any

from bench.harness import device_name, resolve_model


def _mlp_inputs(model: Any, batch: int) -> list[tuple[Any, Any]]:
    """(layer, input) for every MLP projection of the model: distinct weights, as in a step."""
    import mlx.core as mx

    pairs = []
    for block in model.model.layers:
        for layer in (block.mlp.gate_proj, block.mlp.up_proj, block.mlp.down_proj):
            width = (
                layer.weight.shape[1] * 32 // layer.bits if hasattr(layer, "bits") else layer.weight.shape[1]
            )
            pairs.append((layer, mx.random.normal((batch, width)).astype(mx.bfloat16)))
    mx.eval([x for _, x in pairs])
    return pairs


def _qmm(model: Any, batch: int, steps: int, kernel: bool) -> float:
    """Milliseconds for the MLP products of one step (every layer), stock or through the kernel."""
    import mlx.core as mx

    from worker.batched_qmv import batched_qmv

    pairs = _mlp_inputs(model, batch)

    def once() -> list[Any]:
        if kernel:
            return [batched_qmv(x, m.weight, m.scales, m.biases, m.bits, m.group_size) for m, x in pairs]
        return [m(x) for m, x in pairs]

    mx.eval(once())
    tic = time.perf_counter()
    for _ in range(steps):
        mx.eval(once())
    return (time.perf_counter() - tic) / steps * 1000


def _kernel_error(model: Any, batch: int) -> float:
    """Largest |kernel − stock| over the MLP products, relative to the largest |stock|."""
    import mlx.core as mx

    from worker.batched_qmv import batched_qmv

    worst = 0.0
    for m, x in _mlp_inputs(model, batch)[:6]:
        ref = m(x).astype(mx.float32)
        got = batched_qmv(x, m.weight, m.scales, m.biases, m.bits, m.group_size).astype(mx.float32)
        err: float = (mx.abs(got - ref).max() / mx.abs(ref).max()).item()  # type: ignore[assignment]
        worst = max(worst, err)
    return worst


def _forward(model: Any, batch: int, steps: int, prompt: int) -> float:
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    def run(n: int) -> float:
        cache = make_prompt_cache(model)
        tokens = mx.random.randint(0, 1000, (batch, prompt))
        logits = model(tokens, cache=cache)
        y = mx.argmax(logits[:, -1, :], axis=-1)
        mx.eval(y)
        tic = time.perf_counter()
        for _ in range(n):
            nxt = mx.argmax(model(y[:, None], cache=cache)[:, -1, :], axis=-1)
            mx.async_eval(nxt)
            y.tolist()
            y = nxt
        y.tolist()
        return (time.perf_counter() - tic) / n * 1000

    run(4)
    return run(steps)


class _TimedModel:
    """The model, counting the host time spent building each step's graph (MLX is lazy:
    calling the model records the work; the device runs it at the next eval)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.seconds = 0.0
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        tic = time.perf_counter()
        try:
            return self.model(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - tic
            self.calls += 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


def _graph_build(model: Any, batch: int, steps: int, prompt: int) -> float:
    """Host milliseconds per batched step spent building the model's graph."""
    timed = _TimedModel(model)
    _batch_generator(timed, batch, steps, prompt, False)
    return timed.seconds / max(timed.calls, 1) * 1000


def _batch_generator(model: Any, batch: int, steps: int, prompt: int, shared: bool) -> float:
    import mlx.core as mx
    from mlx_lm.generate import BatchGenerator
    from mlx_lm.sample_utils import make_sampler

    def run(n: int) -> float:
        if isinstance(model, _TimedModel):
            model.seconds, model.calls = 0.0, 0
        gen = BatchGenerator(model, stop_tokens=[], completion_batch_size=batch, prefill_batch_size=batch)
        prompts: list[list[int]] = mx.random.randint(0, 1000, (batch, prompt)).tolist()  # type: ignore[assignment]
        samplers = None if shared else [make_sampler(temp=0.0) for _ in range(batch)]
        gen.insert(prompts, max_tokens=[n + 8] * batch, samplers=samplers)
        while len(gen.next_generated()) < batch:  # prefill, then the first token of each
            pass
        tic = time.perf_counter()
        for _ in range(n):
            gen.next_generated()
        elapsed = time.perf_counter() - tic
        gen.close()
        return elapsed / n * 1000

    run(4)
    return run(steps)


def _with_strategy(model: Any, strategy: str, measure: Any) -> float:
    """Measure with the model's quantized layers routed by ``strategy``: ``flat``,
    ``kernel`` (``kernel-r8``: 8 output rows per warp), or ``auto`` (tuned per shape)."""
    from worker import batched_qmv

    name, _, rows = strategy.partition("-r")
    batched_qmv.STRATEGY = name
    batched_qmv.ROWS = int(rows or 4)
    batched_qmv.install(model, force=True)
    try:
        return float(measure())
    finally:
        batched_qmv.uninstall(model)
        batched_qmv.STRATEGY, batched_qmv.ROWS = "auto", 4


def _forward_with(model: Any, strategy: str, batch: int, args: argparse.Namespace) -> float:
    return _with_strategy(model, strategy, lambda: _forward(model, batch, args.steps, args.prompt_tokens))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="random:qwen2.5-0.5b")
    parser.add_argument("--batch", default="1,2,4,8")
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--strategies", default="flat,kernel,auto", help="CUDA routings to compare")
    parser.add_argument("--strategies-anywhere", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out")
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args(argv)

    import mlx.core as mx
    from mlx_lm import load

    model_dir = resolve_model(args.model)
    model = load(str(model_dir))[0]
    skip = set(filter(None, args.skip.split(",")))
    cuda = bool(mx.cuda.is_available())
    tuned: dict[str, Any] = {}
    if cuda and "auto" in args.strategies:
        from worker import batched_qmv

        batched_qmv.install(model)
        tic = time.perf_counter()
        choice = batched_qmv.tune(model, max(int(x) for x in args.batch.split(",")))
        tuned = {
            "tune_s": round(time.perf_counter() - tic, 2),
            "choice": {str(k): v for k, v in choice.items()},
        }
        batched_qmv.uninstall(model)
        print(json.dumps(tuned), flush=True)
    rows: list[dict[str, Any]] = []
    for b in [int(x) for x in args.batch.split(",")]:
        row: dict[str, Any] = {"batch": b}
        parts = {
            "mlp": lambda b=b: _qmm(model, b, args.steps, kernel=False),
            "forward": lambda b=b: _forward(model, b, args.steps, args.prompt_tokens),
            "batch_shared": lambda b=b: _batch_generator(model, b, args.steps, args.prompt_tokens, True),
            "batch_per_request": lambda b=b: _batch_generator(
                model, b, args.steps, args.prompt_tokens, False
            ),
            "graph_build": lambda b=b: _graph_build(model, b, args.steps, args.prompt_tokens),
        }
        if cuda and b >= 2:
            parts["mlp_kernel"] = lambda b=b: _qmm(model, b, args.steps, kernel=True)
            row["kernel_rel_err"] = _kernel_error(model, b)
        if cuda or args.strategies_anywhere:
            for strategy in filter(None, args.strategies.split(",")):
                parts[f"forward_{strategy}"] = partial(_forward_with, model, strategy, b, args)
        for name, fn in parts.items():
            if name in skip:
                continue
            ms = fn()
            row[f"{name}_ms"] = round(ms, 3)
            if not name.startswith(("mlp", "graph")) and ms > 0:
                row[f"{name}_tok_s"] = round(b * 1000 / ms, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
        mx.clear_cache()
    result = {"model": args.model, "device": device_name(), "steps": args.steps, "rows": rows, **tuned}
    print(json.dumps(result))
    if args.table:
        keys = [k for k in rows[0] if k != "batch"]
        print("batch " + " ".join(f"{k:>22}" for k in keys))
        for r in rows:
            print(f"{r['batch']:>5} " + " ".join(f"{r.get(k, ''):>22}" for k in keys))


if __name__ == "__main__":
    main()
