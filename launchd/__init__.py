"""Running mlxd as a background service: a launchd LaunchAgent on macOS, a systemd user unit on Linux.

* :mod:`launchd.render` — what the service runs (program, captured environment, log paths)
  and its two renderings: the LaunchAgent plist (from the template next to this file) and
  the systemd unit.
* :mod:`launchd.managers` — the ``launchctl`` / ``systemctl --user`` calls behind each verb.
* :mod:`launchd.preflight` — refusing to install over another server that holds the port.
* :mod:`launchd.cli` — the ``mlxd service`` verbs.
"""

LABEL = "dev.mlxd.daemon"  # the launchd label; also the plist's file name
UNIT = "mlxd.service"  # the systemd user unit
