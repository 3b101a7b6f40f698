"""Progress for ``pull`` and ``create`` streams, and the spinner shown while a model loads.

The server sends Ollama's progress objects (reference §4.10): a ``status`` alone for a step,
or ``digest``/``total``/``completed`` for a layer. On a terminal each step gets a spinner and
each layer a bar (percent, bar, size, speed, time left), drawn by rich; anywhere else the same
events become plain lines: each step once, each layer at 25 % steps and when complete. Like
Ollama's CLI, progress goes to stderr and a layer's first object (``completed`` 0) is skipped.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, Protocol, TextIO

from rich.console import Console, RenderableType
from rich.live import Live
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
)
from rich.spinner import Spinner as RichSpinner
from rich.text import Text

from daemon.cli.formatting import human_bytes

_LAYER = "layer"
_STEP = "step"


def layer_label(digest: str) -> str:
    """``pulling 6a0746a1ec1a:``, from ``sha256:6a0746a1ec1a…`` (any other digest as it is)."""
    name = digest.removeprefix("sha256:").strip()
    if digest.startswith("sha256:"):
        name = name[:12]
    return f"pulling {name}:"


class ProgressView(Protocol):
    def update(self, event: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class _Only(ProgressColumn):
    """Shows ``column`` for the tasks of one kind (layers or steps), nothing for the others."""

    def __init__(self, kind: str, column: ProgressColumn) -> None:
        super().__init__()
        self.kind = kind
        self.column = column

    def render(self, task: Task) -> RenderableType:
        if task.fields.get("kind") != self.kind:
            return Text("")
        return self.column(task)


class _SizeColumn(ProgressColumn):
    """``1.2 GB/2.0 GB`` while a layer downloads, its size once done (Ollama's bar)."""

    def render(self, task: Task) -> RenderableType:
        total = int(task.total or 0)
        if task.finished:
            return Text(human_bytes(total))
        return Text(f"{human_bytes(int(task.completed))}/{human_bytes(total)}")


class _RateColumn(ProgressColumn):
    """Speed and time left while a layer downloads (``12 MB/s  1m5s``); blank once done."""

    def render(self, task: Task) -> RenderableType:
        speed = task.speed
        if task.finished or not speed or task.total is None:
            return Text("")
        left = (task.total - task.completed) / speed
        return Text(f"{human_bytes(int(speed))}/s  {eta(left)}")


def eta(seconds: float) -> str:
    """Ollama's ``formatDuration``: ``59s``, ``4m10s``, ``1h5m``, ``99h+``."""
    whole = int(seconds + 0.5)
    if whole >= 100 * 3600:
        return "99h+"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


class RichProgress:
    """Spinners and bars on a terminal."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            _Only(_STEP, SpinnerColumn(finished_text=" ")),
            TextColumn("{task.description}"),
            _Only(_LAYER, TextColumn("{task.percentage:>3.0f}%")),
            _Only(_LAYER, BarColumn(bar_width=None)),
            _Only(_LAYER, _SizeColumn()),
            _Only(_LAYER, _RateColumn()),
            console=console,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self.status = ""
        self.step: TaskID | None = None
        self.layers: dict[str, TaskID] = {}
        self.progress.start()

    def _stop_step(self) -> None:
        if self.step is not None:
            self.progress.update(self.step, total=1, completed=1)
            self.step = None

    def update(self, event: dict[str, Any]) -> None:
        digest = str(event.get("digest") or "")
        if digest:
            completed = int(event.get("completed") or 0)
            total = int(event.get("total") or 0)
            if completed == 0:
                return
            self._stop_step()
            task = self.layers.get(digest)
            if task is None:
                task = self.progress.add_task(layer_label(digest), total=total or None, kind=_LAYER)
                self.layers[digest] = task
            self.progress.update(task, completed=min(completed, total) if total else completed)
            return
        status = str(event.get("status") or "")
        if status and status != self.status:
            self._stop_step()
            self.status = status
            self.step = self.progress.add_task(status, total=None, kind=_STEP)

    def close(self) -> None:
        self._stop_step()
        self.progress.stop()


class PlainProgress:
    """Plain lines for logs and pipes."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.status = ""
        self.shown: dict[str, int] = {}  # digest → the last quarter printed

    def _line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def update(self, event: dict[str, Any]) -> None:
        digest = str(event.get("digest") or "")
        if digest:
            completed = int(event.get("completed") or 0)
            total = int(event.get("total") or 0)
            if completed == 0:
                return
            percent = 100.0 * min(completed, total) / total if total else 0.0
            quarter = 4 if total and completed >= total else int(percent // 25)
            if quarter <= self.shown.get(digest, -1):
                return
            self.shown[digest] = quarter
            size = (
                f"{human_bytes(min(completed, total))}/{human_bytes(total)}"
                if total
                else human_bytes(completed)
            )
            self._line(f"{layer_label(digest)} {percent:3.0f}% {size}")
            return
        status = str(event.get("status") or "")
        if status and status != self.status:
            self.status = status
            self._line(status)

    def close(self) -> None:
        self.out.flush()


def progress_view(out: TextIO | None = None) -> ProgressView:
    """Bars when ``out`` (stderr by default) is a terminal, plain lines otherwise."""
    out = out or sys.stderr
    if out.isatty():
        return RichProgress(Console(file=out, highlight=False))
    return PlainProgress(out)


def show_progress(events: Iterable[dict[str, Any]], out: TextIO | None = None) -> None:
    """Render a whole progress stream; the view is closed (bars left as they are) on any exit."""
    view = progress_view(out)
    try:
        for event in events:
            view.update(event)
    finally:
        view.close()


class Spinner:
    """A spinner on a terminal while the server works (cleared when stopped); nothing elsewhere.

    Use as a context manager; :meth:`stop` ends it early (when the first output arrives)."""

    def __init__(self, out: TextIO | None = None) -> None:
        out = out or sys.stderr
        self.live: Live | None = None
        if out.isatty():
            self.live = Live(
                RichSpinner("dots"),
                console=Console(file=out),
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
                refresh_per_second=12.5,
            )

    def __enter__(self) -> Spinner:
        if self.live is not None:
            self.live.start()
        return self

    def stop(self) -> None:
        if self.live is not None and self.live.is_started:
            self.live.stop()

    def __exit__(self, *exc: object) -> None:
        self.stop()
