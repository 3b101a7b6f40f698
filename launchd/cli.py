"""``mlxd service install|uninstall|start|stop|restart|status|logs``: the verbs and their options."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.config import Settings

if TYPE_CHECKING:
    from launchd.managers import Manager, Runner

SYSTEMS = ("launchd", "systemd")
DEFAULT_LOG_LINES = 100


def add_parser(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``service`` and its actions to the ``mlxd`` command line."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--system",
        choices=SYSTEMS,
        help="the service manager (default: launchd on macOS, systemd on Linux)",
    )
    common.add_argument(
        "--dry-run", action="store_true", help="print the files and commands instead of running them"
    )
    service = verbs.add_parser(
        "service", help="run mlxd as a background service (launchd on macOS, systemd on Linux)"
    )
    actions = service.add_subparsers(dest="service_verb", metavar="ACTION", required=True)
    for name, text in (
        ("install", "install the service and start it now and at every login"),
        ("uninstall", "stop the service and remove it"),
        ("start", "start the installed service"),
        ("stop", "stop the service (until the next login or `start`)"),
        ("restart", "restart the service"),
        ("status", "show whether the service runs"),
    ):
        actions.add_parser(name, parents=[common], help=text)
    logs = actions.add_parser("logs", parents=[common], help="show the service's log")
    logs.add_argument("-f", "--follow", action="store_true", help="keep showing new lines")
    logs.add_argument("-n", "--lines", type=int, default=DEFAULT_LOG_LINES, help="how many lines to show")


def default_system(platform: str | None = None) -> str:
    platform = sys.platform if platform is None else platform
    if platform == "darwin":
        return "launchd"
    if platform.startswith("linux"):
        return "systemd"
    raise ValueError(f"no service manager is supported on {platform}; pass --system launchd|systemd")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Carry out ``mlxd service ACTION``; failures are one ``Error:`` line and status 1."""
    from launchd.managers import Launchd, Runner, ServiceError, Systemd

    runner = Runner(dry_run=args.dry_run)
    home = Path.home()
    try:
        system = args.system or default_system()
        manager: Manager = (
            Launchd(runner, home, os.getuid()) if system == "launchd" else Systemd(runner, home, os.environ)
        )
        return _act(args, settings, runner, manager, home)
    except (ServiceError, ValueError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1


def _act(args: argparse.Namespace, settings: Settings, runner: Runner, manager: Manager, home: Path) -> int:
    from launchd.preflight import answering
    from launchd.render import ServiceSpec

    verb = args.service_verb
    if verb == "install":
        spec = ServiceSpec.current(os.environ, home)
        for key in spec.skipped:
            runner.warn(f"{key} holds a control character and is not kept in the service")
        _check_port(settings, runner, manager)
        return manager.install(spec)
    if verb == "start":
        _check_port(settings, runner, manager)
        return manager.start()
    if verb == "uninstall":
        return manager.uninstall()
    if verb == "stop":
        return manager.stop()
    if verb == "restart":
        return manager.restart()
    if verb == "logs":
        return manager.logs(args.follow, args.lines)
    code = manager.status()
    if not runner.dry_run:
        where = settings.client_url
        runner.say(f"server:  {'answering' if answering(where) else 'not answering'} at {where}")
    return code


def _check_port(settings: Settings, runner: Runner, manager: Manager) -> None:
    """Refuse when another server holds the address (the running service itself is fine)."""
    from launchd.managers import ServiceError
    from launchd.preflight import port_problem

    if manager.running():
        return
    problem = port_problem(settings)
    if problem is None:
        return
    if runner.dry_run:
        runner.warn(problem)
        return
    raise ServiceError(problem)
