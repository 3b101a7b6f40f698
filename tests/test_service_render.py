"""The service's renderings: the LaunchAgent plist and the systemd user unit, and what goes into them."""

from __future__ import annotations

import configparser
import os
import plistlib
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest

from launchd import LABEL
from launchd.cli import default_system
from launchd.managers import parse_print
from launchd.render import (
    CAPTURED,
    ServiceSpec,
    log_file,
    plist_template,
    program,
    render_plist,
    render_unit,
    unit_path,
)
from tests.conftest import ROOT

ENV = {
    "OLLAMA_HOST": "127.0.0.1:11500",
    "MLXD_HOME": "relative/store",
    "OLLAMA_KEEP_ALIVE": "1h",
    "OLLAMA_LOAD_TIMEOUT": "15m",
    "OLLAMA_NUM_PARALLEL": "2",
    "OLLAMA_ORIGINS": "",  # empty: not kept
    "HF_ENDPOINT": "http://127.0.0.1:9999",
    "HF_TOKEN": "hf_secret",  # a secret: never written into a service file
    "HUGGING_FACE_HUB_TOKEN": "hf_secret",
    "PATH": "/opt/bin:/usr/bin:/bin",
    "UNRELATED": "x",
}


@pytest.fixture
def spec(tmp_path: Path) -> ServiceSpec:
    return ServiceSpec.current(ENV, tmp_path / "home")


def test_spec_captures_the_daemon_settings_only(spec: ServiceSpec) -> None:
    assert spec.environment == {
        "OLLAMA_HOST": "127.0.0.1:11500",
        "MLXD_HOME": os.path.abspath("relative/store"),
        "OLLAMA_KEEP_ALIVE": "1h",
        "OLLAMA_LOAD_TIMEOUT": "15m",
        "OLLAMA_NUM_PARALLEL": "2",
        "HF_ENDPOINT": "http://127.0.0.1:9999",
        "PATH": "/opt/bin:/usr/bin:/bin",
    }
    assert set(spec.environment) <= set(CAPTURED)
    assert "hf_secret" not in render_plist(spec).decode()
    assert "hf_secret" not in render_unit(spec)
    assert spec.skipped == []


def test_spec_skips_values_a_file_cannot_hold(tmp_path: Path) -> None:
    spec = ServiceSpec.current({"OLLAMA_ORIGINS": "a\nb", "MLXD_IPC": "stdio"}, tmp_path)
    assert spec.environment == {"MLXD_IPC": "stdio"}
    assert spec.skipped == ["OLLAMA_ORIGINS"]


def test_program_is_the_mlxd_script_next_to_the_interpreter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    python = tmp_path / "bin" / "python"
    python.parent.mkdir()
    python.write_text("")
    monkeypatch.setattr(sys, "executable", str(python))
    # No script (mlxd is not installed): the module, run from the source tree.
    assert program() == (str(python), "-m", "daemon", "serve")
    spec = ServiceSpec.current({}, tmp_path)
    assert spec.working_directory == str(ROOT)
    assert plistlib.loads(render_plist(spec))["WorkingDirectory"] == str(ROOT)
    assert f"\nWorkingDirectory={ROOT}\n" in render_unit(spec)
    script = tmp_path / "bin" / "mlxd"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    assert program() == (str(script), "serve")
    spec = ServiceSpec.current({}, tmp_path)
    assert spec.working_directory is None
    assert "WorkingDirectory" not in plistlib.loads(render_plist(spec))
    assert "WorkingDirectory" not in render_unit(spec)


def test_plist_has_every_key_with_its_type(spec: ServiceSpec) -> None:
    plist: dict[str, Any] = plistlib.loads(render_plist(spec))
    log = str(log_file(spec.home))
    assert plist["Label"] == LABEL
    assert plist["ProgramArguments"] == list(program())
    assert all(isinstance(arg, str) for arg in plist["ProgramArguments"])
    assert Path(plist["ProgramArguments"][0]).is_absolute()
    assert plist["EnvironmentVariables"] == spec.environment
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}  # restart on a crash, not after a clean stop
    assert plist["KeepAlive"]["SuccessfulExit"] is False
    assert plist["ProcessType"] == "Interactive"
    assert type(plist["ThrottleInterval"]) is int and plist["ThrottleInterval"] > 0
    assert type(plist["ExitTimeOut"]) is int and plist["ExitTimeOut"] == 20  # the 10 s drain + 10
    assert plist["StandardOutPath"] == plist["StandardErrorPath"] == log
    assert log.startswith(str(spec.home / "Library" / "Logs" / "mlxd"))
    soft = plist["SoftResourceLimits"]["NumberOfFiles"]
    hard = plist["HardResourceLimits"]["NumberOfFiles"]
    assert type(soft) is int and type(hard) is int and 256 < soft <= hard
    # Every key of the shipped template is kept, in its order.
    extra = ["WorkingDirectory"] if spec.working_directory else []
    assert list(plist) == list(plist_template()) + extra


