"""Call Switchyard's tasks with Celery's own API.

::

    import switchyard_client

    app = switchyard_client.connect(
        "amqp://tenant-acme:PASSWORD@rabbitmq:5672/", api_url="http://switchyard:8000",
        token="sy_...")
    result = app.signature("demo.quick_task").delay(42)
    result.get(timeout=30)   # 42, read from GET /api/v1/jobs/{id}

See client/README.md. Depends on Celery only, never on the platform.
"""
from __future__ import annotations

from ._version import __version__
from .app import SwitchyardApp, connect
from .backend import JobBackend
from .catalogue import Catalogue, TaskRoute
from .errors import (
    ApiError,
    CatalogueError,
    ConfigurationError,
    JobCancelled,
    JobDead,
    JobError,
    JobExpired,
    JobFailed,
    JobRetrying,
    SwitchyardError,
    UnknownTask,
)
from .remote import RemoteTask

__all__ = [
    "ApiError",
    "Catalogue",
    "CatalogueError",
    "ConfigurationError",
    "JobBackend",
    "JobCancelled",
    "JobDead",
    "JobError",
    "JobExpired",
    "JobFailed",
    "JobRetrying",
    "RemoteTask",
    "SwitchyardApp",
    "SwitchyardError",
    "TaskRoute",
    "UnknownTask",
    "__version__",
    "connect",
]
