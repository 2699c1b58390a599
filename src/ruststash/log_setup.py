"""How `serve` logs: one line per record on stderr, `time LEVEL logger: message`, cheap enough to run once
per request (the access log).

Left out of every record, as the logging HOWTO's "Optimization" section describes: the caller's file and
line, the thread, the process and the asyncio task, which the format never shows. The time of day is
formatted once a second, not once a record."""

from __future__ import annotations

import logging
import sys
import time

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Kept at WARNING unless the level asked for is higher: they log a line per connection or per request.
NOISY = ("mitmproxy", "aiohttp.access", "asyncio")


class SecondsOnceFormatter(logging.Formatter):
    """logging.Formatter's default time (`2026-12-07 14:51:53,443`), its seconds formatted once a second."""

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self._second: int | None = None
        self._seconds_text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._seconds_text = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(record.created))
            self._second = second
        return f"{self._seconds_text},{int(record.msecs):03d}"


def setup(level: str) -> None:
    logging._srcfile = None  # no caller lookup (HOWTO, "Optimization")
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging.logAsyncioTasks = False  # type: ignore[attr-defined]  # Python 3.12+, not in typeshed yet
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SecondsOnceFormatter(FORMAT))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
