"""The benchmark scripts run end to end on the tiny random model (speed is not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.e2e


def _invoke(
    module: str, argv: list[str], cache: Path, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m <module> <argv>`` with its models cached under ``cache``."""
    env = {**os.environ, "MLXD_BENCH_CACHE": str(cache)}
    command = [sys.executable, "-m", module, *argv]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _run(module: str, argv: list[str], cache: Path) -> dict[str, Any]:
    """Run ``python -m <module> <argv>`` and return the JSON object it prints last."""
    out = _invoke(module, argv, cache)
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_overhead_benchmark_prints_its_figures(tmp_path: Path) -> None:
    argv = ["--model", "random:tiny", "--tokens", "8", "--prompt-tokens", "8", "--runs", "2"]
    result = _run("bench.overhead", argv, tmp_path)
    keys = ("native_tok_s", "server_tok_s", "server_eval_tok_s", "overhead_pct", "overhead_pct_paired_median")
    for key in (*keys, "native_ttft_ms", "server_ttft_ms"):
        assert isinstance(result[key], float) and result[key] == result[key], key
    assert result["native_tok_s"] > 0 and result["server_tok_s"] > 0
    assert result["ipc"] == "shm" and result["tokens"] == 8 and result["model"] == "random:tiny"
    assert "cpu" in result["device"].lower()
    assert len(result["host"]) == 12 and int(result["host"], 16) >= 0  # this machine, hashed
    assert 0 < result["setup_s"] < 300  # the model built, both sides loaded and warmed up
    # Two interleaved rounds: one figure per round on each side.
    assert len(result["native_tok_s_runs"]) == len(result["server_tok_s_runs"]) == 2
    low, high = result["overhead_pct_ci95"]
    assert low <= high
    speeds = zip(result["native_tok_s_runs"], result["server_tok_s_runs"], strict=True)
    paired = [(1 - s / n) * 100 for n, s in speeds]
    low, high = result["overhead_pct_paired_ci95"]
    assert min(paired) - 0.02 <= low <= result["overhead_pct_paired_median"] <= high <= max(paired) + 0.02
    extra = [s - n for n, s in zip(result["native_ttft_ms_runs"], result["server_ttft_ms_runs"], strict=True)]
    assert result["ttft_extra_ms_paired_median"] == pytest.approx(sum(extra) / 2, abs=0.02)
    low, high = result["ttft_extra_ms_ci95"]
    # (the runs are rounded to 0.01 ms each, so their difference can be 0.02 off)
    assert min(extra) - 0.02 <= low <= high <= max(extra) + 0.02
    # The median time between tokens: 7 gaps of 8 tokens on each side, in every round.
    gaps = zip(result["native_itl_ms_runs"], result["server_itl_ms_runs"], strict=True)
    itl = [(1 - n / s) * 100 for n, s in gaps]
    assert len(itl) == 2 and all(n > 0 for n in result["native_itl_ms_runs"] + result["server_itl_ms_runs"])
    assert result["itl_overhead_pct_paired_median"] == pytest.approx(sum(itl) / 2, abs=0.05)
    low, high = result["itl_overhead_pct_paired_ci95"]
    assert min(itl) - 0.05 <= low <= high <= max(itl) + 0.05
    # A round's median gap (ms) is at most the sum of its 7 gaps: the window its speed spans.
    for speed, gap in zip(result["native_tok_s_runs"], result["native_itl_ms_runs"], strict=True):
        assert 0 < gap <= 7 * 1000 / speed + 0.01


def _overhead_run(path: Path, native: list[float], server: list[float], **extra: Any) -> Path:
    """A file shaped like ``bench.overhead``'s output (a log line before it), for the pool."""
    run = {
        "bench": "overhead",
        "model": "random:tiny",
        "device": "Device(cpu, 0)",
        "tokens": 8,
        "runs": len(native),
        "native_tok_s": 0.0,
        "server_tok_s": 0.0,
        "overhead_pct_paired_median": 0.0,
        "native_tok_s_runs": native,
        "server_tok_s_runs": server,
        "native_ttft_ms_runs": [10.0] * len(native),
        "server_ttft_ms_runs": [12.0] * len(native),
        **extra,
    }
    path.write_text("loading...\n" + json.dumps(run) + "\n")
    return path


