"""Web: gunicorn's own log lines (start, workers, access) as JSON, for
``SWITCHYARD_LOG_FORMAT=json``; ``deploy/bin/web`` names this logger class then.

gunicorn logs through loggers of its own (``gunicorn.error``, ``gunicorn.access``) with its
own formatters, not through Django's ``LOGGING``; this puts ``switchyard.logs``' JSON
formatter on the handlers it sets up. An access line's message is gunicorn's access format.
"""
from __future__ import annotations

from gunicorn.glogging import Logger

from switchyard.logs import JobContextFilter, JsonFormatter


class JsonLogger(Logger):
    def setup(self, cfg) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(JsonFormatter())
                if not any(isinstance(f, JobContextFilter) for f in handler.filters):
                    handler.addFilter(JobContextFilter())
