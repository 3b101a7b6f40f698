"""The ``mlxd`` command line, used as a person would, against a real daemon with the tiny
model: plain commands through pipes (stdout/stderr captured), and the interactive chat and
the pull bars in a pseudo-terminal (pexpect). Pulls come from a fake Hugging Face hub."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pexpect
import pytest

from daemon.cli import main, models
from daemon.cli.formatting import human_bytes
from registry.tiny_model import write_tiny_model
from tests.conftest import ROOT, TINY, Daemon, daemon_with_tiny, free_port
from tests.fakehub import FakeHub

pytestmark = pytest.mark.e2e

PLACEHOLDER = "Send a message (/? for help)"
CONTINUATION = "Press Enter to send"
HEX12 = re.compile(r"^[0-9a-f]{12}$")
SHORT = "short"


@pytest.fixture(scope="module")
def hub(tiny_model_dir: Path) -> Iterator[FakeHub]:
    fake = FakeHub()
    for repo in ("cli/plain", "cli/bars", "cli/run"):
        fake.add_model_dir(repo, tiny_model_dir)
    with fake.serve():
        yield fake


@pytest.fixture(scope="module")
def daemon(hub: FakeHub, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    home = tmp_path_factory.mktemp("home-cli")
    with ExitStack() as stack:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{hub.port}")  # the daemon pulls from the fake hub
            patch.setenv("OLLAMA_NUM_PARALLEL", "1")  # one answer at a time: see the Ctrl-C test
            daemon = stack.enter_context(daemon_with_tiny(home, tiny_model_dir))
        # The tiny model talks until its (random) end token: keep one-shot answers short.
        body = {"model": SHORT, "from": TINY, "parameters": {"num_predict": 8}, "stream": False}
        assert httpx.post(f"{daemon.url}/api/create", json=body, timeout=60).status_code == 200
        yield daemon


def cli_env(url: str, home: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "OLLAMA_HOST": url.removeprefix("http://")}
    if home is not None:
        env["MLXD_HOME"] = str(home)
    return env


def mlxd(*args: str, url: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        cwd=ROOT,
        env=cli_env(url),
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=120,
    )


def terminal(*args: str, url: str, home: Path) -> pexpect.spawn:
    """``mlxd ARGS`` in an 80×24 pseudo-terminal, as typed in xterm."""
    env = cli_env(url, home) | {"TERM": "xterm-256color", "PROMPT_TOOLKIT_NO_CPR": "1"}
    return pexpect.spawn(
        sys.executable,
        ["-m", "daemon", *args],
        cwd=str(ROOT),
        env=env,
        encoding="utf-8",
        codec_errors="replace",
        timeout=60,
        dimensions=(24, 80),
    )


def table_lines(text: str) -> list[list[str]]:
    """The cells of an Ollama table: columns are separated by at least 4 spaces."""
    return [re.split(r" {4,}", line.rstrip()) for line in text.splitlines()]


# -- tables ---------------------------------------------------------------------------------------


def test_list_has_ollamas_columns_and_layout(daemon: Daemon) -> None:
    out = mlxd("list", url=daemon.url)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    tags = {m["name"]: m for m in httpx.get(f"{daemon.url}/api/tags").json()["models"]}
    row = next(line for line in lines if line.startswith(f"{TINY}:latest "))
    name, ident, size, modified = table_lines(row)[0]
    assert ident == tags[f"{TINY}:latest"]["digest"][:12] and HEX12.match(ident)
    assert size == human_bytes(tags[f"{TINY}:latest"]["size"])
    assert re.fullmatch(r"(\d+ seconds|1 second|Less than a second|About a minute|\d+ minutes) ago", modified)
    # tablewriter's layout: 4 spaces after every cell, one after the last header cell.
    width = max(len(line.split("    ")[0]) for line in lines)
    assert lines[0].startswith("NAME".ljust(width) + "    ID" + " " * 14 + "SIZE")
    assert lines[0].endswith("MODIFIED".ljust(len(lines[0]) - lines[0].index("MODIFIED") - 1) + " ")
    assert row.endswith("    ") and row.startswith(name.ljust(width) + "    " + ident + "    ")
    assert mlxd("ls", "no-such-prefix", url=daemon.url).stdout.splitlines()[0].split() == [
        "NAME",
        "ID",
        "SIZE",
        "MODIFIED",
    ]


def test_ps_shows_the_loaded_model(daemon: Daemon) -> None:
    out = mlxd("run", SHORT, "--keepalive", "10m", "Hi", url=daemon.url)
    assert out.returncode == 0, out.stderr
    out = mlxd("ps", url=daemon.url)
    assert out.returncode == 0, out.stderr
    header, *rows = table_lines(out.stdout)
    assert header == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    row = next(r for r in rows if r[0] == f"{SHORT}:latest")
    assert HEX12.match(row[1]) and re.fullmatch(r"[\d.]+ [KMG]?B", row[2])
    assert re.fullmatch(r"100% GPU|100% CPU|\d+%/\d+% CPU/GPU", row[3])
    assert row[4] == "4096" and re.fullmatch(r"\d+ minutes from now", row[5])
    assert out.stdout.splitlines()[1].endswith("    ")


# -- one-shot answers ---------------------------------------------------------------------------


def test_run_with_a_prompt_with_piped_stdin_and_verbose(daemon: Daemon) -> None:
    out = mlxd("run", SHORT, "Hello", "there", url=daemon.url)
    assert out.returncode == 0, out.stderr
    assert out.stdout.endswith("\n\n") and out.stderr == ""
    piped = mlxd("run", SHORT, "--verbose", url=daemon.url, stdin="Hello there")
    assert piped.returncode == 0, piped.stderr
    labels = [line.split(":")[0] for line in piped.stderr.splitlines()]
    assert labels[0] == "total duration" and "eval rate" in labels and "prompt eval count" in labels
    assert re.search(r"^eval rate: {12}\d+\.\d\d tokens/s$", piped.stderr, re.M)
    both = mlxd("run", SHORT, "--format", "json", "and", "more", url=daemon.url, stdin="Text")
    assert both.returncode == 0, both.stderr


def test_run_pulls_a_missing_model_then_loads_it(daemon: Daemon) -> None:
    # An empty prompt on stdin only loads the model (the pulled tiny model, asked something,
    # would ramble until its random end token).
    out = mlxd("run", "cli/run", url=daemon.url, stdin="")
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    assert lines[0] == "pulling manifest" and lines[-1] == "success"
    assert any(re.fullmatch(r"pulling [0-9a-f]{12}: 100% \S+ [KMG]?B/\S+ [KMG]?B", line) for line in lines)
    assert out.stdout == ""
    assert "cli/run:latest" in mlxd("ps", url=daemon.url).stdout


def test_pull_prints_plain_lines_when_not_a_terminal(daemon: Daemon) -> None:
    out = mlxd("pull", "cli/plain", url=daemon.url)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    assert lines[0] == "pulling manifest"
    assert lines[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    assert all("\x1b" not in line for line in lines)
    assert "cli/plain:latest" in mlxd("list", url=daemon.url).stdout


# -- model management ---------------------------------------------------------------------------


def test_create_show_cp_stop_rm(
    daemon: Daemon,
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(
        f'FROM {tiny_model_dir}\nPARAMETER num_predict 4\nPARAMETER stop "</s>"\n'
        'SYSTEM """Be brief.\nAnswer in English.\nNever lie."""\nLICENSE "MIT"\n'
    )
    out = mlxd("create", "brief", "-f", str(modelfile), url=daemon.url)
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines()[-1] == "success"

    shown = mlxd("show", "brief", url=daemon.url).stdout
    assert shown.startswith("  Model\n    architecture    ")
    assert "  Capabilities\n    completion    \n" in shown
    assert "  Parameters\n" in shown and 'stop           "</s>"' in shown
    system = "  System\n    Be brief.             \n    Answer in English.    \n    ...                   \n"
    assert system in shown and "  License\n    MIT    \n" in shown

    # The one-field flags, in-process (the same main as the script) to keep this quick.
    def field(flag: str) -> str:
        assert main(["show", "brief", flag]) == 0
        return capsys.readouterr().out

    monkeypatch.setenv("OLLAMA_HOST", daemon.url.removeprefix("http://"))
    assert field("--system") == "Be brief.\nAnswer in English.\nNever lie."
    assert field("--license") == "MIT\n"
    assert "num_predict" in field("--parameters") and "{{" in field("--template")
    assert field("--modelfile").startswith("# Modelfile generated")

    assert mlxd("cp", "brief", "brief2", url=daemon.url).stdout == "copied 'brief' to 'brief2'\n"
    stopped = mlxd("stop", SHORT, url=daemon.url)  # loaded by other tests, or not: both succeed
    assert stopped.returncode == 0 and stopped.stdout == ""
    assert main(["ps"]) == 0 and f"{SHORT}:latest" not in capsys.readouterr().out
    removed = mlxd("rm", "brief", "brief2", url=daemon.url)
    assert removed.stdout == "deleted 'brief'\ndeleted 'brief2'\n", removed.stderr
    assert main(["list"]) == 0 and "brief" not in capsys.readouterr().out


def test_create_for_a_server_elsewhere_uploads_the_files(
    daemon: Daemon,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A server on another machine cannot read our paths: the files go through /api/blobs."""
    write_tiny_model(tmp_path / "model", seed=7)  # files the daemon has not seen
    (tmp_path / "Modelfile").write_text("FROM ./model\nPARAMETER num_predict 4\n")
    monkeypatch.setenv("OLLAMA_HOST", daemon.url.removeprefix("http://"))
    monkeypatch.setattr(models, "server_is_local", lambda url: False)
    assert main(["create", "uploaded", "-f", str(tmp_path / "Modelfile")]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert "copying file config.json" in lines and lines[-1] == "success"
    assert any(line.startswith("creating new layer sha256:") for line in lines)
    tags = httpx.get(f"{daemon.url}/api/tags").json()["models"]
    assert "uploaded:latest" in [m["name"] for m in tags]
    assert main(["rm", "uploaded"]) == 0 and capsys.readouterr().out == "deleted 'uploaded'\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("show", "nope"), "Error: model 'nope"),
        (("stop", "nope"), 'Error: couldn\'t find model "nope" to stop'),
        (("rm", "nope"), "Error: model 'nope"),
        (("cp", "nope", "other"), 'Error: model "nope" not found'),
        (("pull", "bad name!"), "Error: 400 Bad Request: invalid model name"),
        (("run",), "Error: requires at least 1 arg(s), only received 0"),
        (("run", TINY, "--think=maybe", "hi"), 'Error: invalid value for --think: "maybe"'),
        (("run", TINY, "--keepalive", "5x", "hi"), 'Error: time: unknown unit "x" in duration "5x"'),
        (("run", TINY, "--format", "yaml", "hi"), "Error: invalid format 'yaml'"),
        (("run", TINY, "--think", "hi"), 'Error: 400 Bad Request: "tiny" does not support thinking'),
        (("create", "x", "-f", "/no/such/Modelfile"), "Error: specified Modelfile wasn't found"),
        (
            ("create", "x", "--quantize", "q4_K_M", "-f", "{modelfile}"),
            "Error: quantization is not supported",
        ),
        (("create", "x", "-f", "{bad}"), "Error: (line 1): unknown command"),
        (("show", TINY, "--system", "--license"), "Error: only one of '--license', '--modelfile'"),
        (("list", "--bogus"), "Error: unrecognized arguments: --bogus"),
        (("frobnicate",), "Error: argument COMMAND: invalid choice: 'frobnicate'"),
        (("help", "frobnicate"), 'Error: unknown command "frobnicate" for "mlxd"'),
    ],
)
def test_errors_are_one_line_and_nonzero(
    daemon: Daemon,
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
    message: str,
) -> None:
    """In-process (the same ``main`` the ``mlxd`` script runs), to keep the many cases fast."""
    (tmp_path / "Modelfile").write_text(f"FROM {tiny_model_dir}\n")
    (tmp_path / "Bad").write_text("FROB x\n")
    monkeypatch.setenv("OLLAMA_HOST", daemon.url.removeprefix("http://"))
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    argv = [a.format(modelfile=tmp_path / "Modelfile", bad=tmp_path / "Bad") for a in args]
    try:
        code = main(argv)
    except SystemExit as exc:  # usage errors leave through argparse
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and err.startswith(message), err


