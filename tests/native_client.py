"""A plain Celery client, as another team's service would write it.

Imports nothing from Switchyard: run as ``python tests/native_client.py URL SPEC``,
SPEC a JSON object of ``send_task`` options: ``task``, ``task_id``, ``routing_key``,
and optionally ``args``, ``kwargs``, ``priority``, ``countdown``, ``headers``,
``link`` / ``link_error`` (``{"task", "args", "immutable"}``) and ``user_id`` (default:
URL's user, the only value RabbitMQ accepts; ``""`` for none). It logs in with URL's
user. Prints nothing; exit 0 once the broker confirmed the message, 1 with the error
on stderr if the broker refused it.
"""
from __future__ import annotations

import json
import sys
import urllib.parse

from celery import Celery

url, spec = sys.argv[1], json.loads(sys.argv[2])
user_id = spec.pop("user_id", urllib.parse.unquote(urllib.parse.urlsplit(url).username or ""))
app = Celery("native-client", broker=url)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    broker_transport_options={"confirm_publish": True},
    task_send_sent_event=False,
)
options = {k: v for k, v in spec.items() if k not in ("task", "link", "link_error")}
for field in ("link", "link_error"):
    if field in spec:
        linked = spec[field]
        make = app.signature(linked["task"], args=linked.get("args", ()),
                             immutable=linked.get("immutable", False))
        options[field] = make
if user_id:
    options["user_id"] = user_id
try:
    app.send_task(
        spec["task"],
        exchange="tasks",
        exchange_type="topic",
        declare=[],  # the topology belongs to Switchyard; a client declares nothing
        retry=False,
        **options,
    )
except Exception as exc:  # the broker refused: say so, as a caller would see it
    print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
    sys.exit(1)
