"""A plain Celery client, as another team's service would write it.

Imports nothing from Switchyard: run as ``python tests/native_client.py URL
TASK ROUTING_KEY TENANT PRIORITY TASK_ID KWARGS_JSON``. Prints nothing; exit 0
once the broker confirmed the message.
"""
from __future__ import annotations

import json
import sys

from celery import Celery

url, task, routing_key, tenant, priority, task_id, kwargs = sys.argv[1:8]
app = Celery("native-client", broker=url)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    broker_transport_options={"confirm_publish": True},
)
app.send_task(
    task,
    kwargs=json.loads(kwargs),
    task_id=task_id,
    exchange="tasks",
    exchange_type="topic",
    routing_key=routing_key,
    headers={"tenant": tenant},
    priority=int(priority),
    declare=[],  # the topology belongs to Switchyard; a client declares nothing
)