def test_a_missing_model_that_cannot_be_pulled(daemon: Daemon) -> None:
    out = mlxd("run", "nope", "hi", url=daemon.url)
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        "pulling manifest",
        out.stderr.splitlines()[-1],
    ] and out.stderr.splitlines()[-1].startswith("Error: pull model manifest: file does not exist")


def test_no_server_says_how_to_start_one() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (("list",), ("run", TINY, "hi")):
        out = mlxd(*args, url=url)
        assert out.returncode == 1
        assert out.stderr == f"Error: could not connect to mlxd at {url}, run 'mlxd serve' to start it\n"
    version = mlxd("--version", url=url)
    assert version.returncode == 0 and version.stdout.startswith("mlxd version is ")
    assert "Warning: could not connect to a running mlxd instance" in version.stdout


def test_dev_tiny_model_writes_a_loadable_dir(tmp_path: Path) -> None:
    out = mlxd("dev", "tiny-model", str(tmp_path / "m"), "--seed", "3", url="127.0.0.1:1")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "m" / "config.json").is_file()


# -- in a terminal --------------------------------------------------------------------------------


def test_pull_draws_bars_in_a_terminal(daemon: Daemon, hub: FakeHub, tmp_path: Path) -> None:
    hub.delay = 0.02
    try:
        child = terminal("pull", "cli/bars", url=daemon.url, home=tmp_path)
        child.expect_exact("pulling manifest")
        child.expect(r"pulling [0-9a-f]{12}:")
        child.expect_exact("━")  # rich's bar
        child.expect_exact("100%")
        child.expect_exact("success")
        child.expect(pexpect.EOF)
        child.close()
    finally:
        hub.delay = 0.0
    assert child.exitstatus == 0