def test_pool_joins_the_rounds_of_several_runs(tmp_path: Path) -> None:
    from bench.pool import load, pool

    a = _overhead_run(tmp_path / "a.json", [100.0, 100.0], [99.0, 97.0], native_itl_ms_runs=[10.0, 10.0])
    a_run = {**load(a), "server_itl_ms_runs": [10.1, 10.3]}
    b_run = load(_overhead_run(tmp_path / "b.json", [200.0], [196.0]))
    result = pool([a_run, b_run], ["a.json", "b.json"])
    assert result["runs"] == 3 and [each["file"] for each in result["each"]] == ["a.json", "b.json"]
    assert result["overhead_pct_paired_median"] == 2.0  # of 1, 3 and 2 %
    low, high = result["overhead_pct_paired_ci95"]
    assert 1.0 <= low <= 2.0 <= high <= 3.0
    assert result["ttft_extra_ms_paired_median"] == 2.0
    assert 1.9 < result["overhead_pct_geomean"] < 2.1
    low, high = result["overhead_pct_geomean_ci95"]
    assert low < result["overhead_pct_geomean"] < high
    assert "itl_overhead_pct_paired_median" not in result  # b has no gaps
    # Between runs: the mean of each run's own paired median (a: 1 and 3 %, b: 2 %).
    assert result["overhead_pct_between_runs_mean"] == 2.0
    assert result["overhead_pct_between_runs_ci95"] == [2.0, 2.0]
    low, high = result["overhead_pct_geomean_runs_ci95"]
    assert 0.99 <= low <= result["overhead_pct_geomean"] <= high <= 3.01  # rounds of 1, 3 and 2 %
    assert result["overhead_pct_geomean_runs_upper95"] <= high
    result = pool([a_run], ["a.json"])
    assert "overhead_pct_between_runs_mean" not in result  # one run has no spread between runs
    assert "overhead_pct_geomean_runs_ci95" not in result
    both = ((1 - 10 / 10.1) + (1 - 10 / 10.3)) * 50  # the median of two rounds' gap overheads
    assert result["itl_overhead_pct_paired_median"] == pytest.approx(both, abs=0.01)


def test_the_runs_bootstrap_counts_the_spread_between_runs(tmp_path: Path) -> None:
    from bench.pool import load, pool

    # Rounds agree closely within each run, runs do not (0-1 % against 4-5 %): rounds alone
    # give a narrow interval, the two-stage bootstrap one as wide as the runs are apart.
    runs = [
        load(_overhead_run(tmp_path / f"{i}.json", [100.0] * 20, [100.0 - base - k / 20 for k in range(20)]))
        for i, base in enumerate([0.0, 4.0, 0.0, 4.0])
    ]
    result = pool(runs, [f"{i}.json" for i in range(4)])
    rounds_low, rounds_high = result["overhead_pct_geomean_ci95"]
    low, high = result["overhead_pct_geomean_runs_ci95"]
    assert rounds_high - rounds_low < 2.0
    assert low < rounds_low and high > rounds_high and high - low > 2.5
    assert rounds_high < result["overhead_pct_geomean_runs_upper95"] <= high


def test_the_hosts_bootstrap_counts_runs_of_one_machine_once(tmp_path: Path) -> None:
    from bench.pool import load, pool

    # Three runs on each of two hosts; the hosts differ (0-1 % against 4-5 %), the runs of
    # one host do not: counted as six independent runs they give a narrower interval than
    # the two hosts can support.
    def run(i: int, base: float, host: str) -> dict[str, Any]:
        server = [100.0 - base - k / 20 for k in range(20)]
        return load(_overhead_run(tmp_path / f"{i}.json", [100.0] * 20, server, host=host))

    runs = [run(i, base, host) for i, (base, host) in enumerate([(0.0, "a"), (4.0, "b")] * 3)]
    result = pool(runs, [f"{i}.json" for i in range(6)])
    assert result["hosts"] == 2
    runs_low, runs_high = result["overhead_pct_geomean_runs_ci95"]
    low, high = result["overhead_pct_geomean_hosts_ci95"]
    assert low < runs_low and high > runs_high
    assert runs_high < result["overhead_pct_geomean_hosts_upper95"] <= high
    by_host = {row["host"]: row for row in result["by_host"]}
    assert by_host["a"]["runs"] == by_host["b"]["runs"] == 3 and by_host["a"]["rounds"] == 60
    assert (
        0.4 < by_host["a"]["overhead_pct_geomean"] < 0.6 and 4.4 < by_host["b"]["overhead_pct_geomean"] < 4.6
    )
    assert [row["host"] for row in result["each"]] == ["a", "b"] * 3
    # Labels given for runs that do not name their host win; one host has no spread to count.
    result = pool(runs, [f"{i}.json" for i in range(6)], ["x"] * 6)
    assert "hosts" not in result and {row["host"] for row in result["each"]} == {"x"}
    unnamed = [load(_overhead_run(tmp_path / f"u{i}.json", [100.0], [99.0])) for i in range(2)]
    result = pool(unnamed, ["u0.json", "u1.json"])
    assert "hosts" not in result and all("host" not in row for row in result["each"])


