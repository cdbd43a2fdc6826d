"""Training progress: a tqdm bar on a terminal, plain log lines otherwise.

The first step compiles (minutes on a CPU), so the bar says "compiling" until it is done, and
the ETA is computed from the steps after the first logged interval only: from the start it would
count the compilation as training time (a first ETA of 51 minutes for a 3-minute demo).
"""
from __future__ import annotations

import sys
from typing import Callable

from tqdm.auto import tqdm

COMPILING = "compiling the first step (minutes on a CPU)"
BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"


def format_duration(seconds: float) -> str:
    """'42 s', '3:07', '1:02:03'."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class StepTimer:
    """Seconds per step over the logged intervals after the first one (which holds the compile)."""

    def __init__(self):
        self.intervals_seen, self.steps, self.seconds = 0, 0, 0.0

    def add(self, steps: int, seconds: float) -> None:
        self.intervals_seen += 1
        if self.intervals_seen > 1:
            self.steps += steps
            self.seconds += seconds

    def eta(self, steps_left: int) -> str:
        if self.steps == 0 or self.seconds <= 0:
            return "after the first steps"
        return format_duration(steps_left * self.seconds / self.steps)


class Progress:
    """Bar (enabled) or log lines of step, loss, lr, images/s and ETA. With a bar, `record`
    (the run's log file) still gets one plain line per logged step."""

    def __init__(self, total: int, start: int, enabled: bool, log: Callable[[str], None],
                 record: Callable[[str], None] | None = None):
        self.log, self.record, self.bar, self.total = log, record, None, total
        self.timer = StepTimer()
        if enabled:
            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True,
                            bar_format=BAR_FORMAT)

    def compiling(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(COMPILING, refresh=True)
            if self.record is not None:
                self.record(COMPILING)
        else:
            self.log(COMPILING)

    def update(self, step: int, advanced: int, fields: dict, seconds: float) -> None:
        """`seconds`: training time of these `advanced` steps (validation excluded)."""
        self.timer.add(advanced, seconds)
        fields = {"ETA": self.timer.eta(self.total - step), **fields}  # first: a narrow terminal cuts the end
        line = f"step {step}/{self.total} " + " ".join(f"{k}={v}" for k, v in fields.items())
        if self.bar is None:
            self.log(line)
            return
        self.bar.update(advanced)
        self.bar.set_postfix(fields, refresh=True)
        if self.record is not None:
            self.record(line)
        if step >= self.total:
            # Done: later messages (last validation, table) print below one final bar instead of
            # redrawing it after each of them.
            self.close()

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
            sys.stdout.flush()  # in order with the bar (stderr) when stdout is a pipe
        else:
            self.log(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


__all__ = ["COMPILING", "Progress", "StepTimer", "format_duration"]
