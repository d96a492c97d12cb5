"""What `grade` shows while it runs and at its end: rich's progress bar on a terminal (done
of total, rate, elapsed, time left), one plain line per student otherwise; then the table.

cli.cmd_grade makes one Display (`for_stream`), hands it to grade.grade_class as its
Events, and calls `table()` at the end (also after Ctrl-C).
"""

from __future__ import annotations

import time
from typing import IO, Any

from jupyter_docker_kernel.grade import Outcome


def score_text(outcome: Outcome) -> str:
    if outcome.score is None:
        return "-"
    of = f"/{outcome.max_score:g}" if outcome.max_score is not None else ""
    return f"{outcome.score:g}{of}"


def seconds_text(outcome: Outcome) -> str:
    return "-" if outcome.seconds is None else f"{outcome.seconds:.1f}"


def line(outcome: Outcome) -> str:
    """One student's end as a plain line."""
    why = f" ({outcome.reason})" if outcome.reason else ""
    return (
        f"{outcome.student}: {outcome.status} {score_text(outcome)} "
        f"in {seconds_text(outcome)} s{why}"
    )


class Display:
    """grade.Events for a person: a live bar on a terminal, plain lines elsewhere."""

    def __init__(self, total: int, stream: IO[str], terminal: bool) -> None:
        self.total = total
        self.stream = stream
        self.terminal = terminal
        self.count = 0
        self.began = time.monotonic()
        self.drawn = 0.0
        self.progress: Any = None
        self.task: Any = None

    @classmethod
    def for_stream(cls, total: int, stream: IO[str]) -> Display:
        return cls(total, stream, terminal=stream.isatty())

    def __enter__(self) -> Display:
        if self.terminal and self.total:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(
                TextColumn("grading"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("left"),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                # No refresh thread: ForkRunner forks this process (see tick()).
                auto_refresh=False,
            )
            self.progress.start()
            self.task = self.progress.add_task("grading", total=self.total, rate="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def started(self, student: str) -> None:
        pass

    def done(self, outcome: Outcome) -> None:
        self.count += 1
        minutes = (time.monotonic() - self.began) / 60
        rate = f"{self.count / minutes:.1f}/min" if minutes > 0 else ""
        if self.progress is not None:
            if outcome.status != "graded" or outcome.reason:
                self.progress.console.print(line(outcome), markup=False, highlight=False)
            self.progress.update(self.task, advance=1, rate=rate)
        else:
            print(f"[{self.count}/{self.total}] {line(outcome)}", file=self.stream, flush=True)

    def tick(self) -> None:
        """grade_class's poll loop: redraw the bar (elapsed, time left) twice a second."""
        now = time.monotonic()
        if self.progress is not None and now - self.drawn >= 0.5:
            self.drawn = now
            self.progress.refresh()

    def stopping(self, running: int) -> None:
        message = f"interrupted: stopping {running} worker(s) and removing their containers"
        if self.progress is not None:
            self.progress.console.print(message, markup=False)
        else:
            print(message, file=self.stream, flush=True)


def table(outcomes: list[Outcome], stream: IO[str]) -> None:
    """The final table, one row per student (sorted): score, seconds, status, reason."""
    rows = [
        (o.student, score_text(o), seconds_text(o), o.status, o.reason)
        for o in sorted(outcomes, key=lambda o: o.student)
    ]
    if stream.isatty():
        from rich.console import Console
        from rich.table import Table

        grid = Table("student", "score", "seconds", "status", "reason")
        for row in rows:
            grid.add_row(*row)
        Console(file=stream).print(grid)
        return
    head = ("student", "score", "seconds", "status", "reason")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    for row in [head, *rows]:
        cells = [row[i].ljust(widths[i]) for i in range(4)]
        print("  ".join([*cells, row[4]]).rstrip(), file=stream)
