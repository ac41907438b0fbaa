"""Test settings: each test run gets its own RabbitMQ vhost and its own database.

The run id is set once per run (and inherited by worker processes the tests
start), so two runs on one machine never see each other's messages or rows.
"""
from __future__ import annotations

import os
import secrets

from routing.management import with_vhost

from .base import *  # noqa: F403
from .base import (
    CELERY_BROKER_URL,
    DATABASES,
    INSTALLED_APPS,
    SWITCHYARD_PLATFORM_BROKER_USERS,
    VAR_DIR,
)

TEST_RUN_ID = os.environ.setdefault(
    "SWITCHYARD_TEST_RUN_ID", f"{os.getpid()}-{secrets.token_hex(3)}"
)
TEST_VHOST = f"switchyard-test-{TEST_RUN_ID}"
CELERY_BROKER_URL = with_vhost(CELERY_BROKER_URL, TEST_VHOST)
# RabbitMQ users are node-wide, not per vhost: tenants' broker users of this run get
# names of their own (and tests/conftest.py deletes them at the end).
SWITCHYARD_BROKER_USER_PREFIX = f"tenant-{TEST_RUN_ID}-"
os.environ["SWITCHYARD_BROKER_USER_PREFIX"] = SWITCHYARD_BROKER_USER_PREFIX
# The tests submit jobs from this process (as guest); roles they start logged in as
# other users must count it as the platform's.
os.environ["SWITCHYARD_PLATFORM_BROKER_USERS"] = ",".join(sorted(SWITCHYARD_PLATFORM_BROKER_USERS))

_db_test_name = f"test_switchyard_{TEST_RUN_ID.replace('-', '_')}"
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # A file, not memory: worker processes started by the tests must see it.
    _db_test_name = str(VAR_DIR / f"{_db_test_name}.sqlite3")
DATABASES["default"]["TEST"] = {"NAME": _db_test_name}

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Media files of this run, shared with the worker processes the tests start
# (they read the same variables through the base settings).
_media_dir = VAR_DIR / "test-media" / TEST_RUN_ID
SWITCHYARD_MEDIA_ROOT = _media_dir / "storage"
SWITCHYARD_MEDIA_IMPORT_ROOT = _media_dir / "import"
os.environ["SWITCHYARD_MEDIA_ROOT"] = str(SWITCHYARD_MEDIA_ROOT)
os.environ["SWITCHYARD_MEDIA_IMPORT_ROOT"] = str(SWITCHYARD_MEDIA_IMPORT_ROOT)
STORAGES["media"]["OPTIONS"] = {"location": str(SWITCHYARD_MEDIA_ROOT),  # noqa: F405
                                "allow_overwrite": True}

# Quota tests write jobs behind the service's back and expect exact counts.
SWITCHYARD_QUOTA_COUNT_TTL = 0.0
# Each in-process scrape reads the gauges afresh (tests/test_monitoring.py tests the cache).
SWITCHYARD_METRICS_CACHE_SECONDS = 0.0
# ... and each load of the landing page checks afresh (tests/test_home.py tests the cache).
SWITCHYARD_HOME_HEALTH_SECONDS = 0.0

# The tests submit demo tasks (demo.quick_task, the drills' demo.witness). Worker processes
# they start run the base settings and get SWITCHYARD_DEMO_TASKS=1 from tests.processes.role_env.
SWITCHYARD_DEMO_TASKS = True
if "demo" not in INSTALLED_APPS:
    INSTALLED_APPS = [*INSTALLED_APPS, "demo"]
