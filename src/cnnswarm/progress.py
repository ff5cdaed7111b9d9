"""Terminal output of the CLI: aligned tables and a training progress bar."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO

BAR_WIDTH = 24


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces; ``None`` shows as ``-``; floats as 4
    significant digits. An empty table is its header line alone."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in cells:
        for index, text in enumerate(row):
            widths[index] = max(widths[index], len(text))
    lines = [
        "  ".join(text.ljust(widths[index]) for index, text in enumerate(line)).rstrip()
        for line in [list(headers), *cells]
    ]
    return "\n".join(lines)


def format_time(value: Any) -> Any:
    """A Unix timestamp as local ``YYYY-MM-DD HH:MM:SS``; anything else unchanged."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 1e9:
        return datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M:%S")
    return value


def last_metrics(job: dict[str, Any]) -> dict[str, Any]:
    """The latest per-epoch metrics entry of a job (``{}`` before the first epoch ends)."""
    metrics = job.get("metrics") or []
    last = metrics[-1] if metrics else {}
    return last if isinstance(last, dict) else {}


def describe(job: dict[str, Any], total_epochs: int | None = None) -> str:
    """One line: bar, percent, epoch, latest loss and accuracy, state."""
    progress = job.get("progress")
    fraction = min(1.0, max(0.0, float(progress))) if isinstance(progress, int | float) else 0.0
    filled = round(fraction * BAR_WIDTH)
    parts = [f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {100 * fraction:3.0f}%"]
    opts = job.get("train_opts")
    total = opts.get("num_epochs") if isinstance(opts, dict) else None
    total = total or total_epochs
    epoch = job.get("epoch")
    if epoch is not None:
        parts.append(f"epoch {epoch}/{total}" if total else f"epoch {epoch}")
    metrics = last_metrics(job)
    loss = metrics.get("train_loss")
    if isinstance(loss, int | float):
        parts.append(f"loss {loss:.4f}")
    accuracy = metrics.get("test_accuracy", metrics.get("train_accuracy"))
    if isinstance(accuracy, int | float):
        parts.append(f"acc {accuracy:.3f}")
    state = job.get("state")
    if state == "queued" and job.get("waiting_reason"):
        parts.append(f"queued ({job['waiting_reason']})")
    elif state:
        parts.append(str(state))
    return "  ".join(parts)


class ProgressBar:
    """Shows a job's progress: redrawn in place on a terminal, one line per change otherwise
    (a change of epoch, state or a tenth of progress, so logs stay short)."""

    def __init__(self, stream: TextIO, total_epochs: int | None = None) -> None:
        self.stream = stream
        self.total_epochs = total_epochs
        self.interactive = stream.isatty()
        self._last_key: tuple[Any, ...] | None = None
        self._drawn_width = 0

    def update(self, job: dict[str, Any]) -> None:
        """Show the job's current state."""
        line = describe(job, self.total_epochs)
        if self.interactive:
            padding = " " * max(0, self._drawn_width - len(line))
            self.stream.write(f"\r{line}{padding}")
            self.stream.flush()
            self._drawn_width = len(line)
            return
        progress = job.get("progress")
        tenth = int(10 * progress) if isinstance(progress, int | float) else None
        key = (job.get("state"), job.get("epoch"), tenth)
        if key != self._last_key:
            self._last_key = key
            self.stream.write(line + "\n")
            self.stream.flush()

    def finish(self) -> None:
        """End the in-place line so later output starts on a fresh one."""
        if self.interactive and self._drawn_width:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn_width = 0
