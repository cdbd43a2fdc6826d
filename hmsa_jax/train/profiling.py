"""An optional jax.profiler trace of chosen training steps, for TensorBoard's profile plugin.

config.train.profile_start_step = S (0: off) and profile_steps = N trace steps S .. S+N-1 into
<workdir>/profile (`tensorboard --logdir=<workdir>/profile`, tab "Profile"; needs the
tensorboard-plugin-profile package). Start after the first step to leave compilation out.
"""
from __future__ import annotations

import os
from typing import Callable

import jax


class StepProfiler:
    """before(step about to run) starts the trace at the first chosen step; after(step just
    run, state) waits for the device and stops it after the last; close() stops an open trace
    (a run that ends or fails inside the window)."""

    def __init__(self, directory: str, first: int, count: int, log: Callable[[str], None] = print):
        self.directory, self.first, self.last, self.log = directory, first, first + count - 1, log
        self.active = False

    @property
    def enabled(self) -> bool:
        return self.first > 0 and self.last >= self.first

    def before(self, step: int) -> None:
        if self.enabled and step == self.first and not self.active:
            os.makedirs(self.directory, exist_ok=True)
            jax.profiler.start_trace(self.directory)
            self.active = True

    def after(self, step: int, state) -> None:
        if self.active and step >= self.last:
            jax.block_until_ready(state)  # the trace holds the steps' device work, not only dispatch
            self.close()
            self.log(f"profile of steps {self.first}-{self.last} written to {self.directory} "
                     f"(tensorboard --logdir={self.directory})")

    def close(self) -> None:
        if self.active:
            self.active = False
            jax.profiler.stop_trace()


def trace_files(directory: str) -> list[str]:
    """The trace files a profile folder holds (plugins/profile/<run>/<host>.xplane.pb ...)."""
    found = []
    for root, _, files in os.walk(directory):
        found += [os.path.join(root, f) for f in files if f.endswith((".xplane.pb", ".trace.json.gz"))]
    return sorted(found)


__all__ = ["StepProfiler", "trace_files"]
