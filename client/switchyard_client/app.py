"""``connect()``: a Celery app that calls Switchyard's tasks.

What the app is configured with, and why:

* JSON only, for tasks and results: the platform accepts nothing else.
* Publisher confirms (``confirm_publish``): ``delay()`` returns once the broker
  has the message.
* Nothing declared (no queue, no exchange, no event or reply queue): the tenant's
  broker user may only publish to ``tasks``, with its own tier's routing keys.
  ``task_create_missing_queues`` is off and the router sends no ``queue``.
* No ``task-sent`` events; results come from the job API (``JobBackend``), never
  from a reply queue.
* The catalogue (``GET /api/v1/tasks``) decides each message's exchange and routing
  key and the tier's priority band (``switchyard_client.amqp``).
"""
from __future__ import annotations

from typing import Any

from celery import Celery

from .amqp import SwitchyardAMQP
from .api import Api
from .catalogue import Catalogue
from .errors import ConfigurationError
from .remote import RemoteTask

#: Settings ``connect()`` fixes: overriding one would break the contract with the platform.
FIXED_SETTINGS: dict[str, Any] = {
    "task_serializer": "json",
    "accept_content": ["json"],
    "result_serializer": "json",
    "result_accept_content": ["json"],
    "event_serializer": "json",
    "task_create_missing_queues": False,
    "task_send_sent_event": False,
    "task_routes": None,
    "task_queues": None,
}
#: Where JobBackend lives (``result_backend``); it takes the API from the app.
BACKEND = "switchyard_client.backend:JobBackend"


class SwitchyardApp(Celery):
    """A ``celery.Celery`` whose messages go where Switchyard's catalogue says.

    ``catalogue`` is this tenant's catalogue; ``remote_task(name)`` a stand-in to call
    a task by name (``.delay``, ``.apply_async``, ``.s``).
    """

    amqp_cls = SwitchyardAMQP

    def __init__(self, main: str | None = None, *, broker_url: str, api: Api,
                 catalogue_ttl: float = 60.0, backend: Any = None, **kwargs: Any) -> None:
        self.switchyard_api = api
        self.catalogue = Catalogue(api, ttl=catalogue_ttl)
        self._switchyard_broker_url = broker_url
        super().__init__(main, broker=broker_url, backend=backend, **kwargs)
        # Celery prefers backend_cls to the result_backend setting, which
        # CELERY_RESULT_BACKEND in the environment would override.
        self.backend_cls = backend or BACKEND

    # Celery lets CELERY_BROKER_URL (and _READ_/_WRITE_) in the environment override the
    # configured broker; a service running its own Celery app has it set for that app.
    # This app publishes as the tenant's broker user, always: the URL given to connect().
    def connection_for_write(self, url=None, **kwargs):
        return self._connection(url or self._switchyard_broker_url, **kwargs)

    def connection_for_read(self, url=None, **kwargs):
        return self._connection(url or self._switchyard_broker_url, **kwargs)

    def remote_task(self, name: str) -> RemoteTask:
        return RemoteTask(self, name)


def connect(broker_url: str, *, api_url: str, token: str, catalogue_ttl: float = 60.0,
            api_timeout: float = 10.0, main: str = "switchyard-client",
            **celery_conf: Any) -> SwitchyardApp:
    """A Celery app publishing to Switchyard as the tenant of ``token``.

    ``broker_url`` is the tenant's AMQP URL (``manage.py tenant_broker_user NAME``
    prints it); ``api_url`` the platform's URL (``http://switchyard:8000``);
    ``token`` the tenant's API token. ``catalogue_ttl`` (seconds) is how long the task
    catalogue is kept; ``api_timeout`` (seconds) bounds each API request. Any other
    keyword is a Celery setting (``broker_pool_limit=20``), except those the
    contract fixes (``FIXED_SETTINGS``): passing one raises ``ConfigurationError``.

    Nothing is contacted until the first publish (or ``get()``).
    """
    if not broker_url or not isinstance(broker_url, str):
        raise ConfigurationError("broker_url must be the tenant's AMQP URL "
                                 "(manage.py tenant_broker_user NAME prints it)")
    fixed = sorted(set(celery_conf) & set(FIXED_SETTINGS))
    if fixed:
        raise ConfigurationError(f"switchyard_client sets {', '.join(fixed)} itself: "
                                 "the platform accepts JSON messages routed by its catalogue")
    transport_options = dict(celery_conf.pop("broker_transport_options", None) or {})
    if transport_options.get("confirm_publish") is False:
        raise ConfigurationError("publisher confirms cannot be turned off: without them a "
                                 "message may be lost with no error")
    transport_options["confirm_publish"] = True

    api = Api(api_url, token, timeout=api_timeout)
    backend = celery_conf.pop("result_backend", None) or BACKEND
    # Not the process's current app: a service may have its own Celery app beside this one.
    app = SwitchyardApp(main, broker_url=broker_url, api=api, catalogue_ttl=catalogue_ttl,
                        backend=backend, set_as_current=False)
    app.conf.update(celery_conf, **FIXED_SETTINGS, broker_transport_options=transport_options,
                    result_backend=backend, switchyard_api_url=api.base_url)
    return app
