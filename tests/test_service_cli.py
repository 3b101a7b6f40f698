"""``mlxd service``: dry runs, and every verb against fake service managers on ``PATH``.

The fakes sit first on ``PATH``, record their argv, and keep a little state (loaded, running) so
the verbs can query it. ``HOME`` points into the test's directory.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from daemon.cli import main
from launchd import LABEL
from launchd.render import CAPTURED, ServiceSpec, log_file, plist_path, render_plist, render_unit, unit_path
from tests.conftest import free_port

FAKE_TOOL = r"""
import json, os, sys
from pathlib import Path

name, args = Path(sys.argv[0]).name, sys.argv[1:]
state_dir = Path(os.environ["FAKE_SERVICE_STATE"])
with open(state_dir / "calls.jsonl", "a") as calls:
    calls.write(json.dumps([name, *args]) + "\n")
state_file = state_dir / f"{name}.json"
state = json.loads(state_file.read_text()) if state_file.exists() else {"loaded": False, "running": False}

verb = args[1] if name == "systemctl" else args[0]
if os.environ.get("FAKE_FAIL") == verb:
    print(f"{verb} failed: 5: Input/output error", file=sys.stderr)
    sys.exit(5)
if name == "launchctl":
    if verb == "print":
        if not state["loaded"]:
            sys.exit(113)
        running = "\tstate = running\n\tpid = 4242\n" if state["running"] else "\tstate = not running\n"
        print(args[1] + " = {\n" + running + "\tlast exit code = 0\n}")
    elif verb == "bootstrap":
        if state["loaded"]:
            print("Bootstrap failed: 5: Input/output error", file=sys.stderr)
            sys.exit(5)
        state.update(loaded=True, running=True)
    elif verb == "bootout":
        if not state["loaded"]:
            sys.exit(3)
        state.update(loaded=False, running=False)
    elif verb == "kickstart":
        if not state["loaded"]:
            sys.exit(113)
        state["running"] = True
    elif verb == "kill":
        state["running"] = False
elif name == "systemctl":
    if verb in ("is-active", "status"):
        print("active" if state["running"] else "inactive")
        sys.exit(0 if state["running"] else 3)
    if verb in ("start", "restart") or (verb == "enable" and "--now" in args):
        state["running"] = True
    if verb == "stop" or (verb == "disable" and "--now" in args):
        state["running"] = False
else:
    print(name + ": some log lines")
