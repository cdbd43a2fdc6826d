"""How a training run stops before its last step: on SIGTERM/SIGINT (at a step boundary, all
processes at the same step, after a checkpoint) or after too many non-finite steps in a row."""
from __future__ import annotations

import os
import signal
import threading

import jax

from hmsa_jax import parallel

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """The run stopped at a step boundary on SIGTERM/SIGINT after saving a checkpoint."""

    def __init__(self, signal_name: str, step: int, checkpoint_dir: str | None, summary: dict):
        self.signal_name, self.step, self.checkpoint_dir, self.summary = (
            signal_name, step, checkpoint_dir, summary)
        super().__init__(f"stopped by {signal_name} after step {step}; checkpoint "
                         f"{checkpoint_dir}; run the same command again to resume from it")


class NonFiniteError(RuntimeError):
    """Too many steps in a row had a non-finite loss or gradient."""


class StopSignals:
    """Records SIGTERM/SIGINT instead of dying, so the loop can finish its step and save.
    A second signal of the same kind restores the default action and re-delivers it."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.received == signum:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else ""


def agreed_stop(signals: StopSignals, step: int, check_every: int) -> bool:
    """Whether every process stops after `step`: single process, as soon as a signal came;
    several processes, at steps that are multiples of `check_every`, if any process got one
    (a collective all processes reach at the same steps)."""
    if jax.process_count() == 1:
        return signals.received is not None
    if step % check_every:
        return False
    return parallel.process_any(signals.received is not None)


def check_finite(state, step: int, max_nonfinite: int, manager) -> None:
    """Raise NonFiniteError once the state's streak of skipped steps reached the limit (the
    step skips every update from then on, so nothing after it is worth saving)."""
    streak = int(jax.device_get(state.nonfinite_streak))
    if streak >= max_nonfinite:
        good = manager.latest_step()
        raise NonFiniteError(
            f"step {step}: {streak} steps in a row had a non-finite loss or gradient "
            f"(faults.max_nonfinite_steps={max_nonfinite}); they were skipped and the run "
            f"stopped without saving. Last good checkpoint: "
            f"{os.path.join(str(manager.directory), str(good)) if good is not None else 'none'}. "
            f"Lower optim.learning_rate or set optim.grad_clip_norm, then run again to "
            f"resume from it.")


__all__ = ["NonFiniteError", "Preempted", "STOP_SIGNALS", "StopSignals", "agreed_stop", "check_finite"]
