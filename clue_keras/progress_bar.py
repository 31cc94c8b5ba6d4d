"""A progress display that suits where the output goes: a tqdm bar or plain lines.

On a terminal a `ProgressBar` is a tqdm bar (moving, with a postfix such as the
current loss) and other lines print above it; anywhere else (CI logs, Kubeflow,
a file, a pipe) it prints plain lines, one every ``line_every`` units and one at
the end, so a log reads the same in every viewer. Used by training
(`clue_keras.train_progress`), the downstream fits (`clue_tfrs.fitting`) and
the embedding export (`clue_keras.embeddings.batch`). No TensorFlow here.
"""

from __future__ import annotations

import sys
from typing import Callable, Optional, TextIO

__all__ = ["ProgressBar", "format_duration", "is_terminal"]


def format_duration(seconds: float) -> str:
    """``4s``, ``3m05s``, ``2h07m``."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def is_terminal(stream: Optional[TextIO]) -> bool:
    """Whether ``stream`` is an interactive terminal (False for None or a closed stream)."""
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):
        return False


class ProgressBar:
    """A tqdm bar on a terminal, plain lines elsewhere.

    Args:
      total: units to do (None: unknown; the bar counts up).
      desc: what is counted, e.g. a model's name (starts every plain line).
      unit: the unit's name (``epoch``, ``users``, ``step``).
      stream: where it writes (default standard output).
      bar: True / False forces a bar / plain lines; None: a bar iff ``stream``
        is a terminal.
      initial: units already done (resumed runs).
      printer: where plain lines go instead of ``stream`` (e.g. ``print``).
      line_every: without a bar, an automatic line ``<desc>: <unit> n/total
        <postfix>`` at every multiple of this many units and at `close`;
        0: none (the caller writes its own lines with `write`).
      leave: keep the finished bar on the terminal.
    """

    def __init__(self, total: Optional[int], desc: str = "", unit: str = "it",
                 stream: Optional[TextIO] = None, bar: Optional[bool] = None, initial: int = 0,
                 printer: Optional[Callable[[str], None]] = None, line_every: int = 1,
                 leave: bool = True):
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream if stream is not None else sys.stdout
        self.n, self.postfix, self.line_every = initial, "", max(0, line_every)
        self._printer = printer
        self._last_line = initial
        self._tqdm = None
        if (is_terminal(self.stream) if bar is None else bar):
            from tqdm import tqdm

            self._tqdm = tqdm(total=total, initial=initial, desc=desc or None, unit=unit,
                              file=self.stream, dynamic_ncols=True, leave=leave)

    @property
    def is_bar(self) -> bool:
        return self._tqdm is not None

    def _print(self, text: str) -> None:
        if self._printer is not None:
            self._printer(text)
        else:
            print(text, file=self.stream, flush=True)

    def status(self) -> str:
        """``<desc>: <unit> n/total  <postfix>``, the automatic plain line."""
        count = f"{self.n}/{self.total}" if self.total is not None else f"{self.n:,}"
        head = f"{self.desc}: " if self.desc else ""
        return f"{head}{self.unit} {count}" + (f"  {self.postfix}" if self.postfix else "")

    def update(self, n: int = 1, postfix: Optional[str] = None) -> None:
        """``n`` more units done; ``postfix`` (if given) replaces the bar's postfix."""
        self.n += n
        if postfix is not None:
            self.postfix = postfix
        if self._tqdm is not None:
            if postfix is not None:
                self._tqdm.set_postfix_str(postfix, refresh=False)
            self._tqdm.update(n)
        elif self.line_every and (self.n // self.line_every > self._last_line // self.line_every
                                  or (self.total is not None and self.n >= self.total)):
            self._last_line = self.n
            self._print(self.status())

    def write(self, text: str, postfix: Optional[str] = None) -> None:
        """A line above the bar (or a plain line); ``postfix`` updates the bar's."""
        if postfix is not None:
            self.postfix = postfix
        if self._tqdm is not None:
            if postfix is not None:
                self._tqdm.set_postfix_str(postfix, refresh=False)
            self._tqdm.write(text, file=self.stream)
        else:
            self._print(text)

    def close(self, summary: Optional[str] = None) -> None:
        """Ends the bar; without one, the last automatic line if the last update had
        none. ``summary`` (if given) is written as a last line."""
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
        elif self.line_every and self.n != self._last_line:
            self._last_line = self.n
            self._print(self.status())
        if summary:
            self._print(summary)

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