state_file.write_text(json.dumps(state))
"""
QUERIES = (["launchctl", "print"], ["systemctl", "--user", "is-active"])


@dataclass
class Fakes:
    home: Path
    state: Path
    port: int

    def calls(self) -> list[list[str]]:
        path = self.state / "calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def changes(self) -> list[list[str]]:
        """The calls that change something (queries left out)."""
        return [call for call in self.calls() if not any(call[: len(q)] == q for q in QUERIES)]

    def clear(self) -> None:
        (self.state / "calls.jsonl").unlink(missing_ok=True)

    def set_state(self, tool: str, loaded: bool, running: bool) -> None:
        (self.state / f"{tool}.json").write_text(json.dumps({"loaded": loaded, "running": running}))


@pytest.fixture
def fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Fakes:
    bin_dir, state, home = tmp_path / "bin", tmp_path / "state", tmp_path / "home"
    for directory in (bin_dir, state, home):
        directory.mkdir()
    for tool in ("launchctl", "systemctl", "journalctl", "tail"):
        path = bin_dir / tool
        path.write_text(f"#!{sys.executable}\n{FAKE_TOOL}")
        path.chmod(0o755)
    for key in (*CAPTURED, "XDG_CONFIG_HOME"):
        monkeypatch.delenv(key, raising=False)
    port = free_port()
    monkeypatch.setenv("PATH", str(bin_dir))  # only the fakes: a real service manager is never reached
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("FAKE_SERVICE_STATE", str(state))
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{port}")
    monkeypatch.setenv("OLLAMA_KEEP_ALIVE", "10m")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    return Fakes(home, state, port)


def mlxd(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["service", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def spec_now(fakes: Fakes) -> ServiceSpec:
    return ServiceSpec.current(os.environ, fakes.home)


# ---------------------------------------------------------------------------- dry runs


def test_dry_run_install_prints_the_plist_and_the_launchctl_commands(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = mlxd(capsys, "install", "--dry-run", "--system", "launchd")
    assert code == 0
    home, uid, plist = fakes.home, os.getuid(), plist_path(fakes.home)
    assert out == (
        f"mkdir -p {home}/Library/LaunchAgents {home}/Library/Logs/mlxd\n"
        f"cat > {plist} <<'EOF'\n{render_plist(spec_now(fakes)).decode()}EOF\n"
        f"launchctl enable gui/{uid}/{LABEL}\n"
        f"launchctl bootstrap gui/{uid} {plist}\n"
    )
    assert "hf_secret" not in out
    assert fakes.calls() == []  # nothing was run ...
    assert not (home / "Library").exists()  # ... or written


def test_dry_run_install_prints_the_unit_and_the_systemctl_commands(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = mlxd(capsys, "install", "--dry-run", "--system", "systemd")
    assert code == 0, err
    unit = unit_path(fakes.home, {})
    assert out == (
        f"mkdir -p {unit.parent}\n"
        f"cat > {unit} <<'EOF'\n{render_unit(spec_now(fakes))}EOF\n"
        "systemctl --user daemon-reload\n"
        "systemctl --user enable --now mlxd.service\n"
    )
    assert fakes.calls() == []
    assert not unit.exists()


@pytest.mark.parametrize(
    ("system", "argv", "expected"),
    [
        ("launchd", ["uninstall"], ["launchctl bootout gui/{uid}/{label}", "rm -f {plist}"]),
        ("launchd", ["start"], ["launchctl kickstart gui/{uid}/{label}"]),
        ("launchd", ["stop"], ["launchctl kill SIGTERM gui/{uid}/{label}"]),
        ("launchd", ["restart"], ["launchctl kickstart -k gui/{uid}/{label}"]),
        ("launchd", ["status"], ["launchctl print gui/{uid}/{label}"]),
        ("launchd", ["logs"], ["tail -n 100 {log}"]),
        ("launchd", ["logs", "-f", "-n", "5"], ["tail -n 5 -F {log}"]),
        (
            "systemd",
            ["uninstall"],
            ["systemctl --user disable --now mlxd.service", "rm -f {unit}", "systemctl --user daemon-reload"],
        ),
        ("systemd", ["start"], ["systemctl --user start mlxd.service"]),
        ("systemd", ["stop"], ["systemctl --user stop mlxd.service"]),
        ("systemd", ["restart"], ["systemctl --user restart mlxd.service"]),
        ("systemd", ["status"], ["systemctl --user status mlxd.service --no-pager"]),
        ("systemd", ["logs"], ["journalctl --user -u mlxd.service -n 100 --no-pager"]),
        ("systemd", ["logs", "--follow"], ["journalctl --user -u mlxd.service -n 100 --no-pager -f"]),
    ],
)
def test_dry_run_prints_the_exact_commands(
    fakes: Fakes, capsys: pytest.CaptureFixture[str], system: str, argv: list[str], expected: list[str]
) -> None:
    code, out, _ = mlxd(capsys, *argv, "--dry-run", "--system", system)
    assert code == 0
    values = {
        "uid": os.getuid(),
        "label": LABEL,
        "plist": plist_path(fakes.home),
        "log": log_file(fakes.home),
        "unit": unit_path(fakes.home, {}),
    }
    assert out.splitlines() == [line.format(**values) for line in expected]
    assert fakes.calls() == []


# ---------------------------------------------------------------------------- launchd


def test_launchd_lifecycle(fakes: Fakes, capsys: pytest.CaptureFixture[str]) -> None:
    uid, plist = os.getuid(), plist_path(fakes.home)
    target = f"gui/{uid}/{LABEL}"
    code, out, _ = mlxd(capsys, "install", "--system", "launchd")
    assert code == 0, out
    assert fakes.changes() == [
        ["launchctl", "enable", target],
        ["launchctl", "bootstrap", f"gui/{uid}", str(plist)],
    ]
    assert plist.read_bytes() == render_plist(spec_now(fakes))
    assert log_file(fakes.home).parent.is_dir()

    # Installing again changes nothing: one service.
    fakes.clear()
    code, out, _ = mlxd(capsys, "install", "--system", "launchd")
    assert code == 0 and "already installed" in out
    assert fakes.changes() == []

    # A changed environment replaces the loaded service.
    os.environ["OLLAMA_KEEP_ALIVE"] = "1h"
    fakes.clear()
    assert mlxd(capsys, "install", "--system", "launchd")[0] == 0
    assert fakes.changes() == [
        ["launchctl", "bootout", target],
        ["launchctl", "enable", target],
        ["launchctl", "bootstrap", f"gui/{uid}", str(plist)],
    ]
    assert b"<string>1h</string>" in plist.read_bytes()

    code, out, _ = mlxd(capsys, "status", "--system", "launchd")
    assert code == 0
    assert f"{target} (launchd): running (pid 4242)" in out
    assert f"not answering at http://127.0.0.1:{fakes.port}" in out

    for verb, call in (
        ("stop", ["launchctl", "kill", "SIGTERM", target]),
        ("start", ["launchctl", "kickstart", target]),
        ("restart", ["launchctl", "kickstart", "-k", target]),
    ):
        fakes.clear()
        assert mlxd(capsys, verb, "--system", "launchd")[0] == 0
        assert fakes.changes() == [call]

    fakes.clear()
    assert mlxd(capsys, "stop", "--system", "launchd")[0] == 0
    code, out, _ = mlxd(capsys, "status", "--system", "launchd")
    assert code == 3 and "loaded, not running (last exit code 0)" in out
    # Installing a stopped service (unchanged) starts it.
    fakes.clear()
    assert mlxd(capsys, "install", "--system", "launchd")[0] == 0
    assert fakes.changes() == [["launchctl", "kickstart", target]]

    log_file(fakes.home).write_text("a log line\n")
    fakes.clear()
    code, out, _ = mlxd(capsys, "logs", "-f", "--system", "launchd")
    assert code == 0
    assert fakes.calls() == [["tail", "-n", "100", "-F", str(log_file(fakes.home))]]

    fakes.clear()
    assert mlxd(capsys, "uninstall", "--system", "launchd")[0] == 0
    assert fakes.changes() == [["launchctl", "bootout", target]]
    assert not plist.exists()
    assert log_file(fakes.home).exists()  # logs are kept

    fakes.clear()
    code, out, _ = mlxd(capsys, "uninstall", "--system", "launchd")
    assert code == 0 and "not installed" in out
    assert fakes.changes() == []


def test_launchd_start_and_logs_need_an_installed_service(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = mlxd(capsys, "start", "--system", "launchd")
    assert code == 1 and err.startswith("Error: mlxd is not installed as a service")
    code, _, err = mlxd(capsys, "logs", "--system", "launchd")
    assert code == 1 and err.startswith("Error: no log yet")
    assert fakes.changes() == []


def test_a_failing_command_is_one_error_line(
    fakes: Fakes, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FAIL", "bootstrap")
    code, _, err = mlxd(capsys, "install", "--system", "launchd")
    assert code == 1
    plist = plist_path(fakes.home)
    assert err == f"Error: `launchctl bootstrap gui/{os.getuid()} {plist}` failed with exit status 5\n"


# ---------------------------------------------------------------------------- systemd


def test_systemd_lifecycle(fakes: Fakes, capsys: pytest.CaptureFixture[str]) -> None:
    unit = unit_path(fakes.home, {})
    code, out, _ = mlxd(capsys, "install", "--system", "systemd")
    assert code == 0, out
    assert fakes.changes() == [
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "enable", "--now", "mlxd.service"],
    ]
    assert unit.read_text() == render_unit(spec_now(fakes))

    fakes.clear()
    code, out, _ = mlxd(capsys, "install", "--system", "systemd")
    assert code == 0 and "already installed" in out
    assert fakes.changes() == []

    os.environ["MLXD_IPC"] = "stdio"
    fakes.clear()
    assert mlxd(capsys, "install", "--system", "systemd")[0] == 0
    assert fakes.changes() == [
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "enable", "--now", "mlxd.service"],
        ["systemctl", "--user", "restart", "mlxd.service"],
    ]
    assert 'Environment="MLXD_IPC=stdio"' in unit.read_text()

    for verb, call in (
        ("stop", ["systemctl", "--user", "stop", "mlxd.service"]),
        ("start", ["systemctl", "--user", "start", "mlxd.service"]),
        ("restart", ["systemctl", "--user", "restart", "mlxd.service"]),
    ):
        fakes.clear()
        assert mlxd(capsys, verb, "--system", "systemd")[0] == 0
        assert fakes.changes() == [call]

    fakes.clear()
    code, out, _ = mlxd(capsys, "status", "--system", "systemd")
    assert code == 0
    assert fakes.calls() == [["systemctl", "--user", "status", "mlxd.service", "--no-pager"]]
    assert "server:  not answering" in out

    fakes.clear()
    assert mlxd(capsys, "logs", "-n", "20", "-f", "--system", "systemd")[0] == 0
    assert fakes.calls() == [["journalctl", "--user", "-u", "mlxd.service", "-n", "20", "--no-pager", "-f"]]

    fakes.clear()
    assert mlxd(capsys, "uninstall", "--system", "systemd")[0] == 0
    assert fakes.changes() == [
        ["systemctl", "--user", "disable", "--now", "mlxd.service"],
        ["systemctl", "--user", "daemon-reload"],
    ]
    assert not unit.exists()

    fakes.clear()
    code, out, _ = mlxd(capsys, "uninstall", "--system", "systemd")
    assert code == 0 and "not installed" in out
    assert fakes.changes() == []


def test_missing_service_manager_is_reported(fakes: Fakes, capsys: pytest.CaptureFixture[str]) -> None:
    (fakes.state.parent / "bin" / "systemctl").unlink()
    code, _, err = mlxd(capsys, "install", "--system", "systemd")
    assert code == 1
    assert err == "Error: systemctl not found on PATH\n"


# ---------------------------------------------------------------------------- the port


@pytest.fixture
def http_server(fakes: Fakes) -> Iterator[http.server.ThreadingHTTPServer]:
    """Another HTTP server on the service's port."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", fakes.port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.parametrize("system", ["launchd", "systemd"])