def test_pool_reads_hosts_from_file_names(tmp_path: Path) -> None:
    files = []
    for call in ("m1", "m1", "m2"):
        folder = tmp_path / call / str(len(files))
        folder.mkdir(parents=True)
        files.append(str(_overhead_run(folder / "run.json", [100.0, 100.0], [99.0, 98.0])))
    out = _invoke("bench.pool", ["--hosts", r"/(m\d)/", *files], tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["hosts"] == 2 and [row["host"] for row in result["each"]] == ["m1", "m1", "m2"]
    out = _invoke("bench.pool", ["--hosts", "elsewhere", *files], tmp_path, timeout=60)
    assert out.returncode == 2 and "--hosts 'elsewhere' matches nothing in its path" in out.stderr


def test_the_between_runs_interval_is_students_t() -> None:
    from bench.pool import mean_interval

    centre, (low, high) = mean_interval([1.0, 2.0, 3.0])  # sd 1, 2 degrees of freedom
    assert centre == 2.0 and high - centre == pytest.approx(4.303 / 3**0.5, abs=1e-3)
    assert centre - low == pytest.approx(high - centre)
    centre, (low, high) = mean_interval([float(v) for v in range(40)])  # beyond the table: 1.96
    assert high - centre == pytest.approx(1.96 * 11.69 / 40**0.5, abs=0.01)


def test_pool_refuses_other_files_and_mixed_shapes(tmp_path: Path) -> None:
    def pool_cli(*files: Path) -> subprocess.CompletedProcess[str]:
        return _invoke("bench.pool", list(map(str, files)), tmp_path, timeout=60)

    a = _overhead_run(tmp_path / "a.json", [100.0], [99.0])
    b = _overhead_run(tmp_path / "b.json", [100.0], [99.0], tokens=16)
    out = pool_cli(a, b)
    assert out.returncode == 2 and "the runs differ in model or tokens" in out.stderr
    other = tmp_path / "other.json"
    other.write_text('{"bench": "concurrency"}\n')
    out = pool_cli(a, other)
    assert out.returncode == 2 and "other.json: not the output of bench.overhead" in out.stderr
    out = pool_cli(a, a)
    assert out.returncode == 0 and json.loads(out.stdout)["runs"] == 2
    # Runs of separate calls often share a name: the rows then name the paths given.
    (tmp_path / "call2").mkdir()
    a2 = _overhead_run(tmp_path / "call2" / "a.json", [100.0], [98.0])
    out = pool_cli(a, a2)
    assert [each["file"] for each in json.loads(out.stdout)["each"]] == [str(a), str(a2)]


def test_overhead_benchmark_stops_starting_rounds_after_max_seconds(tmp_path: Path) -> None:
    argv = ["--model", "random:tiny", "--tokens", "4", "--prompt-tokens", "8"]
    argv += ["--runs", "50", "--max-seconds", "0"]
    result = _run("bench.overhead", argv, tmp_path)
    # The deadline has passed before the first round: one round still runs, the rest do not.
    assert result["runs"] == 1 and len(result["native_tok_s_runs"]) == 1


def test_overhead_benchmark_compares_a_second_daemon_in_the_same_rounds(tmp_path: Path) -> None:
    argv = ["--model", "random:tiny", "--tokens", "6", "--prompt-tokens", "8", "--runs", "3"]
    argv += ["--env-b", "MLXD_TOKEN_THREAD=0", "--env-b", "MLXD_PROMPT_CACHE=0"]
    result = _run("bench.overhead", argv, tmp_path)
    assert result["b_env"] == {"MLXD_TOKEN_THREAD": "0", "MLXD_PROMPT_CACHE": "0"}
    assert result["runs"] == 3 and len(result["b_server_tok_s_runs"]) == len(result["server_tok_s_runs"]) == 3
    rounds = zip(result["server_tok_s_runs"], result["b_server_tok_s_runs"], strict=True)
    versus = sorted((1 - b / a) * 100 for a, b in rounds)
    assert result["b_vs_a_pct_paired_median"] == pytest.approx(versus[1], abs=0.02)
    low, high = result["b_overhead_pct_paired_ci95"]
    assert low <= result["b_overhead_pct_paired_median"] <= high
    assert all(v > 0 for v in result["b_server_ttft_ms_runs"])


@pytest.mark.parametrize("sides", [1, 2, 3])
def test_round_orders_let_every_side_follow_every_side_equally_often(sides: int) -> None:
    from collections import Counter

    from bench.overhead import round_order

    period = {1: 1, 2: 2, 3: 6}[sides]
    runs = [side for r in range(period) for side in round_order(r, sides)]
    assert all(sorted(round_order(r, sides)) == list(range(sides)) for r in range(period))
    assert round_order(period, sides) == round_order(0, sides)  # the orders repeat
    follows = Counter(zip([runs[-1], *runs[:-1]], runs, strict=True))  # (before, after), cyclic
    assert set(follows) == {(a, b) for a in range(sides) for b in range(sides)}
    assert len(set(follows.values())) == 1, follows


def test_overhead_benchmark_refuses_a_malformed_assignment(tmp_path: Path) -> None:
    argv = ["--model", "random:tiny", "--env-b", "MLXD_TOKEN_THREAD"]
    out = _invoke("bench.overhead", argv, tmp_path, timeout=60)
    assert out.returncode == 2 and "expected NAME=VALUE, got 'MLXD_TOKEN_THREAD'" in out.stderr


def test_round_prompts_have_one_length_and_distinct_first_tokens() -> None:
    from bench.harness import MARKS, distinct_prompts

    def chars(text: str) -> list[int]:
        return [ord(c) for c in text]

    prompts = distinct_prompts(chars, "The quick brown fox", 10)
    assert len(prompts) == 10 and all(p.endswith("The quick brown fox") for p in prompts)
    assert len({len(chars(p)) for p in prompts}) == 1
    assert len({chars(p)[0] for p in prompts}) == 10

    def words_or_digits(text: str) -> list[int]:
        """Letters are one token each; a digit and its period are two (a longer prompt)."""
        return [ord(c) for c in text] + ([0] if text[0].isdigit() else [])

    letters = sum(mark.isalpha() for mark in MARKS)
    assert letters > 500  # enough for long runs on large vocabularies
    prompts = distinct_prompts(words_or_digits, "text", letters)  # every letter, no digit
    assert all(p[0].isalpha() for p in prompts)
    with pytest.raises(ValueError, match=f"only {letters} distinct prompts"):
        distinct_prompts(words_or_digits, "text", letters + 1)

    # More rounds than distinct first tokens: any `window` consecutive ones still differ
    prompts = distinct_prompts(chars, "text", 100, window=16)
    assert len(prompts) == 100 and len({len(p) for p in prompts}) == 1
    assert all(len({p[0] for p in prompts[i : i + 16]}) == 16 for i in range(100 - 15))
    with pytest.raises(ValueError, match=f"only {letters} distinct prompts"):
        distinct_prompts(words_or_digits, "text", 1000, window=letters + 1)


def test_the_median_interval_brackets_the_median() -> None:
    from bench.overhead import median_interval

    low, high = median_interval([5.0, 5.1, 4.9, 5.0, 5.2, 4.8, 5.0])
    assert 4.8 <= low <= 5.0 <= high <= 5.2
    assert median_interval([3.0]) == (3.0, 3.0)


def test_the_overhead_interval_is_narrow_for_steady_rounds_and_wide_for_noisy_ones() -> None:
    from bench.overhead import overhead_interval

    low, high = overhead_interval([100.0, 100.5, 99.5, 100.2, 99.8], [95.0, 95.4, 94.6, 95.1, 94.9])
    assert 4 < low <= high < 6  # a steady 5%
    low, high = overhead_interval([100.0, 140.0, 70.0, 120.0, 90.0], [95.0, 80.0, 130.0, 75.0, 110.0])
    assert low < 0 < high and high - low > 20  # this spread cannot tell 5% from nothing


def test_worker_step_benchmark_times_the_decode_loop_and_profiles_it(tmp_path: Path) -> None:
    argv = ["--model", "random:tiny", "--streams", "1,3", "--tokens", "12", "--profile", "5"]
    result = _run("bench.worker_step", argv, tmp_path)
    assert [row["streams"] for row in result["rows"]] == [1, 3]
    for row in result["rows"]:
        assert row["step_ms"] > 0 and row["tok_s"] > 0
        assert row["steps"] >= 12  # one flush per decode step at least
        assert row["events"] >= row["streams"]  # every request ends with its done event
        assert len(row["top"]) == 5 and row["wait_ms"] >= 0
    assert result["env"]["OLLAMA_NUM_PARALLEL"] == "3"


def test_delivery_benchmark_times_both_transports_both_ways(tmp_path: Path) -> None:
    argv = ["--events", "40", "--interval-ms", "1", "--rounds", "2"]
    result = _run("bench.delivery", argv, tmp_path)
    assert result["events"] == 40 and result["rounds"] == 2
    for ipc in ("shm", "stdio"):
        for way in ("loop", "thread"):
            p50, p99 = result[f"{ipc}_{way}_p50_us"], result[f"{ipc}_{way}_p99_us"]
            assert 0 < p50 <= result[f"{ipc}_{way}_p90_us"] <= p99, (ipc, way)
            assert result[f"{ipc}_{way}_cpu_us_per_event"] > 0


def test_concurrency_benchmark_loads_mlxd_and_mlx_lm_server_alike(tmp_path: Path) -> None:
    argv = ["--model", "random:tiny", "--streams", "1,2", "--tokens", "8", "--prompt-tokens", "8"]
    result = _run("bench.concurrency", argv, tmp_path)
    for side in ("mlxd", "mlx_lm_server"):
        rows = result[side]
        assert [row["streams"] for row in rows] == [1, 2], side
        for row in rows:
            assert row["tokens"] == 8 * row["streams"], side  # every stream made all its tokens
            assert row["aggregate_tok_s"] > 0 and row["per_stream_tok_s"] > 0
            assert 0 < row["ttft_ms_median"] <= row["ttft_ms_max"]
    one, two = (row["aggregate_tok_s"] for row in result["mlxd"])
    assert result["mlxd_scaling"] == {"1": 1.0, "2": round(two / one, 2)}


def test_multiturn_benchmark_reuses_the_history_with_the_prompt_cache(tmp_path: Path) -> None:
    argv = ["--model", "random:tiny", "--turns", "3", "--history-tokens", "300", "--reply-tokens", "4"]
    result = _run("bench.multiturn", [*argv, "--conversations", "2"], tmp_path)
    assert result["turns"] == 3 and result["conversations"] == 2
    for label in ("without_cache", "with_cache"):
        each = result[f"{label}_each"]
        assert [[row["turn"] for row in c] for c in each] == [[1, 2, 3], [1, 2, 3]]
        for turn, row in enumerate(result[label]):
            both = [c[turn]["ttft_ms"] for c in each]
            assert row["ttft_ms"] == pytest.approx(sum(both) / 2, abs=0.01)  # the median of two
            assert row["prompt_eval_count"] == min(c[turn]["prompt_eval_count"] for c in each)
        ratios = [round(c[-1]["ttft_ms"] / c[0]["ttft_ms"], 2) for c in each]
        assert result[f"{label}_last_over_first_each"] == ratios
        rows = result[label]
        assert result[f"{label}_last_over_first"] == round(rows[-1]["ttft_ms"] / rows[0]["ttft_ms"], 2)
    for cold, warm in zip(result["without_cache_each"], result["with_cache_each"], strict=True):
        evaluated = [row["prompt_eval_count"] for row in cold]
        assert evaluated[0] < evaluated[1] < evaluated[2]  # the whole history, every turn
        cached = [row["prompt_eval_count"] for row in warm]
        # Turn 1 is new to the cache but for the template's opening; then only the turn's
        # answer and question are evaluated, however long the history.
        assert evaluated[0] - 16 <= cached[0] <= evaluated[0]
        assert cached[1] < evaluated[1] and abs(cached[2] - cached[1]) <= 2
    # Conversations differ in length, so none meets a prompt length another one compiled.
    firsts = {c[0]["prompt_eval_count"] for c in result["without_cache_each"]}
    assert len(firsts) == 2


def test_multiturn_benchmark_can_send_back_the_models_own_answers(tmp_path: Path) -> None:
    argv = ["--model", "random:tiny", "--turns", "3", "--history-tokens", "300", "--reply-tokens", "4"]
    result = _run("bench.multiturn", [*argv, "--own-replies"], tmp_path)
    assert result["own_replies"] is True and "with_cache_each" not in result  # one conversation
    evaluated = [row["prompt_eval_count"] for row in result["without_cache"]]
    cached = [row["prompt_eval_count"] for row in result["with_cache"]]
    assert evaluated[0] < evaluated[1] < evaluated[2]
    # A later turn evaluates what it adds, its question and the answer before it (spelt out
    # anew by this tokenizer), never the history before them.
    for turn in (1, 2):
        assert abs(cached[turn] - (evaluated[turn] - evaluated[turn - 1])) <= 2, (cached, evaluated)


def test_multiturn_benchmark_refuses_no_conversations(tmp_path: Path) -> None:
    out = _invoke("bench.multiturn", ["--model", "random:tiny", "--conversations", "0"], tmp_path, timeout=60)
    assert out.returncode == 2 and "--conversations must be at least 1" in out.stderr


def test_random_model_prompts_stay_inside_its_vocabulary(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from bench.random_model import CHAT_TEMPLATE, EOS, SHAPES, build_random_model

    vocab = SHAPES["tiny"]["vocab"]
    out = build_random_model("tiny", tmp_path / "tiny")
    tok = AutoTokenizer.from_pretrained(str(out))
    turns = [("system", "be brief"), ("user", "hello"), ("assistant", "hi"), ("user", "again")]
    messages = [{"role": role, "content": content} for role, content in turns]
    rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tok(rendered, add_special_tokens=False)["input_ids"]
    # An id at or past the vocabulary would read past the embedding table (garbage, NaN).
    assert ids and max(ids) < vocab
    assert tok.convert_tokens_to_ids(EOS) == vocab  # end of sequence stays unreachable
    # A model built with an older template gets the current one, its weights untouched.
    config = out / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "chat_template": "old"}))
    weights = (out / "model.safetensors").stat().st_mtime_ns
    build_random_model("tiny", out)
    assert json.loads(config.read_text())["chat_template"] == CHAT_TEMPLATE
    assert (out / "model.safetensors").stat().st_mtime_ns == weights


