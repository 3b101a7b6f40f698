"""Pool the rounds of several ``bench.overhead`` runs into one estimate.

    python -m bench.pool bench/results/overhead-7b-h200-*.json [--hosts REGEX] [--table]

One run on a shared machine spreads too much for a one-point target (single rounds move
±10 % on a GPU host) and a device call is capped in time, so runs of one build and shape,
made in separate calls, are pooled here round by round: each round is still a pair
measured minutes apart at most, so pooling keeps the pairing. Prints one JSON object: the
pooled paired median overhead and its 95 % bootstrap interval (as ``bench.overhead`` gives
them for one run), the same for the median time between tokens where every run has it,
the overhead of the geometric mean of the rounds' speed ratios with a 95 % interval
(normal on the logarithms), the pooled extra TTFT, and one summary row per run.

Those intervals count rounds, and a run's rounds share one daemon, worker and benchmark
process, whose speeds differ from the next run's by more than the rounds within a run
show (on a 2-core CPU, eight runs of one build: paired medians 3.9–9.1 %, each with an
interval of about ±1.5 points). With two runs or more, ``overhead_pct_between_runs_*``
gives the mean of the runs' own paired medians and a 95 % t interval: the honest one
when the runs are few. ``overhead_pct_geomean_runs_ci95`` is the geometric mean's interval
from a two-stage bootstrap (runs drawn with replacement, then rounds within each drawn
run), which counts both spreads; ``overhead_pct_geomean_runs_upper95`` is its one-sided
95 % upper bound, the figure to hold against an "at most" target. Both need several runs
(with few, the runs drawn repeat and the interval is too narrow).

The runs of one machine are not independent either: its CPU and where the threads land
set a single stream's speed for all of them (on GPU hosts, host means of −6 % and +3 % for
one build). ``bench.overhead`` records a hashed ``host``; with runs from two hosts or more,
``overhead_pct_geomean_hosts_*`` come from a three-stage bootstrap (hosts, then runs,
then rounds) and ``by_host`` gives each host's geometric mean. ``--hosts REGEX`` names
the hosts of runs that predate the field, from their file paths.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
from pathlib import Path
from statistics import fmean, stdev
from typing import Any

from bench.harness import emit, median
from bench.overhead import itl_overhead_pct, median_fields, overhead_pct


def load(path: Path) -> dict[str, Any]:
    """The last JSON object in ``path`` (``bench.overhead`` prints one; logs may hold more)."""
    lines = [line for line in path.read_text().splitlines() if line.strip().startswith("{")]
    if not lines:
        raise ValueError(f"{path}: no JSON object")
    run: dict[str, Any] = json.loads(lines[-1])
    if run.get("bench") != "overhead" or "native_tok_s_runs" not in run:
        raise ValueError(f"{path}: not the output of bench.overhead")
    return run


def log_ratios(run: dict[str, Any]) -> list[float]:
    """Each round's log(server / native speed): a larger value is a faster server."""
    pairs = zip(run["native_tok_s_runs"], run["server_tok_s_runs"], strict=True)
    return [math.log(s / n) for n, s in pairs]


def geometric_overhead(logs: list[float]) -> tuple[float, tuple[float, float]]:
    """The overhead of the geometric mean of the rounds' speed ratios (%), from their
    ``log_ratios``, and its 95 % interval; the point itself with fewer than two rounds."""
    centre = fmean(logs)
    half = 1.96 * stdev(logs) / math.sqrt(len(logs)) if len(logs) > 1 else 0.0
    # A larger log ratio is a faster server: the bounds swap.
    return _pct(centre), (_pct(centre + half), _pct(centre - half))


def runs_bootstrap_geometric(logs: list[list[float]], draws: int = 4000) -> tuple[tuple[float, float], float]:
    """The geometric-mean overhead's 95 % interval and one-sided 95 % upper bound (%), from
    a two-stage bootstrap over runs (each a list of its rounds' ``log_ratios``): draw as many
    runs as there are, with replacement, then each drawn run's rounds with replacement;
    fixed seed."""
    return _bootstrap_geometric(logs, 2, draws)


def hosts_bootstrap_geometric(
    logs: list[list[list[float]]], draws: int = 4000
) -> tuple[tuple[float, float], float]:
    """The same from a three-stage bootstrap over hosts (each a list of its runs): hosts
    first, then runs within each drawn host, then rounds within each drawn run."""
    return _bootstrap_geometric(logs, 3, draws)


def _bootstrap_geometric(tree: list[Any], depth: int, draws: int) -> tuple[tuple[float, float], float]:
    rng = random.Random(0)
    means = []
    for _ in range(draws):
        # Level by level: as many children drawn, with replacement, as each node has.
        drawn: list[Any] = [tree]
        for _ in range(depth):
            drawn = [node[rng.randrange(len(node))] for node in drawn for _ in node]
        means.append(fmean(drawn))
    means.sort()

    def at(q: float) -> float:
        return means[int(q * (draws - 1))]

    # A larger log ratio is a faster server: the low quantile gives the high overhead.
    return (_pct(at(0.975)), _pct(at(0.025))), _pct(at(0.05))


# Two-sided 95 % quantiles of Student's t by degrees of freedom (1–30); 1.96 beyond.
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228]
_T975 += [2.201, 2.179, 2.16, 2.145, 2.131, 2.12, 2.11, 2.101, 2.093, 2.086]
_T975 += [2.08, 2.074, 2.069, 2.064, 2.06, 2.056, 2.052, 2.048, 2.045, 2.042]


