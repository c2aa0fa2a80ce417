"""Progress bars that keep log files clean: a tqdm bar on a terminal; anywhere else (a log file, a pipe, CI) one
plain line every ``every`` of the way, with no carriage returns.  Every bar in the package goes through
:func:`progress_bar`."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

PLAIN_EVERY = 0.25          # off a terminal: a line at 25 %, 50 %, 75 % and 100 %


def is_terminal(stream: IO | None) -> bool:
    """Whether ``stream`` is an interactive terminal (False for files, pipes, captured output, or no stream)."""
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError, OSError):      # closed or stream-like objects without isatty
        return False


class PlainProgress:
    """The part of tqdm's interface the package uses (iteration, update, set_postfix[_str], set_description,
    close, context manager), writing one ``\\n``-terminated line per ``every`` of ``total``."""

    def __init__(self, iterable: Iterable | None = None, desc: str = "", total: int | None = None, unit: str = "it",
                 file: IO | None = None, every: float = PLAIN_EVERY, disable: bool = False):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)                                           # type: ignore[arg-type]
        self.iterable, self.desc, self.total, self.unit = iterable, desc, total, unit
        self.file, self.every, self.disable = file, every, disable
        self.n, self.postfix = 0, ""
        self._next, self._printed_at, self._closed = every, 0, False
        self._t0 = time.perf_counter()

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable if self.iterable is not None else ():
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __len__(self) -> int:
        return self.total or 0

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.total and self.n / self.total >= self._next - 1e-9:
            self._line()
            while self._next <= self.n / self.total + 1e-9:
                self._next += self.every

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in {**(ordered_dict or {}), **kwargs}.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.n and self.n != self._printed_at:        # stopped early, or no total: say where it ended
            self._line()

    def _line(self) -> None:
        self._printed_at = self.n
        if self.disable:
            return
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100 * self.n / self.total:.0f} %)" if self.total else ""
        text = f"{self.desc}: {done} {self.unit}{pct}, {time.perf_counter() - self._t0:.0f} s"
        stream = self.file if self.file is not None else sys.stderr
        print(text + (f", {self.postfix}" if self.postfix else ""), file=stream, flush=True)


def progress_bar(iterable: Iterable | None = None, *, desc: str = "", total: int | None = None, unit: str = "it",
             disable: bool = False, leave: bool = True, mininterval: float = 0.1, file: IO | None = None,
             every: float = PLAIN_EVERY):
    """A tqdm bar when ``file`` (default stderr) is a terminal, else a :class:`PlainProgress`; ``disable`` silences
    either.  ``leave`` and ``mininterval`` only apply to the tqdm bar."""
    stream = file if file is not None else sys.stderr
    if not disable and is_terminal(stream):
        from tqdm.auto import tqdm
        return tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave, mininterval=mininterval, file=stream)
    return PlainProgress(iterable, desc=desc, total=total, unit=unit, file=file, every=every, disable=disable)


__all__ = ["progress_bar", "PlainProgress", "is_terminal", "PLAIN_EVERY"]