def test_daemons_of_one_model_share_its_installation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    from bench import harness

    monkeypatch.setattr(harness, "CACHE", tmp_path / "cache")
    model = harness.resolve_model("random:tiny")
    options = {"num_predict": 4, "temperature": 0}
    body = {"model": "bench", "prompt": "hello", "stream": False, "options": options}

    def generate(url: str) -> str:
        response = httpx.post(url + "/api/generate", json=body, timeout=120)
        assert response.status_code == 200, response.text
        return str(response.json()["response"])

    with harness.daemon(model) as url:  # installs through /api/create, keeps links to it
        first = generate(url)
    seed = tmp_path / "cache" / "homes" / harness._model_key(model)
    blobs = list((seed / "blobs").iterdir())
    assert (seed / ".complete").is_file() and blobs
    assert all(blob.stat().st_nlink == 1 for blob in blobs)  # the first home is gone
    with harness.daemon(model) as url:  # a new daemon in a new home, linked to the same files
        assert all(blob.stat().st_nlink == 2 for blob in blobs)
        assert generate(url) == first
    assert all(blob.stat().st_nlink == 1 for blob in blobs)
    # A changed model is another installation, which replaces the one before.
    (model / "generation_config.json").write_text("{}")
    assert harness._model_key(model) != seed.name
    with harness.daemon(model) as url:
        assert generate(url)
    assert not seed.exists() and (seed.parent / harness._model_key(model) / ".complete").is_file()
