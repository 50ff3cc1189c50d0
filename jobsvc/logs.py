"""Structured logs: structlog renders the records of the standard ``logging`` module.

The service logs through plain ``logging`` (``logging.getLogger("jobsvc...")``, fields as
``extra=``); :func:`configure_logging` puts one handler on the root logger whose structlog
``ProcessorFormatter`` turns every record, jobsvc's and the libraries' alike, into

* one JSON object per line (``json``; the default when stderr is not a terminal), or
* a readable ``key=value`` line (``console``; the default on a terminal).

Each line carries ``timestamp`` (ISO 8601, UTC), ``level``, ``logger``, ``event`` (the
message), the record's ``extra`` fields, and ``request_id`` while a request is being
served (bound by :mod:`jobsvc.middleware` in the context). Code that prefers structlog's
own API can use ``structlog.get_logger()``: it goes through the same handler.

Every line is safe to read and to parse, whatever a value holds: each string is cut to
``MAX_VALUE`` characters (a traceback to ``MAX_EXCEPTION``), so a 250 kB error message
does not become a 250 kB line; JSON escapes every control character (and everything not
ASCII); the console renderer gets control, format and separator characters escaped
(``\\n``, ``\\x1b``, ``\\u2028``), so a value can neither start a forged line nor move
the cursor, and a traceback's lines are indented under the line that carries it.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterable
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from .config import LOG_FORMATS

__all__ = ["LOG_FORMATS", "MAX_EXCEPTION", "MAX_VALUE", "configure_logging", "escape"]

#: Longest string value written (characters); longer ones are cut with a note of the rest.
MAX_VALUE = 2048
#: Longest traceback written (its head and its tail are kept).
MAX_EXCEPTION = 16384
#: Longest key, and most items of a list or dict value.
MAX_KEY = 100
MAX_ITEMS = 50
#: Loggers of libraries that add a plain-text handler of their own (hypercorn's CLI does,
#: when it first logs, after the ASGI lifespan set logging up): their records are sent to
#: the root handler only, so they come out in the same format, and once.
REROUTED = ("hypercorn.error",)

_FIRST = ("timestamp", "level", "logger", "event")
#: Attributes every LogRecord has (plus what formatters add to it): not ``extra`` fields.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
_MARK = "_jobsvc_log_handler"


def escape(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every non-printable character (controls, format characters, line and
    paragraph separators, lone surrogates...) written as a Python escape (``\\x1b``)."""
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() or (keep_newlines and c == "\n") else c.encode("unicode_escape", "backslashreplace").decode("ascii")
        for c in text
    )


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[{len(text) - limit} more characters]"


def _cut_traceback(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    head = limit // 4
    tail = limit - head
    return f"{text[:head]}\n...[{len(text) - limit} characters left out]...\n{text[-tail:]}"


def _repr(value: object) -> str:
    try:
        return repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not lose the log line
        return f"<{type(value).__name__} object>"


def _add_extra(logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
    """The ``extra=`` fields of a standard-logging record (they win over the context's)."""
    record = event_dict.get("_record")
    if record is not None:
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_") and key != "event":
                event_dict[key] = value
    return event_dict


class _Bound:
    """The last processor before the renderer: bounds and (for the console) escapes
    every key and value, and puts the common keys first."""

    def __init__(self, *, console: bool) -> None:
        self.console = console

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
        out: EventDict = {key: None for key in _FIRST if key in event_dict}
        console = self.console
        for key, value in event_dict.items():
            if type(key) is not str or len(key) > MAX_KEY or (console and not key.isprintable()):
                key = self._text(str(key), MAX_KEY)
            if type(value) is str and len(value) <= MAX_VALUE and (not console or value.isprintable()):
                out[key] = value  # the common case, first
            elif key == "exception" and isinstance(value, str):
                out[key] = self._traceback(value)
            else:
                out[key] = self._value(value, 0)
        return out

    def _text(self, text: str, limit: int) -> str:
        text = _cut(text, limit)
        return escape(text) if self.console else text

    def _traceback(self, text: str) -> str:
        text = _cut_traceback(text.rstrip("\n"), MAX_EXCEPTION)
        if not self.console:
            return text
        return "\n".join("    " + line for line in escape(text, keep_newlines=True).split("\n"))

    def _value(self, value: Any, depth: int) -> Any:
        if value is None or isinstance(value, bool | int):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else str(value)
        if isinstance(value, str):
            return self._text(value, MAX_VALUE)
        if depth < 3 and isinstance(value, list | tuple):
            return [self._value(v, depth + 1) for v in value[:MAX_ITEMS]]
        if depth < 3 and isinstance(value, dict):
            return {self._text(str(k), MAX_KEY): self._value(v, depth + 1) for k, v in list(value.items())[:MAX_ITEMS]}
        return self._text(_repr(value), MAX_VALUE)


class _Reroute(logging.Filter):
    """On a library logger: hand each record to the root logger's handlers instead of the
    library's own (which then never see it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        logging.getLogger().handle(record)
        return False


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to ``sys.stderr`` as it is at each record (something may replace it later,
    as pytest's capture does), not as it was when logging was set up."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def configure_logging(level: str = "info", fmt: str = "auto", *, stream: TextIO | None = None, rerouted: Iterable[str] = REROUTED) -> str:
    """Send every log record to ``stream`` (stderr) as JSON lines or console lines, at
    ``level`` and above; returns the format chosen ("json" or "console"). Calling it again
    replaces what an earlier call installed (and nothing else)."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
    handler = _StderrHandler() if stream is None else logging.StreamHandler(stream)
    stream = stream or sys.stderr
    console = fmt == "console" or (fmt == "auto" and _is_terminal(stream))
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    renderer: Processor = (
        structlog.dev.ConsoleRenderer(colors=_is_terminal(stream), exception_formatter=structlog.dev.plain_traceback)
        if console
        else structlog.processors.JSONRenderer()
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            _add_extra,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            timestamper,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _Bound(console=console),
            renderer,
        ],
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.filter_by_level,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.PositionalArgumentsFormatter(),
            timestamper,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler.setFormatter(formatter)
    setattr(handler, _MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in rerouted:
        library = logging.getLogger(name)
        if not any(isinstance(f, _Reroute) for f in library.filters):
            library.addFilter(_Reroute())
    return "console" if console else "json"
