"""Logging for weir's long-running commands: to stderr, every record redacted."""

from __future__ import annotations

import logging

from weir.core.config import WeirSettings

__all__ = ["configure_logging"]

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(settings: WeirSettings, level: str) -> None:
    """Log at ``level`` to stderr through a filter that redacts each record.

    Log lines quote exceptions, and exceptions quote user data and connection
    strings: the filter takes PII, URL passwords and every secret value resolved
    in this process out of messages, arguments and tracebacks, whichever
    logger (weir's or a library's) wrote them.
    """
    from weir.core.secrets import scrub
    from weir.streams.redaction import Redactor, install_log_redaction

    logging.basicConfig(level=level.upper(), format=FORMAT)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    install_log_redaction(Redactor.from_settings(settings), scrub=scrub)