def test_plist_stop_timeout_follows_the_shutdown_bound(tmp_path: Path) -> None:
    spec = ServiceSpec.current({"MLXD_SHUTDOWN_TIMEOUT": "25.5"}, tmp_path)
    assert plistlib.loads(render_plist(spec))["ExitTimeOut"] == 36
    assert "TimeoutStopSec=36\n" in render_unit(spec)


def parse_unit(text: str) -> tuple[configparser.ConfigParser, dict[str, str]]:
    """The unit as sections of keys, and its ``Environment=`` assignments (unquoted, unescaped)."""
    parser = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#", ";"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    environment: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("Environment="):
            for word in shlex.split(line.removeprefix("Environment=")):
                key, _, value = word.replace("%%", "%").partition("=")
                environment[key] = value
    return parser, environment


def test_unit_file_has_its_keys(spec: ServiceSpec) -> None:
    unit, environment = parse_unit(render_unit(spec))
    assert unit.sections() == ["Unit", "Service", "Install"]
    assert unit["Unit"]["Description"]
    service = unit["Service"]
    assert shlex.split(service["ExecStart"]) == list(program())
    assert service["Restart"] == "on-failure"
    assert service["KillMode"] == "mixed"  # SIGTERM to the daemon only; it stops its workers
    assert service["TimeoutStopSec"] == "20"
    assert service["StandardOutput"] == service["StandardError"] == "journal"
    assert unit["Install"]["WantedBy"] == "default.target"
    assert environment == spec.environment


def test_unit_file_escapes_quotes_backslashes_and_specifiers(tmp_path: Path) -> None:
    odd = {"OLLAMA_ORIGINS": 'http://a b,"x"\\y', "HF_ENDPOINT": "http://h/%i$HOME"}
    spec = ServiceSpec(program=("/opt/my apps/50%/mlxd", "serve"), environment=odd, home=tmp_path)
    text = render_unit(spec)
    unit, environment = parse_unit(text)
    assert environment == odd
    exec_start = unit["Service"]["ExecStart"]
    assert [w.replace("%%", "%") for w in shlex.split(exec_start)] == list(spec.program)
    assert "%i" not in text.replace("%%", "")  # every specifier is escaped


def test_unit_path_follows_xdg_config_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert unit_path(home, {}) == home / ".config/systemd/user/mlxd.service"
    assert unit_path(home, {"XDG_CONFIG_HOME": "/etc/xdg-user"}) == Path(
        "/etc/xdg-user/systemd/user/mlxd.service"
    )
    assert unit_path(home, {"XDG_CONFIG_HOME": "relative"}) == home / ".config/systemd/user/mlxd.service"


def test_parse_launchctl_print() -> None:
    text = (
        "gui/501/dev.mlxd.daemon = {\n\tactive count = 1\n\tpath = /Users/me/Library/LaunchAgents/x.plist\n"
        "\tstate = running\n\n\tprogram = /Users/me/.venv/bin/mlxd\n\tpid = 8123\n\tlast exit code = 0\n}\n"
    )
    state = parse_print(text)
    assert (state.loaded, state.running, state.pid, state.last_exit) == (True, True, 8123, "0")
    stopped = parse_print("x = {\n\tstate = not running\n\tlast exit code = 1\n}\n")
    assert (stopped.running, stopped.pid, stopped.last_exit) == (False, None, "1")


def test_default_system() -> None:
    assert default_system("darwin") == "launchd"
    assert default_system("linux") == "systemd"
    with pytest.raises(ValueError, match="--system"):
        default_system("win32")
