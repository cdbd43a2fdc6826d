"""What the commands print: progress bars that stay quiet off a terminal, and counted nouns."""
from __future__ import annotations

import sys
from typing import Iterable

from tqdm import tqdm

def plural(count: int, noun: str) -> str:
    """'1 device', '2 devices', '1 process', '3 processes'."""
    if count == 1:
        return f"{count} {noun}"
    return f"{count} {noun}{'es' if noun.endswith('s') else 's'}"


def is_terminal(stream=None) -> bool:
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def show_progress(quiet: bool = False) -> bool:
    """Bars only for a person watching: not with --quiet, not into a file or a pipe."""
    return not quiet and is_terminal()


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", quiet: bool = False):
    """A tqdm bar on stderr, disabled (a plain pass-through) unless `show_progress(quiet)`."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True,
                disable=not show_progress(quiet), leave=True)


__all__ = ["is_terminal", "plural", "progress_bar", "show_progress"]
