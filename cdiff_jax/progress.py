"""What long runs tell the person waiting: log messages, progress bars, and the training line.

The library reports through the `logging` module (logger "cdiff_jax") and never prints; the
command-line entry points call `configure_logging` and print only their final results. The
interactive commands (sampling, editing, evaluation, dataset building) show a tqdm bar on a terminal;
training, whose output usually goes to a log file, writes one `ProgressLine` per interval instead.
On a multi-host run only process 0 shows either, so N hosts do not print N copies.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import TextIO

import jax
from tqdm import tqdm

log = logging.getLogger("cdiff_jax")


class _StderrHandler(logging.StreamHandler):
    """Writes to sys.stderr as it is at each message, so later redirections are honoured."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def configure_logging(level: int = logging.INFO) -> None:
    """Show the library's messages on stderr as plain lines (for the command-line entry points); below warnings,
    only the lead process's, so that a multi-host run says each thing once."""
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.addFilter(lambda record: record.levelno >= logging.WARNING or is_lead())
        log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


def is_lead() -> bool:
    """Whether this process reports progress: the first of a multi-host run, or the only one."""
    return jax.process_index() == 0


def bar(total, desc: str, unit: str = "step") -> tqdm:
    """A progress bar on stderr when it is a terminal (a log file gets no redrawn lines), on the lead
    process only. `total` is a count, None (unknown yet), or an iterable to wrap."""
    iterable, total = (None, total) if total is None or isinstance(total, int) else (total, None)
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        dynamic_ncols=True,
        leave=True,
        disable=None if is_lead() else True,
    )  # None: off unless stderr is a terminal


class SamplingBar:
    """A bar over one sampling call that says what the wait is for: "compiling" until the first
    compiled step reports, the steps with their rate, then "decoding" until the images are back.

    Call it as the sampler's step reporter, `reporter(done, total)`, and close it (or use `with`);
    several sampling calls in a row (e.g. an alpha sweep in chunks) restart the count.
    """

    def __init__(self, desc: str = "sampling"):
        self.desc = desc
        self._bar = bar(None, f"{desc}: compiling")

    def __call__(self, done: int, total: int) -> None:
        if self._bar.total != total or done <= self._bar.n:
            self._bar.reset(total)  # restarts the clock: compilation does not count in the rate
            self._bar.set_description_str(f"{self.desc}: steps", refresh=False)
        self._bar.update(done - self._bar.n)
        if done == total:
            self._bar.set_description_str(f"{self.desc}: decoding")

    def close(self) -> None:
        self._bar.set_description_str(f"{self.desc}: done", refresh=False)
        self._bar.close()

    def __enter__(self) -> SamplingBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def format_eta(seconds: float) -> str:
    """'42s', '12m05s', '3h58m', '2d03h': the two largest units, truncated, so the line stays short."""
    s = max(0, int(seconds))
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{s:02d}s"
    return f"{s}s"


class ProgressLine:
    """Writes `step 1200/50000  loss 0.0213  3.41 steps/s  27.3 ex/s  ETA 3h58m` at most every
    `every_seconds`, and always when `step` (the number of completed steps) reaches `total_steps`;
    on the lead process only.

    The first update only starts the clock, because the first step usually includes compilation.
    Rates are then measured over the interval since the previous line, so they and the ETA follow
    the current speed rather than a run average that still contains the compile time. One line per
    interval, not a redrawn bar, because training output usually goes to a log file.
    """

    def __init__(
        self,
        total_steps: int,
        every_seconds: float = 10.0,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total_steps = total_steps
        self.every_seconds = every_seconds
        self._stream = stream  # None: sys.stdout at write time, so redirections made later are honoured
        self._clock = clock
        self._last: tuple[float, int] | None = None  # (time, step) of the last line or of the first update
        self._enabled = is_lead()

    def update(self, step: int, scalars: Mapping[str, float], examples_per_step: int | None = None) -> None:
        if not self._enabled:
            return
        now, final = self._clock(), step >= self.total_steps
        if self._last is None and not final:
            self._last = (now, step)
            return
        if not final and now - self._last[0] < self.every_seconds:
            return
        parts = [f"step {step}/{self.total_steps}", *(f"{tag} {float(value):.4g}" for tag, value in scalars.items())]
        if self._last is not None and now > self._last[0] and step > self._last[1]:
            rate = (step - self._last[1]) / (now - self._last[0])
            parts.append(f"{rate:.2f} steps/s")
            if examples_per_step:
                parts.append(f"{rate * examples_per_step:.1f} ex/s")
            parts.append(f"ETA {format_eta((self.total_steps - step) / rate)}")
        stream = self._stream if self._stream is not None else sys.stdout
        stream.write("  ".join(parts) + "\n")
        stream.flush()
        self._last = (now, step)
