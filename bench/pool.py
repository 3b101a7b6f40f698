"""Pool the rounds of several ``bench.overhead`` runs into one estimate.

    python -m bench.pool bench/results/overhead-7b-h200-*.json [--table]

One run on a shared machine spreads too much for a one-point target (single rounds move
±10 % on a GPU host) and a device call is capped in time, so runs of one build and shape,
made in separate calls, are pooled here round by round: each round is still a pair
measured minutes apart at most, so pooling keeps the pairing. Prints one JSON object: the
pooled paired median overhead and its 95 % bootstrap interval (as ``bench.overhead`` gives
them for one run), the same for the median time between tokens where every run has it,
the overhead of the geometric mean of the rounds' speed ratios with a 95 % interval
(normal on the logarithms), the pooled extra TTFT, and one summary row per run.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from statistics import fmean, stdev
from typing import Any

from bench.harness import emit, median
from bench.overhead import itl_overhead_pct, median_interval, overhead_pct


def load(path: Path) -> dict[str, Any]:
    """The last JSON object in ``path`` (``bench.overhead`` prints one; logs may hold more)."""
    lines = [line for line in path.read_text().splitlines() if line.strip().startswith("{")]
    if not lines:
        raise ValueError(f"{path}: no JSON object")
    run: dict[str, Any] = json.loads(lines[-1])
    if run.get("bench") != "overhead" or "native_tok_s_runs" not in run:
        raise ValueError(f"{path}: not the output of bench.overhead")
    return run


def geometric_overhead(native: list[float], server: list[float]) -> tuple[float, tuple[float, float]]:
    """The overhead of the geometric mean of the rounds' speed ratios (%) and its 95 %
    interval; the interval is the point itself with fewer than two rounds."""
    logs = [math.log(s / n) for n, s in zip(native, server, strict=True)]
    centre = fmean(logs)
    half = 1.96 * stdev(logs) / math.sqrt(len(logs)) if len(logs) > 1 else 0.0
    # A larger log ratio is a faster server: the bounds swap.
    return _pct(centre), (_pct(centre + half), _pct(centre - half))


def _pct(log_ratio: float) -> float:
    return (1 - math.exp(log_ratio)) * 100


def pool(runs: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    if len({(run["model"], run["tokens"]) for run in runs}) > 1:
        raise ValueError("the runs differ in model or tokens: pool one shape at a time")
    native = [v for run in runs for v in run["native_tok_s_runs"]]
    server = [v for run in runs for v in run["server_tok_s_runs"]]
    paired = [overhead_pct(n, s) for n, s in zip(native, server, strict=True)]
    ttft = [zip(run["native_ttft_ms_runs"], run["server_ttft_ms_runs"], strict=True) for run in runs]
    extra = [s - n for pairs in ttft for n, s in pairs]
    geo, geo_interval = geometric_overhead(native, server)
    result: dict[str, Any] = {
        "bench": "pool",
        "model": runs[0]["model"],
        "tokens": runs[0]["tokens"],
        "devices": sorted({run["device"] for run in runs}),
        "runs": len(paired),
        "overhead_pct_paired_median": round(median(paired), 2),
        "overhead_pct_paired_ci95": [round(v, 2) for v in median_interval(paired)],
        "overhead_pct_geomean": round(geo, 2),
        "overhead_pct_geomean_ci95": [round(v, 2) for v in geo_interval],
        "ttft_extra_ms_paired_median": round(median(extra), 2),
        "ttft_extra_ms_ci95": [round(v, 2) for v in median_interval(extra)],
    }
    if all("native_itl_ms_runs" in run for run in runs):
        itl = [
            itl_overhead_pct(n, s)
            for run in runs
            for n, s in zip(run["native_itl_ms_runs"], run["server_itl_ms_runs"], strict=True)
        ]
        result["itl_overhead_pct_paired_median"] = round(median(itl), 2)
        result["itl_overhead_pct_paired_ci95"] = [round(v, 2) for v in median_interval(itl)]
    result["each"] = [
        {
            "file": name,
            "runs": run["runs"],
            "native_tok_s": run["native_tok_s"],
            "server_tok_s": run["server_tok_s"],
            "overhead_pct_paired_median": run["overhead_pct_paired_median"],
        }
        for name, run in zip(names, runs, strict=True)
    ]
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pool", description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="JSON printed by bench.overhead")
    parser.add_argument("--table", action="store_true", help="also print a readable table (stderr)")
    args = parser.parse_args(argv)
    try:
        runs = [load(path) for path in args.files]
        result = pool(runs, [path.name for path in args.files])
    except (OSError, ValueError, KeyError) as exc:
        parser.error(str(exc))
    emit(result, args.table)


if __name__ == "__main__":
    main()