def test_install_refuses_when_another_server_answers(
    fakes: Fakes, capsys: pytest.CaptureFixture[str], http_server: object, system: str
) -> None:
    code, out, err = mlxd(capsys, "install", "--system", system)
    assert code == 1
    assert err == (
        f"Error: another server already answers at http://127.0.0.1:{fakes.port} (Ollama, or mlxd "
        "started by hand?): stop it first, or set OLLAMA_HOST to another address\n"
    )
    assert fakes.changes() == []
    assert not plist_path(fakes.home).exists() and not unit_path(fakes.home, {}).exists()
    code, _, err = mlxd(capsys, "start", "--system", system)
    assert code == 1 and "another server already answers" in err
    # A dry run still prints the plan, with the problem as a warning.
    code, out, err = mlxd(capsys, "install", "--system", system, "--dry-run")
    assert code == 0 and "EOF" in out
    assert err.startswith("warning: another server already answers")


def test_install_refuses_when_the_port_cannot_be_bound(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", fakes.port))  # bound, not listening: nothing answers
        code, _, err = mlxd(capsys, "install", "--system", "launchd")
    assert code == 1
    assert err.startswith(f"Error: cannot listen on 127.0.0.1:{fakes.port}: ")
    assert fakes.changes() == []


def test_reinstall_over_our_own_running_service_is_fine(
    fakes: Fakes, capsys: pytest.CaptureFixture[str], http_server: object
) -> None:
    # The server on the port is the service itself: the manager reports it running.
    fakes.set_state("launchctl", loaded=True, running=True)
    fakes.set_state("systemctl", loaded=True, running=True)
    assert mlxd(capsys, "install", "--system", "launchd")[0] == 0
    assert mlxd(capsys, "install", "--system", "systemd")[0] == 0
    assert plist_path(fakes.home).exists() and unit_path(fakes.home, {}).exists()
