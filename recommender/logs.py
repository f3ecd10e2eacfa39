"""Where the instance's log lines go: one JSON object per line on stderr, which Cloud Logging reads as a
structured entry (its `severity` and `message` fields), at the level LOG_LEVEL names (default INFO).

Without this, functions-framework leaves Python's root logger without a handler (or, with LOG_EXECUTION_ID
set, with one at WARNING), and the INFO lines an operator needs (a shop uninstalled, a customer's events
redacted, a new model published or swapped in) are dropped. Importing numpy is not needed here: main.py calls
`configure` before anything else starts logging.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Mapping

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT_LEVEL = "INFO"
OUR_LOGGERS = ("main", "recommender", "webhooks")  # every logger of ours is one of these or a child of one


class JsonLines(logging.Formatter):
    """A record as one line of JSON: severity, message (with the traceback, if any), logger and time (UTC)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message = f"{message}\n{self.formatException(record.exc_info)}"
        moment = datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="microseconds")
        return json.dumps({"severity": record.levelname, "message": message, "logger": record.name,
                           "time": moment.replace("+00:00", "Z")}, ensure_ascii=False)


def configure(env: Mapping[str, str], stream=None) -> str:
    """Set our loggers to LOG_LEVEL and, if nothing handles the root logger yet, write its records to stderr as
    JSON lines. A handler already there (functions-framework's with LOG_EXECUTION_ID, a test runner's, an
    embedding application's) is kept and receives our records instead, so no line is written twice.
    Returns the level used; an unknown LOG_LEVEL is reported (a WARNING line naming it) and INFO used."""
    raw = (env.get("LOG_LEVEL") or DEFAULT_LEVEL).strip().upper()
    level = raw if raw in LEVELS else DEFAULT_LEVEL
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
        handler.setFormatter(JsonLines())
        root.addHandler(handler)
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(level)
    if raw != level:
        logging.getLogger("main").warning("LOG_LEVEL=%r is not one of %s; logging at %s", env.get("LOG_LEVEL"),
                                          ", ".join(LEVELS), DEFAULT_LEVEL)
    return level
