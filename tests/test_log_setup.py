"""serve's log lines: the time formatted once a second reads exactly as logging's own default time."""

from __future__ import annotations

import logging

from ruststash.log_setup import FORMAT, SecondsOnceFormatter


def record_at(created: float) -> logging.LogRecord:
    record = logging.LogRecord("ruststash.access", logging.INFO, __file__, 1, "method=GET", None, None)
    record.created, record.msecs = created, (created - int(created)) * 1000
    return record


def test_lines_read_as_logging_formats_them_within_a_second_and_across_seconds() -> None:
    ours, standard = SecondsOnceFormatter(FORMAT), logging.Formatter(FORMAT)
    for created in (1_765_000_000.001, 1_765_000_000.999, 1_765_000_001.5, 1_765_000_001.0, 1_765_003_601.25):
        assert ours.format(record_at(created)) == standard.format(record_at(created))
