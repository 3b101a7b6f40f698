"""What the service runs, and its two renderings: the LaunchAgent plist and the systemd user unit.

Both run the ``mlxd`` script installed next to the current interpreter with ``serve``, with
the daemon's settings captured from the environment at install time. Secrets are never
captured: a Hugging Face token belongs in the hub's own token file (``hf auth login``),
which the daemon reads by itself.
"""

from __future__ import annotations

import math
import os
import plistlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from daemon.shutdown import shutdown_timeout
from launchd import LABEL, UNIT

TEMPLATE = f"{LABEL}.plist"

# The environment a service keeps from the shell that installs it, in this order.
CAPTURED = (
    "OLLAMA_HOST",
    "MLXD_HOME",
    "MLXD_IPC",
    "MLXD_SHUTDOWN_TIMEOUT",
    "OLLAMA_KEEP_ALIVE",
    "OLLAMA_LOAD_TIMEOUT",
    "OLLAMA_NUM_PARALLEL",
    "OLLAMA_MAX_LOADED_MODELS",
    "OLLAMA_MAX_QUEUE",
    "OLLAMA_CONTEXT_LENGTH",
    "OLLAMA_ORIGINS",
    "HF_ENDPOINT",
    "HF_HOME",
    "PATH",
)
_PATH_VARIABLES = ("MLXD_HOME", "HF_HOME")  # made absolute: a service does not start in the shell's cwd
_STOP_MARGIN = 10  # seconds the service manager waits beyond the daemon's own shutdown bound


@dataclass(frozen=True)
class ServiceSpec:
    """Everything both renderings need, fixed at install time."""

    program: tuple[str, ...]  # the command line: absolute ``mlxd`` script, then ``serve``
    environment: dict[str, str]
    home: Path  # the user's home directory (``Path.home()``)
    shutdown_timeout: float = 10.0
    skipped: list[str] = field(default_factory=list)  # variables that cannot be written into a file
    working_directory: str | None = None  # set when ``python -m daemon`` must find the source tree

    @classmethod
    def current(cls, environ: Mapping[str, str] | None = None, home: Path | None = None) -> ServiceSpec:
        """The spec for this interpreter's ``mlxd`` and this environment."""
        env = os.environ if environ is None else environ
        captured: dict[str, str] = {}
        skipped: list[str] = []
        for key in CAPTURED:
            value = env.get(key, "")
            if not value:
                continue
            if any(ord(ch) < 0x20 or ch == "\x7f" for ch in value):
                skipped.append(key)  # a control character fits neither a plist nor a unit line
                continue
            if key in _PATH_VARIABLES:
                value = os.path.abspath(os.path.expanduser(value.strip().strip("\"'")))
            captured[key] = value
        command = program()
        return cls(
            program=command,
            environment=captured,
            home=Path.home() if home is None else home,
            shutdown_timeout=shutdown_timeout(env),
            skipped=skipped,
            working_directory=None if command[-3:-1] != ("-m", "daemon") else source_root(),
        )

    @property
    def stop_timeout(self) -> int:
        """Seconds the service manager allows a stop before it kills the daemon."""
        return math.ceil(self.shutdown_timeout) + _STOP_MARGIN


def program() -> tuple[str, ...]:
    """``mlxd serve`` by absolute path: the script next to this interpreter, else ``python -m daemon``."""
    script = Path(os.path.abspath(sys.executable)).parent / "mlxd"
    if script.is_file() and os.access(script, os.X_OK):
        return (str(script), "serve")
    return (os.path.abspath(sys.executable), "-m", "daemon", "serve")


def source_root() -> str:
    """The directory that holds the ``daemon`` package (a checkout, when mlxd is not installed)."""
    import daemon

    return str(Path(os.path.abspath(daemon.__file__)).parent.parent)


# ---------------------------------------------------------------------------- paths


def plist_path(home: Path) -> Path:
    return home / "Library" / "LaunchAgents" / f"{LABEL}.plist"


def log_dir(home: Path) -> Path:
    return home / "Library" / "Logs" / "mlxd"


def log_file(home: Path) -> Path:
    """Where the LaunchAgent's stdout and stderr go."""
    return log_dir(home) / "mlxd.log"


def unit_path(home: Path, environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/systemd/user/mlxd.service`` (``~/.config`` when unset or relative)."""
    env = os.environ if environ is None else environ
    config = env.get("XDG_CONFIG_HOME", "")
    base = Path(config) if config and os.path.isabs(config) else home / ".config"
    return base / "systemd" / "user" / UNIT


# ---------------------------------------------------------------------------- launchd


def plist_template() -> dict[str, Any]:
    """The template shipped with the package, parsed."""
    data: dict[str, Any] = plistlib.loads(files("launchd").joinpath(TEMPLATE).read_bytes())
    return data


def render_plist(spec: ServiceSpec) -> bytes:
    """The LaunchAgent: the template with the program, environment, log paths and stop timeout."""
    plist = plist_template()
    plist["ProgramArguments"] = list(spec.program)
    plist["EnvironmentVariables"] = dict(spec.environment)
    plist["StandardOutPath"] = str(log_file(spec.home))
    plist["StandardErrorPath"] = str(log_file(spec.home))
    plist["ExitTimeOut"] = spec.stop_timeout
    if spec.working_directory is not None:
        plist["WorkingDirectory"] = spec.working_directory
    return plistlib.dumps(plist, sort_keys=False)


# ---------------------------------------------------------------------------- systemd


def _unit_escape(text: str) -> str:
    """Protect systemd's specifiers (``%``) in a unit-file value."""
    return text.replace("%", "%%")


def _quote_word(word: str) -> str:
    """One ``ExecStart=`` word: quoted when it holds a space or a quote; ``$`` and ``%`` escaped."""
    word = _unit_escape(word).replace("$", "$$")
    if word and not any(ch in word for ch in " \t\"'\\;"):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _environment_line(key: str, value: str) -> str:
    assignment = _unit_escape(f"{key}={value}").replace("\\", "\\\\").replace('"', '\\"')
    return f'Environment="{assignment}"'


def render_unit(spec: ServiceSpec) -> str:
    """The systemd user unit: restart on failure, environment, logs to the journal.

    ``KillMode=mixed`` sends the SIGTERM to the daemon only, so it can end its streams and
    stop its workers itself; anything left at ``TimeoutStopSec`` is killed."""
    lines = [
        "# Written by `mlxd service install`; `mlxd service uninstall` removes it.",
        "[Unit]",
        "Description=mlxd: an Ollama-compatible model server on MLX",
        "",
        "[Service]",
        "Type=simple",
        "ExecStart=" + " ".join(_quote_word(word) for word in spec.program),
        *([f"WorkingDirectory={_unit_escape(spec.working_directory)}"] if spec.working_directory else []),
        *(_environment_line(key, value) for key, value in spec.environment.items()),
        "Restart=on-failure",
        "RestartSec=3",
        "KillMode=mixed",
        f"TimeoutStopSec={spec.stop_timeout}",
        "StandardOutput=journal",
        "StandardError=journal",
        "SyslogIdentifier=mlxd",
        "",
        "[Install]",
        "WantedBy=default.target",
    ]
    return "\n".join(lines) + "\n"
