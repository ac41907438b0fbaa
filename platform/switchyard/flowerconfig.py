"""Flower's configuration (``celery flower --conf=switchyard/flowerconfig.py``).

Every value from the environment; authentication is required, and the number
of tasks Flower keeps in memory is bounded (its default of 100,000 grows
without end on a busy platform, flower #1305).
"""
from __future__ import annotations

import os

from routing.access import PLACEHOLDER_PREFIX
from routing.management import broker_url, management_url_for

address = os.environ.get("FLOWER_ADDRESS", "127.0.0.1")
port = int(os.environ.get("FLOWER_PORT", "5555"))

#: Shortest Flower password accepted (``make .env`` writes 16 random characters).
MIN_PASSWORD_LENGTH = 12

_auth = os.environ.get("FLOWER_BASIC_AUTH", "")
if ":" not in _auth or _auth.endswith(":"):
    raise SystemExit("FLOWER_BASIC_AUTH must be set to user:password (Flower never runs open)")
_password = _auth.split(":", 1)[1]
if _password.startswith(PLACEHOLDER_PREFIX) or len(_password) < MIN_PASSWORD_LENGTH:
    # admin:change-me from a hand-copied .env.example would be anyone's login.
    raise SystemExit(f"FLOWER_BASIC_AUTH must be set to user:password with a password of at "
                     f"least {MIN_PASSWORD_LENGTH} characters, not the .env.example placeholder")
basic_auth = [_auth]

# Queue lengths on Flower's Broker page come from RabbitMQ's management API.
broker_api = os.environ.get("FLOWER_BROKER_API") or management_url_for(broker_url()) + "/api/"
# The Tasks page's columns: Flower's, with each task's lane, tier and tenant
# (monitoring/flower_tasks.py).
tasks_columns = os.environ.get("FLOWER_TASKS_COLUMNS",
                               "name,uuid,state,lane,tier,tenant,received,runtime,worker")
max_tasks = int(os.environ.get("FLOWER_MAX_TASKS", "10000"))
persistent = False
purge_offline_workers = 300