def test_interactive_session(daemon: Daemon, tmp_path: Path) -> None:
    child = terminal("run", TINY, url=daemon.url, home=tmp_path)

    def prompt() -> None:
        child.expect_exact(PLACEHOLDER)

    def command(line: str, answer: str) -> None:
        child.sendline(line)
        child.expect_exact(answer)
        prompt()

    prompt()
    command("/set parameter num_predict 4", "Set parameter 'num_predict' to '4'")
    command("/set parameter bogus 1", "Couldn't set parameter: \"unknown parameter 'bogus'\"")
    command("/set system You are terse.", "Set system message.")
    command("/show system", "You are terse.")
    command("/set verbose", "Set 'verbose' mode.")
    child.sendline("Hello")
    child.expect(r"eval rate: +\d+\.\d\d tokens/s")
    prompt()
    command("/set quiet", "Set 'quiet' mode.")

    # Multi-line input: the continuation prompt until the closing quotes.
    child.sendline('"""First line')
    child.expect_exact(CONTINUATION)
    child.sendline('second line"""')
    prompt()

    # Ctrl-C stops a long answer and the session goes on.
    command("/set parameter num_predict 100000", "Set parameter 'num_predict' to '100000'")
    child.sendline("Tell me a long story")
    child.expect(r"\S{4}")  # the answer is streaming
    time.sleep(0.5)
    child.sendintr()
    started = time.monotonic()
    prompt()
    assert time.monotonic() - started < 10
    # The daemon stopped generating: a short answer comes at once (this daemon answers one request
    # at a time per model, so an answer still running would hold this one for minutes).
    command("/set parameter num_predict 2", "Set parameter 'num_predict' to '2'")
    child.sendline("Again")
    child.expect_exact(PLACEHOLDER, timeout=20)

    # Ctrl-C on an empty line only explains how to leave.
    child.sendintr()
    child.expect_exact("Use Ctrl + d or /bye to exit.")
    prompt()

    command("/show parameters", "num_predict                    2")
    command("/frob", "Unknown command '/frob'. Type /? for help")
    command("/save tiny-session", "Created new model 'tiny-session'")
    command("/load nope", "Couldn't find model 'nope'")
    command("/load tiny-session", "Loading model 'tiny-session'")
    command("/clear", "Cleared session context")
    child.sendline("/bye")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    shown = httpx.post(f"{daemon.url}/api/show", json={"model": "tiny-session"}).json()
    assert shown["system"] == "You are terse." and "num_predict" in shown["parameters"]
    assert [m["role"] for m in shown["messages"]][:2] == ["system", "user"]
    assert "Hello" in (tmp_path / "history").read_text()


def test_ctrl_d_leaves_and_nohistory_keeps_no_file(
    daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OLLAMA_NOHISTORY", "1")
    child = terminal("run", TINY, url=daemon.url, home=tmp_path)
    child.expect_exact(PLACEHOLDER)
    child.sendline("/clear")
    child.expect_exact(PLACEHOLDER)
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert not (tmp_path / "history").exists()
