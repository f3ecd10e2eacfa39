"""recommender/logs.py: the JSON line a record becomes (the real processes' log: tests/test_server_process.py)."""

from __future__ import annotations

import json
import logging

from recommender.logs import JsonLines


def _record(level: int, message: str, *args, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("recommender.serving", level, __file__, 1, message, args, exc_info)


def test_a_record_is_one_json_line_with_severity_message_logger_and_utc_time():
    record = _record(logging.INFO, "model for %s swapped: %s -> %s", "shop", "v1", "v2")
    record.created = 86400.25  # 1970-01-02 00:00:00.25 UTC
    line = JsonLines().format(record)
    assert "\n" not in line
    assert json.loads(line) == {"severity": "INFO", "message": "model for shop swapped: v1 -> v2",
                                "logger": "recommender.serving", "time": "1970-01-02T00:00:00.250000Z"}


def test_an_exception_keeps_its_traceback_inside_the_message():
    try:
        raise ValueError("bad bytes")
    except ValueError:
        import sys

        record = _record(logging.ERROR, "model refresh for %s failed", "shop", exc_info=sys.exc_info())
    entry = json.loads(JsonLines().format(record))
    assert entry["severity"] == "ERROR"
    first, *rest = entry["message"].split("\n")
    assert first == "model refresh for shop failed"
    assert rest[0] == "Traceback (most recent call last):" and rest[-1] == "ValueError: bad bytes"