def mean_interval(values: list[float]) -> tuple[float, tuple[float, float]]:
    """The mean of ``values`` (two or more) and its 95 % t interval."""
    centre = fmean(values)
    df = len(values) - 1
    half = (_T975[df - 1] if df <= len(_T975) else 1.96) * stdev(values) / math.sqrt(len(values))
    return centre, (centre - half, centre + half)


def _pct(log_ratio: float) -> float:
    return (1 - math.exp(log_ratio)) * 100


def pool(runs: list[dict[str, Any]], names: list[str], hosts: list[str] | None = None) -> dict[str, Any]:
    """Pool ``runs`` (named ``names`` in the rows). ``hosts``, when given, names each run's
    machine instead of the runs' own ``host`` (which runs from before it was recorded lack)."""
    if len({(run["model"], run["tokens"]) for run in runs}) > 1:
        raise ValueError("the runs differ in model or tokens: pool one shape at a time")
    speeds = [zip(run["native_tok_s_runs"], run["server_tok_s_runs"], strict=True) for run in runs]
    per_run = [[overhead_pct(n, s) for n, s in pairs] for pairs in speeds]
    paired = [v for values in per_run for v in values]
    ttft = [zip(run["native_ttft_ms_runs"], run["server_ttft_ms_runs"], strict=True) for run in runs]
    extra = [s - n for pairs in ttft for n, s in pairs]
    logs = [log_ratios(run) for run in runs]
    geo, geo_interval = geometric_overhead([v for values in logs for v in values])
    result: dict[str, Any] = {
        "bench": "pool",
        "model": runs[0]["model"],
        "tokens": runs[0]["tokens"],
        "devices": sorted({run["device"] for run in runs}),
        "runs": len(paired),
        **median_fields(paired, "overhead_pct_paired_median", "overhead_pct_paired_ci95"),
        "overhead_pct_geomean": round(geo, 2),
        "overhead_pct_geomean_ci95": [round(v, 2) for v in geo_interval],
        **median_fields(extra, "ttft_extra_ms_paired_median", "ttft_extra_ms_ci95"),
    }
    if len(runs) > 1:
        centre, interval = mean_interval([median(values) for values in per_run])
        result["overhead_pct_between_runs_mean"] = round(centre, 2)
        result["overhead_pct_between_runs_ci95"] = [round(v, 2) for v in interval]
        both, upper = runs_bootstrap_geometric(logs)
        result["overhead_pct_geomean_runs_ci95"] = [round(v, 2) for v in both]
        result["overhead_pct_geomean_runs_upper95"] = round(upper, 2)
    labels: list[str | None] = list(hosts) if hosts else [run.get("host") for run in runs]
    if all(labels) and len(set(labels)) > 1:
        result.update(_by_host(logs, [str(label) for label in labels]))
    if all("native_itl_ms_runs" in run for run in runs):
        itl = [
            itl_overhead_pct(n, s)
            for run in runs
            for n, s in zip(run["native_itl_ms_runs"], run["server_itl_ms_runs"], strict=True)
        ]
        result.update(median_fields(itl, "itl_overhead_pct_paired_median", "itl_overhead_pct_paired_ci95"))
    result["each"] = [
        {
            "file": name,
            "runs": run["runs"],
            "native_tok_s": run["native_tok_s"],
            "server_tok_s": run["server_tok_s"],
            "overhead_pct_paired_median": run["overhead_pct_paired_median"],
            **({"host": label} if label else {}),
        }
        for name, run, label in zip(names, runs, labels, strict=True)
    ]
    return result


def _by_host(logs: list[list[float]], labels: list[str]) -> dict[str, Any]:
    """The geometric mean per host and, over hosts, its interval and upper bound: the runs
    of one machine share its speed (its CPU, where the threads land), so they are not as
    many independent samples as they look; a host is."""
    grouped: dict[str, list[list[float]]] = {}
    for label, run in zip(labels, logs, strict=True):
        grouped.setdefault(label, []).append(run)
    both, upper = hosts_bootstrap_geometric(list(grouped.values()))
    return {
        "hosts": len(grouped),
        "overhead_pct_geomean_hosts_ci95": [round(v, 2) for v in both],
        "overhead_pct_geomean_hosts_upper95": round(upper, 2),
        "by_host": [
            {
                "host": label,
                "runs": len(runs),
                "rounds": sum(map(len, runs)),
                "overhead_pct_geomean": round(geometric_overhead([v for run in runs for v in run])[0], 2),
            }
            for label, runs in grouped.items()
        ],
    }


def host_in(pattern: re.Pattern[str], path: Path) -> str:
    """The host ``pattern`` names in ``path``: its first group, or its whole match."""
    found = pattern.search(str(path))
    if found is None:
        raise ValueError(f"{path}: --hosts {pattern.pattern!r} matches nothing in its path")
    return found.group(1) if pattern.groups else found.group(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pool", description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="JSON printed by bench.overhead")
    parser.add_argument(
        "--hosts",
        metavar="REGEX",
        type=re.compile,
        help="each run's host: the first group of REGEX (or all of its match) in the file's path,"
        " for runs that do not record their host",
    )
    parser.add_argument("--table", action="store_true", help="also print a readable table (stderr)")
    args = parser.parse_args(argv)
    try:
        runs = [load(path) for path in args.files]
        names = [path.name for path in args.files]
        if len(set(names)) < len(names):  # runs of several calls may share a file name
            names = [str(path) for path in args.files]
        hosts = [host_in(args.hosts, path) for path in args.files] if args.hosts else None
        result = pool(runs, names, hosts)
    except (OSError, ValueError, KeyError) as exc:
        parser.error(str(exc))
    emit(result, args.table)


if __name__ == "__main__":
    main()
