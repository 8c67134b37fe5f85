"""The validator's logs: one line per event, human-readable text or JSON lines.

Events that matter (a view change, a round closed, an update rejected and why) are
logged with their facts as ``extra`` fields; the JSON format writes those fields out,
so a log shipper can read ``event``, ``round`` and the rest without parsing prose.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import threading
from datetime import UTC, datetime

CAPTURE_DRAIN_S = 5.0
LOG_FORMATS = ("text", "json")
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}
"""Attributes of every log record; any other was passed as an ``extra`` field."""
_ABSL_LEVEL = re.compile(r"([IWEF])\d{4} ")
_ABSL_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR,
                "F": logging.CRITICAL}


class _JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the
    record's ``extra`` fields (an event's facts: ``event``, ``round``, ...) and, if any,
    the exception."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(
                    timespec="milliseconds"),
                "level": record.levelname, "logger": record.name,
                "message": record.getMessage()}
        line.update((k, _json_number(v)) for k, v in vars(record).items()
                    if k not in _RECORD_FIELDS and k not in line)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def _json_number(value: object) -> object:
    """JSON has no infinity or NaN (a loss can be either): those become strings."""
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value


class _CapturedStderr:
    """Lines written to file descriptor 2 without going through logging, logged instead.

    The evaluator worker inherits the descriptor, and TensorFlow's C++ runtime writes
    plain lines to it that no setting silences; a library may print a warning. With JSON
    logs every line on stderr must be one JSON object, so descriptor 2 becomes a pipe
    whose lines a thread logs as records of ``flobc.stderr`` (at the level of an absl
    ``I0000``-style prefix, else WARNING), and the log handler writes to the real stderr.
    """

    _END = b"\x00flobc: end of captured stderr\n"

    def __init__(self) -> None:
        sys.stderr.flush()
        self.stream = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8",
                                errors="replace")
        """The real stderr."""
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self._thread = threading.Thread(target=self._forward, args=(read,),
                                        name="flobc-stderr", daemon=True)
        self._thread.start()

    def _forward(self, read: int) -> None:
        logger = logging.getLogger("flobc.stderr")
        with os.fdopen(read, "rb") as pipe:
            for raw in pipe:
                last = raw.endswith(self._END)
                line = raw.removesuffix(self._END).decode(errors="replace").rstrip()
                if line:
                    found = _ABSL_LEVEL.match(line)
                    logger.log(_ABSL_LEVELS[found[1]] if found else logging.WARNING, "%s", line)
                if last:
                    return

    def close(self) -> None:
        """Log what was written so far, then give descriptor 2 back to the real stderr."""
        sys.stderr.flush()
        if self._thread.is_alive():
            os.write(2, self._END)
            self._thread.join(CAPTURE_DRAIN_S)
        os.dup2(self.stream.fileno(), 2)


class _JsonHandler(logging.StreamHandler):
    """Writes to the real stderr. A record that cannot be written there (the reader of
    a piped stderr went away) is dropped: reporting it would write to descriptor 2,
    whose lines come back here as records, and loop."""

    def handleError(self, record: logging.LogRecord) -> None:
        return


def configure_logging(log_format: str) -> _CapturedStderr | None:
    """Log to stderr at INFO, as text or as JSON lines; in JSON mode, return the capture
    of stderr (close it last)."""
    captured = _CapturedStderr() if log_format == "json" else None
    handler = _JsonHandler(captured.stream) if captured else logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if captured else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    logging.captureWarnings(True)
    return captured
