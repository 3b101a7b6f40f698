"""The service managers behind ``mlxd service``: ``launchctl`` (macOS) and ``systemctl --user`` (Linux).

Each verb is a short plan of file writes and commands carried out by a :class:`Runner`, which
either does them or, with ``--dry-run``, prints them as a shell script (files as here-documents)
and runs nothing. Commands are looked up on ``PATH``. Installing is idempotent: an unchanged
service that is already loaded is left alone; a changed one is replaced. A dry run queries
nothing either, so it shows the plan for a service that is not installed yet.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TextIO

from launchd import LABEL, UNIT
from launchd.render import ServiceSpec, log_dir, log_file, plist_path, render_plist, render_unit, unit_path

NOT_RUNNING = 3  # the LSB status code `status` returns when the service is not running
_POLL_SECONDS = 0.2


class ServiceError(Exception):
    """A failure reported as one line: ``Error: ...`` and exit status 1."""


@dataclass
class Runner:
    """Carries out a plan, or prints it (``dry_run``)."""

    dry_run: bool = False
    out: TextIO | None = None  # sys.stdout at the time of writing

    def say(self, text: str) -> None:
        print(text, file=self.out or sys.stdout, flush=True)

    def note(self, text: str) -> None:
        """What was done, for the user; nothing in a dry run, whose output is only the plan."""
        if not self.dry_run:
            self.say(text)

    def warn(self, text: str) -> None:
        print(f"warning: {text}", file=sys.stderr, flush=True)

    def run(self, argv: Sequence[str]) -> int:
        """Run a command with the terminal's stdio; its exit status."""
        if self.dry_run:
            self.say(shlex.join(argv))
            return 0
        try:
            return subprocess.run(list(argv), check=False).returncode
        except FileNotFoundError:
            raise ServiceError(f"{argv[0]} not found on PATH") from None

    def must(self, argv: Sequence[str]) -> None:
        code = self.run(argv)
        if code != 0:
            raise ServiceError(f"`{shlex.join(argv)}` failed with exit status {code}")

    def query(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str] | None:
        """Run a read-only command and capture its output; ``None`` (nothing run) in a dry run."""
        if self.dry_run:
            return None
        try:
            return subprocess.run(list(argv), capture_output=True, text=True, check=False)
        except FileNotFoundError:
            raise ServiceError(f"{argv[0]} not found on PATH") from None

    def makedirs(self, *paths: Path) -> None:
        if self.dry_run:
            self.say(shlex.join(["mkdir", "-p", *map(str, paths)]))
            return
        for path in paths:
            path.mkdir(parents=True, exist_ok=True)

    def write(self, path: Path, content: bytes) -> None:
        if self.dry_run:
            self.say(f"cat > {shlex.quote(str(path))} <<'EOF'\n{content.decode()}EOF")
            return
        partial = path.with_name(f".{path.name}.partial")
        partial.write_bytes(content)
        os.replace(partial, path)

    def remove(self, path: Path) -> None:
        if self.dry_run:
            self.say(shlex.join(["rm", "-f", str(path)]))
            return
        path.unlink(missing_ok=True)


class Manager(Protocol):
    name: str

    def running(self) -> bool | None:
        """Whether the service runs now; ``None`` when unknown (a dry run)."""
        ...

    def install(self, spec: ServiceSpec) -> int: ...
    def uninstall(self) -> int: ...
    def start(self) -> int: ...
    def stop(self) -> int: ...
    def restart(self) -> int: ...
    def status(self) -> int: ...
    def logs(self, follow: bool, lines: int) -> int: ...


# ---------------------------------------------------------------------------- launchd


@dataclass(frozen=True)
class JobState:
    """What ``launchctl print`` says about the job."""

    loaded: bool
    running: bool = False
    pid: int | None = None
    last_exit: str | None = None


def parse_print(text: str) -> JobState:
    """The job's state from the output of ``launchctl print gui/<uid>/<label>`` (a loaded job)."""

    def field(name: str) -> str | None:
        found = re.search(rf"^\s*{name} = (.+)$", text, re.MULTILINE)
        return found.group(1).strip() if found else None

    pid = field("pid")
    return JobState(
        loaded=True,
        running=field("state") == "running",
        pid=int(pid) if pid and pid.isdigit() else None,
        last_exit=field("last exit code"),
    )


