"""The command line's pieces without a daemon: Ollama's table layouts (its own test
expectations from ``cmd/cmd_test.go``), sizes, times and durations, the progress renderers
fed a scripted pull stream, word wrapping, the timing block, ``/set parameter`` typing, the
argument rules, and the HTTP client's error texts (on a mock transport)."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import orjson
import pytest
from rich.console import Console

from daemon.cli import _cobra_argv, build_parser, parse
from daemon.cli.client import Client, CLIError, StatusError
from daemon.cli.display import ResponseWriter, WordWrapper, metrics_summary, render_tool_calls
from daemon.cli.formatting import (
    go_duration,
    go_float,
    human_bytes,
    human_number,
    human_time,
    table,
)
from daemon.cli.models import processor, server_is_local, until
from daemon.cli.progress import PlainProgress, RichProgress, eta, layer_label
from daemon.cli.run import RunOptions, chat_turn
from daemon.cli.session import format_param, go_value
from daemon.cli.show import show_info

NOW = datetime(2025, 5, 4, 12, 0, 0, tzinfo=timezone.utc)
DETAILS = {"family": "test", "parameter_size": "7B", "quantization_level": "FP16"}

# -- tables (expected strings copied from Ollama's cmd/cmd_test.go) --------------------------------


def test_list_table_is_ollamas() -> None:
    rows = [
        ["model1", "sha256:abc12", "1.0 KB", "24 hours ago"],
        ["model2", "sha256:def45", "2.0 KB", "2 days ago"],
    ]
    assert table(rows, ["NAME", "ID", "SIZE", "MODIFIED"]) == (
        "NAME      ID              SIZE      MODIFIED     \n"
        "model1    sha256:abc12    1.0 KB    24 hours ago    \n"
        "model2    sha256:def45    2.0 KB    2 days ago      \n"
    )


def test_show_info_bare_details() -> None:
    assert show_info({"details": DETAILS}, verbose=False) == (
        "  Model\n"
        "    architecture    test    \n"
        "    parameters      7B      \n"
        "    quantization    FP16    \n"
        "\n"
    )


def test_show_info_model_info_and_verbose_metadata() -> None:
    info = {
        "details": {**DETAILS, "parameter_size": "8B"},
        "parameters": "\nstop up",
        "model_info": {
            "general.architecture": "test",
            "general.parameter_count": 8_000_000_000,
            "some.true_bool": True,
            "some.false_bool": False,
            "test.context_length": 1000,
            "test.embedding_length": 11434,
        },
        "tensors": [
            {"name": "blk.0.attn_k.weight", "type": "BF16", "shape": [42, 3117]},
            {"name": "blk.0.attn_q.weight", "type": "FP16", "shape": [3117, 42]},
        ],
    }
    assert show_info(info, verbose=True) == (
        "  Model\n"
        "    architecture        test     \n"
        "    parameters          8B       \n"
        "    context length      1000     \n"
        "    embedding length    11434    \n"
        "    quantization        FP16     \n"
        "\n"
        "  Parameters\n"
        "    stop    up    \n"
        "\n"
        "  Metadata\n"
        "    general.architecture       test     \n"
        "    general.parameter_count    8e+09    \n"
        "    some.false_bool            false    \n"
        "    some.true_bool             true     \n"
        "    test.context_length        1000     \n"
        "    test.embedding_length      11434    \n"
        "\n"
        "  Tensors\n"
        "    blk.0.attn_k.weight    BF16    [42 3117]    \n"
        "    blk.0.attn_q.weight    FP16    [3117 42]    \n"
        "\n"
    )


def test_show_info_parameters_projector_system_license_capabilities() -> None:
    parameters = "\n\t\t\tstop never\n\t\t\tstop up\n\t\t\ttemperature 99"
    assert (
        "  Parameters\n"
        "    stop           never    \n"
        "    stop           up       \n"
        "    temperature    99       \n"
        in (show_info({"details": DETAILS, "parameters": parameters}, verbose=False))
    )
    projector = {
        "general.architecture": "clip",
        "general.parameter_count": 133_700_000,
        "clip.vision.embedding_length": 0,
        "clip.vision.projection_dim": 0,
    }
    assert (
        "  Projector\n    architecture        clip       \n    parameters          133.70M    \n"
        "    embedding length    0          \n    dimensions          0          \n\n"
    ) in show_info({"details": DETAILS, "projector_info": projector}, verbose=False)
    system = "You are a pirate!\nAhoy, matey!\nWeigh anchor!\n\t\t\t"
    assert (
        "  System\n    You are a pirate!    \n    Ahoy, matey!         \n    ...                  \n\n"
        in (show_info({"details": DETAILS, "system": system}, verbose=False))
    )
    license_text = "MIT License\nCopyright (c) Ollama\n"
    assert "  License\n    MIT License             \n    Copyright (c) Ollama    \n\n" in (
        show_info({"details": DETAILS, "license": license_text}, verbose=False)
    )
    assert "  Capabilities\n    vision    \n    tools     \n\n" in show_info(
        {"details": DETAILS, "capabilities": ["vision", "tools"]}, verbose=False
    )


def test_long_cells_wrap_like_tablewriter() -> None:
    text = "A very long system prompt that goes on and on and on for a while"
    assert table([["", text]]).splitlines() == [
        "    A very long system prompt that    ",
        "    goes on and on and on for a       ",
        "    while                             ",
    ]


# -- numbers and times ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1024, "1.0 KB"),
        (2000, "2 KB"),
        (274_900_000, "274 MB"),
        (2_019_393_189, "2.0 GB"),
    ],
)
def test_human_bytes(size: int, text: str) -> None:
    assert human_bytes(size) == text


def test_human_number_and_go_float() -> None:
    assert [human_number(n) for n in (7, 12_345, 135_000_000, 494_032_768, 8_000_000_000, 1_500_000_000)] == [
        "7",
        "12K",
        "135M",
        "494.03M",
        "8B",
        "1.5B",
    ]
    assert [go_float(x) for x in (8e9, 1000.0, 1234567.0, 1e-4, 1e-5, 0.7, 0.0, -2.5)] == [
        "8e+09",
        "1000",
        "1.234567e+06",
        "0.0001",
        "1e-05",
        "0.7",
        "0",
        "-2.5",
    ]


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(seconds=0.2), "Less than a second ago"),
        (timedelta(seconds=1), "1 second ago"),
        (timedelta(seconds=45), "45 seconds ago"),
        (timedelta(seconds=90), "About a minute ago"),
        (timedelta(minutes=59), "59 minutes ago"),
        (timedelta(minutes=80), "About an hour ago"),
        (timedelta(hours=24), "24 hours ago"),
        (timedelta(days=2), "2 days ago"),
        (timedelta(days=21), "3 weeks ago"),
        (timedelta(days=90), "3 months ago"),
        (timedelta(days=800), "2 years ago"),
        (-timedelta(minutes=4, seconds=59), "4 minutes from now"),
        (-timedelta(days=300 * 365), "Forever"),
    ],
)
def test_human_time(delta: timedelta, text: str) -> None:
    assert human_time((NOW - delta).isoformat(), now=NOW) == text


def test_human_time_reads_go_stamps_and_missing_times() -> None:
    assert human_time("2025-05-04T04:58:00.123456789-07:00", now=NOW) == "About a minute ago"
    assert human_time("0001-01-01T00:00:00Z", now=NOW) == "Never"
    assert human_time("garbage", now=NOW) == "Never"


def test_go_duration() -> None:
    cases = [(0, "0s"), (1500, "1.5µs"), (26_504_495, "26.504495ms"), (1_234_567_890, "1.23456789s")]
    cases += [(62_500_000_000, "1m2.5s"), (3_723_000_000_000, "1h2m3s"), (999, "999ns")]
    assert [go_duration(ns) for ns, _ in cases] == [text for _, text in cases]


def test_processor_and_until_columns() -> None:
    assert processor(100, 100) == "100% GPU" and processor(100, 0) == "100% CPU"
    assert processor(100, 48) == "52%/48% CPU/GPU" and processor(100, 200) == "Unknown"
    assert until((NOW - timedelta(seconds=1)).isoformat(), now=NOW) == "Stopping..."
    assert until((NOW + timedelta(minutes=5)).isoformat(), now=NOW) == "5 minutes from now"
    assert until("2318-01-01T00:00:00+00:00", now=NOW) == "Forever"


def test_which_servers_can_read_local_paths() -> None:
    for url in ("http://127.0.0.1:11434", "http://127.0.0.2:1", "http://[::1]:11434", "http://localhost:1"):
        assert server_is_local(url)
    for url in ("http://192.168.1.20:11434", "https://example.com/ollama"):
        assert not server_is_local(url)


# -- progress ------------------------------------------------------------------------------------------

DIGEST = "sha256:6a0746a1ec1aef3e7ec53868f220ff6e389f6f8ef87a01d77c96807de94ca2aa"
PULL = [
    {"status": "pulling manifest"},
    {"status": "pulling 6a0746a1ec1a", "digest": DIGEST, "total": 2_000_000},
    *(
        {"status": "pulling 6a0746a1ec1a", "digest": DIGEST, "total": 2_000_000, "completed": n}
        for n in range(1, 2_000_001, 200_000)
    ),
    {"status": "pulling 6a0746a1ec1a", "digest": DIGEST, "total": 2_000_000, "completed": 2_000_000},
    {"status": "verifying sha256 digest"},
    {"status": "writing manifest"},
    {"status": "success"},
]


def test_plain_progress_lines() -> None:
    out = io.StringIO()
    view = PlainProgress(out)
    for event in PULL:
        view.update(event)
    view.close()
    assert out.getvalue().splitlines() == [
        "pulling manifest",
        "pulling 6a0746a1ec1a:   0% 1 B/2 MB",
        "pulling 6a0746a1ec1a:  30% 600 KB/2 MB",
        "pulling 6a0746a1ec1a:  50% 1.0 MB/2 MB",
        "pulling 6a0746a1ec1a:  80% 1.6 MB/2 MB",
        "pulling 6a0746a1ec1a: 100% 2 MB/2 MB",
        "verifying sha256 digest",
        "writing manifest",
        "success",
    ]


def test_rich_progress_draws_a_bar_per_layer_and_a_line_per_step() -> None:
    out = io.StringIO()
    view = RichProgress(Console(file=out, force_terminal=True, width=100, color_system=None))
    for event in PULL:
        view.update(event)
    view.close()
    text = out.getvalue()
    final = text.rsplit("\x1b[2K", 1)[-1]  # the last frame
    for line in ("pulling manifest", "verifying sha256 digest", "writing manifest", "success"):
        assert line in final
    assert re.search(r"^ +pulling 6a0746a1ec1a: +100% ━+ 2 MB +$", final, re.M)
    assert [eta(s) for s in (0.2, 59, 250, 3900, 400_000)] == ["0s", "59s", "4m10s", "1h5m", "99h+"]
    assert layer_label("sha256:model") == "pulling model:"


# -- answers -------------------------------------------------------------------------------------------


def test_word_wrap_moves_whole_words() -> None:
    wrapper = WordWrapper(20)  # lines up to 15 columns
    text = wrapper.feed("the quick brown fox jumps over the lazy dog") + wrapper.flush()
    assert text.split("\n") == ["the quick brown", "fox jumps over", "the lazy dog"]
    wrapper = WordWrapper(20)
    long = wrapper.feed("a " + "x" * 12 + " b") + wrapper.flush()
    assert long == "a " + "x" * 12 + "\nb"


def test_thinking_block_and_tool_calls_when_not_a_terminal() -> None:
    out = io.StringIO()
    writer = ResponseWriter(out)
    writer.thinking("Hmm")
    writer.content("Hello", None)
    writer.finish()
    assert out.getvalue() == "Thinking...\nHmm\n...done thinking.\n\nHello"
    hidden = io.StringIO()
    quiet = ResponseWriter(hidden, hide_thinking=True)
    quiet.thinking("Hmm")
    quiet.content("Hi", None)
    assert hidden.getvalue() == "Hi" and quiet.thinking_text == ""
    call = [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]
    assert render_tool_calls(call) == (
        '  Model called a non-existent function \'get_weather()\' with arguments: {"city":"Paris"}'
    )


def test_metrics_summary_is_ollamas_block() -> None:
    final = {
        "total_duration": 1_234_567_890,
        "load_duration": 2_000_000,
        "prompt_eval_count": 26,
        "prompt_eval_duration": 130_000_000,
        "eval_count": 100,
        "eval_duration": 1_000_000_000,
    }
    assert metrics_summary(final) == (
        "total duration:       1.23456789s\n"
        "load duration:        2ms\n"
        "prompt eval count:    26 token(s)\n"
        "prompt eval duration: 130ms\n"
        "prompt eval rate:     200.00 tokens/s\n"
        "eval count:           100 token(s)\n"
        "eval duration:        1s\n"
        "eval rate:            100.00 tokens/s\n"
    )
    assert metrics_summary({"total_duration": 5}) == "total duration:       5ns\n"


# -- the interactive /set parameter ---------------------------------------------------------------------


def test_set_parameter_types_like_format_params() -> None:
    assert format_param("num_predict", ["100"]) == 100
    assert format_param("temperature", ["0.5"]) == 0.5
    assert format_param("stop", ["<|end|>", "###"]) == ["<|end|>", "###"]
    assert format_param("use_mmap", ["false"]) is False
    for name, values, message in [
        ("bogus", ["1"], "unknown parameter 'bogus'"),
        ("num_predict", ["lots"], "invalid int value [lots]"),
        ("top_p", ["high"], "invalid float value [high]"),
        ("use_mmap", ["maybe"], "invalid bool value [maybe]"),
    ]:
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            format_param(name, values)
    assert (
        go_value(["a", "b"]) == "[a b]"
        and go_value(True) == "true"
        and go_value(0.7) == "0.7"
        and go_value(0.0) == "0"
    )


# -- arguments ------------------------------------------------------------------------------------------


def test_run_takes_prompt_words_around_flags_and_bare_think() -> None:
    parser = build_parser()
    args = parse(parser, _cobra_argv(["run", "m", "hello", "--verbose", "world", "--think", "again"]))
    assert args.prompt == ["hello", "world", "again"] and args.verbose and args.think == "true"
    args = parse(parser, _cobra_argv(["run", "m", "--think=low", "--", "--not-a-flag"]))
    assert args.think == "low" and args.prompt == ["--not-a-flag"]


# -- the client ------------------------------------------------------------------------------------------


def mock_client(handler: Any) -> Client:
    return Client("http://mlxd.test", transport=httpx.MockTransport(handler))


def test_client_errors_read_like_ollamas() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/show":
            return httpx.Response(404, json={"error": "model 'x' not found"})
        if request.url.path == "/api/chat":
            return httpx.Response(400, json={"error": "bad things"})
        if request.url.path == "/api/pull":
            lines = [{"status": "pulling manifest"}, {"error": "pull model manifest: file does not exist"}]
            return httpx.Response(200, content=b"\n".join(orjson.dumps(x) for x in lines))
        return httpx.Response(500, text="plain failure\nmore")

    client = mock_client(handler)
    with pytest.raises(StatusError) as info:
        client.post("/api/show", {"model": "x"})
    assert info.value.status == 404 and str(info.value) == "model 'x' not found"
    with pytest.raises(StatusError, match=r"^400 Bad Request: bad things$"):
        list(client.stream("/api/chat", {}))
    seen = []
    with pytest.raises(CLIError, match=r"^pull model manifest: file does not exist$"):
        for event in client.stream("/api/pull", {}):
            seen.append(event)
    assert seen == [{"status": "pulling manifest"}]
    with pytest.raises(StatusError, match=r"^plain failure$"):
        client.get("/api/tags")
    client.close()


def test_client_says_when_no_server_runs() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    client = mock_client(refuse)
    assert not client.heartbeat()
    with pytest.raises(CLIError, match=r"^could not connect to mlxd at http://mlxd.test, run 'mlxd serve'"):
        client.require_server()
    with pytest.raises(CLIError, match="could not connect"):
        list(client.stream("/api/pull", {}))
    client.close()


class ScriptedStream(httpx.SyncByteStream):
    """A chat stream that is interrupted (Ctrl-C) after ``count`` chunks; records its closing."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        for i in range(self.count):
            yield (
                orjson.dumps({"message": {"role": "assistant", "content": f"word{i} "}, "done": False})
                + b"\n"
            )
        raise KeyboardInterrupt

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("where", ["reading", "writing"])
def test_ctrl_c_closes_the_answers_stream(
    where: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C while the client waits for the next chunk, or while it writes one: either way
    the response is closed, which is what stops the generation on the server."""
    stream = ScriptedStream(3 if where == "reading" else 1000)
    client = mock_client(lambda request: httpx.Response(200, stream=stream))
    if where == "writing":
        calls = []

        def content(self: ResponseWriter, text: str, tool_calls: Any = None) -> None:
            calls.append(text)
            if len(calls) == 2:
                raise KeyboardInterrupt

        monkeypatch.setattr(ResponseWriter, "content", content)
    opts = RunOptions(model="m", messages=[{"role": "user", "content": "Hi"}])
    assert chat_turn(client, opts) is None
    assert stream.closed
    if where == "reading":
        assert capsys.readouterr().out == "word0 word1 word2 \n\n"
    client.close()
