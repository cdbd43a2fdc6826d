"""The run's text log: everything `hmsa train` prints, copied with a time to <workdir>/log.txt.

`RunLog` replaces sys.stdout and sys.stderr with streams that write through to the terminal
and copy each finished line to the log file, appended across resumes. Progress-bar redraws
(text separated by carriage returns) are reduced to what the terminal finally shows. Lines
printed before the file is known (the process index decides its name) wait in memory.
"""
from __future__ import annotations

import io
import os
import socket
import sys
import time
from typing import Callable

LOG_NAME = "log.txt"


def log_file_name(process_index: int) -> str:
    """log.txt for process 0, log.process<N>.txt for the others of a multi-process job."""
    return LOG_NAME if process_index == 0 else f"log.process{process_index}.txt"


def visible_text(line: str) -> str:
    """What a terminal shows of a line containing carriage returns: its last non-blank part."""
    parts = [part for part in line.split("\r") if part.strip()]
    return parts[-1].rstrip() if parts else ""


def timestamped(line: str, now: float | None = None) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() if now is None else now))
    return f"{stamp} {line}\n"


class _TeeStream(io.TextIOBase):
    """Writes to `stream` and hands each finished line to `on_line`."""

    def __init__(self, stream, on_line: Callable[[str], None]):
        self._stream, self._on_line, self._pending = stream, on_line, ""

    def write(self, text: str) -> int:
        self._stream.write(text)
        *lines, self._pending = (self._pending + text).split("\n")
        for line in lines:
            self._on_line(line)
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def finish(self) -> None:
        if self._pending:
            self._on_line(self._pending)
            self._pending = ""

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self):
        return getattr(self._stream, "encoding", "utf-8")

    def __getattr__(self, name):  # buffer, errors, ...: what callers expect of the real stream
        if name == "_stream":  # not set yet
            raise AttributeError(name)
        return getattr(self._stream, name)


class RunLog:
    """Use as a context manager around a command; `attach(path)` starts the file."""

    def __init__(self, header: str):
        self._file = None
        self._waiting = [timestamped(f"---- {header} (host {socket.gethostname()}, pid {os.getpid()})")]
        self._streams: list[tuple[str, object, _TeeStream]] = []

    def __enter__(self) -> "RunLog":
        for name in ("stdout", "stderr"):
            original = getattr(sys, name)
            tee = _TeeStream(original, self.record)
            self._streams.append((name, original, tee))
            setattr(sys, name, tee)
        return self

    def __exit__(self, *exc) -> None:
        for name, original, tee in self._streams:
            tee.finish()
            if getattr(sys, name) is tee:
                setattr(sys, name, original)
        self._streams.clear()
        if self._file is not None:
            self._file.close()
            self._file = None

    def attach(self, path: str) -> None:
        """Append to `path` from now on, starting with the lines printed so far."""
        self._file = open(path, "a", encoding="utf-8")
        self._file.writelines(self._waiting)
        self._file.flush()
        self._waiting = []

    def record(self, line: str) -> None:
        """Add one line to the log file only (not the terminal)."""
        text = visible_text(line)
        if not text:
            return
        if self._file is None:
            self._waiting.append(timestamped(text))
            return
        self._file.write(timestamped(text))
        self._file.flush()


__all__ = ["LOG_NAME", "RunLog", "log_file_name", "timestamped", "visible_text"]