class Launchd:
    """A LaunchAgent in the user's GUI domain: ``launchctl bootstrap|bootout|kickstart|kill``."""

    name = "launchd"

    def __init__(self, runner: Runner, home: Path, uid: int) -> None:
        self.runner = runner
        self.home = home
        self.domain = f"gui/{uid}"
        self.target = f"{self.domain}/{LABEL}"
        self.plist = plist_path(home)
        self.log = log_file(home)

    def state(self) -> JobState | None:
        """``None`` in a dry run."""
        done = self.runner.query(["launchctl", "print", self.target])
        if done is None:
            return None
        return parse_print(done.stdout) if done.returncode == 0 else JobState(loaded=False)

    def running(self) -> bool | None:
        state = self.state()
        return None if state is None else state.running

    def _wait(self, until_loaded: bool | None, until_running: bool | None, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (state := self.state()) is not None and time.monotonic() < deadline:
            if (until_loaded is None or state.loaded == until_loaded) and (
                until_running is None or state.running == until_running
            ):
                return
            time.sleep(_POLL_SECONDS)

    def _require_plist(self) -> None:
        if not self.runner.dry_run and not self.plist.is_file():
            raise ServiceError(
                f"mlxd is not installed as a service ({self.plist} is missing): run `mlxd service install`"
            )

    def _bootstrap(self) -> None:
        self.runner.must(["launchctl", "enable", self.target])
        self.runner.must(["launchctl", "bootstrap", self.domain, str(self.plist)])

    def install(self, spec: ServiceSpec) -> int:
        content = render_plist(spec)
        state = self.state()
        current = self.plist.read_bytes() if self.plist.is_file() else None
        if state is not None and state.loaded and current == content:
            if not state.running:  # stopped with `mlxd service stop`: installing means running
                self.runner.must(["launchctl", "kickstart", self.target])
            self.runner.note(f"mlxd is already installed and loaded ({self.plist})")
            return 0
        self.runner.makedirs(self.plist.parent, log_dir(self.home))
        self.runner.write(self.plist, content)
        if state is not None and state.loaded:  # a changed service: replace the loaded one
            self.runner.must(["launchctl", "bootout", self.target])
            self._wait(until_loaded=False, until_running=None, seconds=spec.stop_timeout)
        self._bootstrap()
        self.runner.note(f"installed {self.plist}: mlxd runs now and at every login; logs in {self.log}")
        return 0

    def uninstall(self) -> int:
        state = self.state()
        if state is not None and not state.loaded and not self.plist.exists():
            self.runner.note("mlxd is not installed as a service")
            return 0
        if state is None or state.loaded:
            self.runner.must(["launchctl", "bootout", self.target])
        self.runner.remove(self.plist)
        self.runner.note(f"uninstalled the mlxd service (logs kept in {log_dir(self.home)})")
        return 0

    def start(self) -> int:
        self._require_plist()
        state = self.state()
        if state is not None and state.running:
            self.runner.note(f"mlxd is already running (pid {state.pid})")
        elif state is not None and not state.loaded:
            self._bootstrap()  # RunAtLoad starts it
        else:
            self.runner.must(["launchctl", "kickstart", self.target])
        return 0

    def stop(self) -> int:
        state = self.state()
        if state is not None and not state.running:
            self.runner.note("mlxd is not running")
            return 0
        # A clean exit (status 0 on SIGTERM) is not restarted: KeepAlive is SuccessfulExit=false.
        self.runner.must(["launchctl", "kill", "SIGTERM", self.target])
        self._wait(until_loaded=None, until_running=False, seconds=30)
        self.runner.note("stopped mlxd; it starts again at the next login or with `mlxd service start`")
        return 0

    def restart(self) -> int:
        self._require_plist()
        state = self.state()
        if state is not None and not state.loaded:
            self._bootstrap()
        else:
            self.runner.must(["launchctl", "kickstart", "-k", self.target])
        return 0

    def status(self) -> int:
        if self.runner.dry_run:
            self.runner.say(shlex.join(["launchctl", "print", self.target]))
            return 0
        state = self.state()
        assert state is not None
        if state.running:
            summary = f"running (pid {state.pid})"
        elif state.loaded:
            summary = f"loaded, not running (last exit code {state.last_exit or 'none'})"
        else:
            summary = "not loaded"
        self.runner.say(f"service: {self.target} (launchd): {summary}")
        self.runner.say(f"file:    {self.plist}{'' if self.plist.is_file() else ' (missing)'}")
        self.runner.say(f"logs:    {self.log}")
        return 0 if state.running else NOT_RUNNING

    def logs(self, follow: bool, lines: int) -> int:
        if not self.runner.dry_run and not self.log.exists():
            raise ServiceError(f"no log yet at {self.log}")
        return self.runner.run(["tail", "-n", str(lines), *(["-F"] if follow else []), str(self.log)])


# ---------------------------------------------------------------------------- systemd


_ACTIVE = ("active", "activating", "reloading")


class Systemd:
    """A systemd user unit: ``systemctl --user`` and ``journalctl --user``."""

    name = "systemd"

    def __init__(self, runner: Runner, home: Path, environ: Mapping[str, str] | None = None) -> None:
        self.runner = runner
        self.unit = unit_path(home, environ)

    @staticmethod
    def ctl(*args: str) -> list[str]:
        return ["systemctl", "--user", *args]

    def active(self) -> str | None:
        """``systemctl --user is-active``: "active", "inactive", "failed", ...; ``None`` in a dry run."""
        done = self.runner.query(self.ctl("is-active", UNIT))
        return None if done is None else (done.stdout.strip() or "unknown")

    def running(self) -> bool | None:
        active = self.active()
        return None if active is None else active in _ACTIVE

    def _require_unit(self) -> None:
        if not self.runner.dry_run and not self.unit.is_file():
            raise ServiceError(
                f"mlxd is not installed as a service ({self.unit} is missing): run `mlxd service install`"
            )

    def install(self, spec: ServiceSpec) -> int:
        content = render_unit(spec).encode()
        active = self.active()
        current = self.unit.read_bytes() if self.unit.is_file() else None
        if active == "active" and current == content:
            self.runner.note(f"mlxd is already installed and running ({self.unit})")
            return 0
        self.runner.makedirs(self.unit.parent)
        self.runner.write(self.unit, content)
        self.runner.must(self.ctl("daemon-reload"))
        self.runner.must(self.ctl("enable", "--now", UNIT))
        if active in _ACTIVE and current != content:  # a changed unit: apply it
            self.runner.must(self.ctl("restart", UNIT))
        self.runner.note(f"installed {self.unit}: mlxd runs now and at every login; logs: mlxd service logs")
        return 0

    def uninstall(self) -> int:
        active = self.active()
        if active is not None and active not in _ACTIVE and not self.unit.exists():
            self.runner.note("mlxd is not installed as a service")
            return 0
        self.runner.must(self.ctl("disable", "--now", UNIT))
        self.runner.remove(self.unit)
        self.runner.must(self.ctl("daemon-reload"))
        self.runner.note("uninstalled the mlxd service")
        return 0

    def start(self) -> int:
        self._require_unit()
        self.runner.must(self.ctl("start", UNIT))
        return 0

    def stop(self) -> int:
        self.runner.must(self.ctl("stop", UNIT))
        return 0

    def restart(self) -> int:
        self._require_unit()
        self.runner.must(self.ctl("restart", UNIT))
        return 0

    def status(self) -> int:
        return self.runner.run(self.ctl("status", UNIT, "--no-pager"))

    def logs(self, follow: bool, lines: int) -> int:
        argv = [
            "journalctl",
            "--user",
            "-u",
            UNIT,
            "-n",
            str(lines),
            "--no-pager",
            *(["-f"] if follow else []),
        ]
        return self.runner.run(argv)
