"""Base settings. Every value an operator may change comes from the environment.
Size: the settings Django reads as one namespace; each value sits beside the comment that
says why it is what it is, and production.py and test.py override by name. The media
settings are in ``media.py`` and the environment readers in ``environment.py``.

See docs/operations.md for the reference of each variable (a test keeps it complete).
"""
from __future__ import annotations

import os
from pathlib import Path

import dj_database_url

import routing.celery_config as routing_celery
from routing import access as _access
from routing import topology as _topology
from routing.management import DEFAULT_BROKER_URL
from routing.topology import DEFAULT_CONSUMER_TIMEOUT_MS
from switchyard import logs as _logs
from switchyard.settings.environment import (  # noqa: F401 - settings read by name
    PROJECT_DIR,
    REPO_DIR,
    VAR_DIR,
    env_bool,
    env_int,
)

# Django's development default is refused in production settings (see production.py).
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "switchyard-development-only-not-secret")
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = [
    h for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h
]

# The demo and drill tasks of platform/demo (demo.slow_task, demo.witness, demo.poison...):
# any tenant could submit them, so they are installed only where this is on: `make run`
# (.env.example) and the tests, never production (production.py refuses it).
# docs/operations.md#django, docs/security.md
SWITCHYARD_DEMO_TASKS = env_bool("SWITCHYARD_DEMO_TASKS", False)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    # Swagger UI and Redoc as pinned static files, served by the platform (never a CDN).
    "drf_spectacular_sidecar",
    "tenants",
    "jobs",
    "schedules",
    "media",
    *(["demo"] if SWITCHYARD_DEMO_TASKS else []),
    "monitoring",
    "home",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Per-endpoint body limits (SWITCHYARD_MAX_BODY_BYTES, SWITCHYARD_MAX_BATCH_BODY_BYTES).
    "switchyard.middleware.BodyLimitMiddleware",
    # A database that cannot answer in time: 503 with Retry-After, never a 500.
    "switchyard.middleware.DatabaseUnavailableMiddleware",
    # Serves collected static files (the admin's) from gunicorn, in make run and in the image.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "switchyard.urls"
WSGI_APPLICATION = "switchyard.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# SQLite when DATABASE_URL is unset (a laptop's `make run`); PostgreSQL in CI and production.
# https://github.com/jazzband/dj-database-url
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'switchyard.sqlite3'}",
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
}
# Seconds a statement waits for SQLite's write lock before "database is locked".
SQLITE_BUSY_TIMEOUT = 5.0
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # One file written by every role at once (gunicorn's processes, both lanes' workers,
    # the dispatcher): docs/reliability.md ("The embedded default") and
    # https://docs.djangoproject.com/en/5.2/ref/databases/#sqlite-notes.
    # - IMMEDIATE: each transaction takes the write lock at BEGIN, where SQLite waits
    #   for it (the busy timeout). A deferred one that reads, then writes, is refused
    #   "database is locked" at once when another writer is in, whatever the timeout:
    #   job_submit (quotas read, then INSERT) and the dispatcher's passes do exactly that.
    # - timeout: seconds a statement waits for the lock before "database is locked",
    #   which the API answers 503 with Retry-After (switchyard.api_errors). Well under
    #   gunicorn's 30 s; a transaction here holds the lock for milliseconds.
    # - WAL: readers never wait for the writer, nor the writer for readers (API reads,
    #   the dispatcher's scans). synchronous=NORMAL is WAL's recommended level: a crash
    #   of any process loses nothing; a power cut may lose the last commits.
    DATABASES["default"]["OPTIONS"] = {
        **DATABASES["default"].get("OPTIONS", {}),
        "transaction_mode": "IMMEDIATE",
        "timeout": SQLITE_BUSY_TIMEOUT,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"

REST_FRAMEWORK = {
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # DRF's JSON parser, with any nesting depth a 400 rather than a 500 (switchyard.parsers).
    "DEFAULT_PARSER_CLASSES": ["switchyard.parsers.JSONParser"],
    "DEFAULT_AUTHENTICATION_CLASSES": ["tenants.authentication.TenantTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "switchyard.openapi.SwitchyardAutoSchema",
    "EXCEPTION_HANDLER": "switchyard.api_errors.api_exception_handler",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Switchyard API",
    "DESCRIPTION": "Submit, track and cancel jobs on Switchyard's priority lanes.",
    "VERSION": "1",
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    # Jobs and batches both have a `status`, from different sets of values.
    "ENUM_NAME_OVERRIDES": {"JobStatusEnum": "jobs.models.Job.Status",
                            "BatchStatusEnum": "jobs.serializers.BATCH_STATUSES",
                            "WorkflowStatusEnum": "jobs.models.Workflow.Status"},
    # /api/docs/ (Swagger UI) and /api/redoc/ load their scripts from drf-spectacular-sidecar's
    # static files (pinned in requirements.txt), never from a CDN: the docs work offline and
    # show the version that was tested. https://drf-spectacular.readthedocs.io/en/latest/settings.html
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}
# Largest request body accepted (bytes); larger is 400 naming the limit
# (switchyard.middleware). Batches have their own, larger limit.
SWITCHYARD_MAX_BODY_BYTES = env_int("SWITCHYARD_MAX_BODY_BYTES", 1024 * 1024)
SWITCHYARD_MAX_BATCH_BODY_BYTES = env_int("SWITCHYARD_MAX_BATCH_BODY_BYTES", 64 * 1024 * 1024)
SWITCHYARD_MAX_BATCH_ITEMS = env_int("SWITCHYARD_MAX_BATCH_ITEMS", 100_000)
SWITCHYARD_MAX_BULK_JOBS = env_int("SWITCHYARD_MAX_BULK_JOBS", 10_000)
# Largest memory (bytes) parsing one JSON body may take, estimated on its bytes before
# parsing (switchyard.json_cost): over it, 400 naming `body`. From the web pod
# (deploy/k8s/web.yaml): (768 MiB - ~25 MiB for gunicorn's arbiter) / WEB_WORKERS 2
# - ~90 MiB for a worker at rest = 281 MiB a request may take; 192 MiB leaves about
# 90 MiB for the view's own work. A 64 MiB batch of ASCII text fits with up to
# 700,000 values and keys; 100,000 items of up to 400 bytes fit. docs/security.md
SWITCHYARD_MAX_JSON_MEMORY_BYTES = env_int("SWITCHYARD_MAX_JSON_MEMORY_BYTES",
                                           192 * 1024 * 1024)
# Seconds a tenant's quota counts are reused by a process before they are read
# again (each read scans the tenant's waiting jobs); 0 reads them every time.
SWITCHYARD_QUOTA_COUNT_TTL = float(os.environ.get("SWITCHYARD_QUOTA_COUNT_TTL") or 1.0)
# Schedules (docs/schedules.md): a fire time seen more than this many seconds late was
# missed (no dispatcher ran), and its schedule's catch_up decides whether it runs.
SWITCHYARD_SCHEDULE_GRACE = float(os.environ.get("SWITCHYARD_SCHEDULE_GRACE") or 60)
# Django's own backstop (a body without Content-Length); the middleware is stricter.
DATA_UPLOAD_MAX_MEMORY_SIZE = max(SWITCHYARD_MAX_BODY_BYTES, SWITCHYARD_MAX_BATCH_BODY_BYTES)

# Media (docs/media.md): its own module, read here.
from switchyard.settings.media import *  # noqa: E402, F403

# Observability (docs/monitoring.md). Every process of a host records its metrics
# into this directory (prometheus_client multiprocess mode); `/metrics` sums them.
# Empty: each process keeps its own, and `/metrics` shows only the answering one's.
SWITCHYARD_METRICS_DIR = os.environ.get("SWITCHYARD_METRICS_DIR", "")
# Off: job transitions are not counted (the measured overhead's baseline).
SWITCHYARD_METRICS_ENABLED = env_bool("SWITCHYARD_METRICS_ENABLED", True)
# A worker, the dispatcher or beat with SWITCHYARD_METRICS_PORT set serves its own process
# group's counters and histograms on that port (monitoring/exporter.py), bound to this
# address; its metrics then live in <SWITCHYARD_METRICS_DIR>/role-<port>, not in the web's.
SWITCHYARD_METRICS_ADDRESS = os.environ.get("SWITCHYARD_METRICS_ADDRESS") or "0.0.0.0"
# When set, /metrics answers only to `Authorization: Bearer <token>`.
SWITCHYARD_METRICS_TOKEN = os.environ.get("SWITCHYARD_METRICS_TOKEN", "")
# A page of jobs (GET /api/v1/jobs, a batch's chunks) also stops once its jobs' params,
# results and errors add up to this many characters (at least one job a page).
SWITCHYARD_MAX_PAGE_BYTES = int(os.environ.get("SWITCHYARD_MAX_PAGE_BYTES") or 8_000_000)
# With no token, /metrics is open (development); production sets this, and /metrics then
# answers 403 until a token is configured.
SWITCHYARD_METRICS_REQUIRE_TOKEN = False
# The gauges a scrape reads from the job table and the management API are computed at most
# once per this many seconds per process, however often /metrics is scraped.
SWITCHYARD_METRICS_CACHE_SECONDS = float(os.environ.get("SWITCHYARD_METRICS_CACHE_SECONDS") or 5)
# Seconds between the dashboard's refreshes.
SWITCHYARD_DASHBOARD_REFRESH = env_int("SWITCHYARD_DASHBOARD_REFRESH", 5)

# "text" (readable, the default) or "json": one JSON object a line, each line about a job
# with its job_id, tenant, lane, tier and task (switchyard/logs.py, docs/monitoring.md#logs).
SWITCHYARD_LOG_FORMAT = (os.environ.get("SWITCHYARD_LOG_FORMAT") or "text").strip().lower()
LOGGING_CONFIG = "switchyard.logs.configure"
LOGGING = _logs.logging_config(log_format=SWITCHYARD_LOG_FORMAT,
                               level=os.environ.get("SWITCHYARD_LOG_LEVEL", "INFO"))
# The landing page at / (platform/home). Anyone may load it: its checks (database, an AMQP
# connection, the lane queues from the management API) run at most once per this many
# seconds per process, however often it is loaded.
SWITCHYARD_HOME_HEALTH_SECONDS = float(os.environ.get("SWITCHYARD_HOME_HEALTH_SECONDS") or 5)
# Where the landing page sends people for Flower; unset, Flower's port (FLOWER_PORT, as
# switchyard/flowerconfig.py reads it) on the host the page was loaded from.
SWITCHYARD_FLOWER_URL = os.environ.get("SWITCHYARD_FLOWER_URL", "")
SWITCHYARD_FLOWER_PORT = env_int("FLOWER_PORT", 5555)
# The runbooks the platform serves at /runbooks/: docs/runbooks/ of the checkout or image.
SWITCHYARD_RUNBOOKS_DIR = Path(os.environ.get("SWITCHYARD_RUNBOOKS_DIR")
                               or REPO_DIR / "docs" / "runbooks")


# Celery ---------------------------------------------------------------------------------
# Read by switchyard/celery.py through config_from_object(namespace="CELERY").
# Reference: https://docs.celeryq.dev/en/stable/userguide/configuration.html

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or DEFAULT_BROKER_URL
# The RabbitMQ users whose messages are the platform's own: every role's user
# (routing.access) and this process's own login (guest in development). A worker runs
# a message of an existing job only from one of them; a tenant's broker user may only
# add new Celery-native jobs of its tenant (jobs.senders, docs/security.md). More users,
# comma-separated, in SWITCHYARD_PLATFORM_BROKER_USERS. A tenant's broker user is named
# <prefix><tenant>[.<service>] (manage.py tenant_broker_user).
SWITCHYARD_PLATFORM_BROKER_USERS = frozenset({
    *_access.platform_users(), routing_celery.broker_user(CELERY_BROKER_URL),
    *(u.strip() for u in os.environ.get("SWITCHYARD_PLATFORM_BROKER_USERS", "").split(",")
      if u.strip())})
SWITCHYARD_BROKER_USER_PREFIX = (os.environ.get("SWITCHYARD_BROKER_USER_PREFIX")
                                 or _access.TENANT_USER_PREFIX)
# Switchyard's job table (jobs.Job) is the system of record for status and results;
# no Celery result backend. The AMQP `rpc://` backend would also declare
# transient non-exclusive reply queues, which RabbitMQ 4.3 refuses.
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True

# The topology, derived from `routing` and nowhere else.
CELERY_TASK_QUEUES = routing_celery.task_queues()
CELERY_TASK_DEFAULT_EXCHANGE = routing_celery.topology.EXCHANGE_NAME
CELERY_TASK_DEFAULT_EXCHANGE_TYPE = "topic"
# Unused for routed tasks (the router always answers), but must name a declared queue.
CELERY_TASK_DEFAULT_QUEUE = routing_celery.topology.QUICK.queue
# A mistyped queue name must fail loudly, never create a queue nobody consumes.
CELERY_TASK_CREATE_MISSING_QUEUES = False
# Workers do not declare queues with their own idea of the arguments; they
# declare exactly `routing`'s (same objects), so no PRECONDITION_FAILED.

# JSON only: a pickle body from a rogue client must never be deserialised.
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_ACCEPT_CONTENT = ["json"]
CELERY_EVENT_SERIALIZER = "json"

# Ack after the task ran, not when it was received: a worker that dies
# mid-task leaves the message to be redelivered (at-least-once).
CELERY_TASK_ACKS_LATE = True
# ... and that includes a pool child killed by the OOM killer or a segfault:
# without this, acks_late still acks the message of a child that was lost.
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# A late-acked message whose connection dropped will be redelivered to someone
# else; cancelling the running copy keeps it from completing twice.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
# One unacked message per pool process: a worker never sits on messages that a
# free worker (or a later premium message) should have had. Priorities only
# work when the backlog stays in the broker, not in worker buffers.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Celery's Django fixup closes the database connection before and after every
# task unless this is set: a new PostgreSQL connection per job, measured at
# ~10x fewer no-op jobs/s. With it, the fixup closes them every 1,000 tasks,
# and switchyard.celery closes a connection older than DATABASE_CONN_MAX_AGE
# or broken (close_old_connections) before each task, as Django does per request.
CELERY_DB_REUSE_MAX = 1000

# Publisher confirms: a publish returns only once the broker has the message.
# `confirm_timeout` and the bounded retry policy keep a blocked broker from
# hanging a request forever (celery #4296, kombu #1024).
CELERY_BROKER_TRANSPORT_OPTIONS = {"confirm_publish": True}
CELERY_BROKER_CONNECTION_TIMEOUT = env_int("CELERY_BROKER_CONNECTION_TIMEOUT", 4)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_HEARTBEAT = 30
# The web waits at most this long (seconds) for the broker to confirm a job;
# then it answers 202 anyway and the dispatcher publishes the job (jobs.dispatch).
SWITCHYARD_PUBLISH_DEADLINE = float(os.environ.get("SWITCHYARD_PUBLISH_DEADLINE") or 1.0)
# Bulk submission (jobs.bulk): how long one call waits for the broker's
# confirms, and how old an unanswered bulk publication must be before the
# dispatcher assumes its submitter died and publishes its jobs again.
SWITCHYARD_BULK_PUBLISH_DEADLINE = float(
    os.environ.get("SWITCHYARD_BULK_PUBLISH_DEADLINE") or 20)
SWITCHYARD_BULK_CONFIRM_GRACE = float(os.environ.get("SWITCHYARD_BULK_CONFIRM_GRACE") or 120)
# The dispatcher's census of each lane (jobs.reconcile) counts jobs published more
# than this many seconds ago: longer than the management API's statistics interval
# (5 s by default) plus a dispatch pass.
SWITCHYARD_RECONCILE_AGE = float(os.environ.get("SWITCHYARD_RECONCILE_AGE") or 30)
# Fair sharing (jobs.fairness, docs/architecture.md#fair-sharing). Per lane, at most
# max(1, round(window x tenant weight)) of a tenant's jobs of one tier are in the broker
# at once; the rest wait in the job table ("held") and the dispatcher releases them as
# the window frees. 0 turns the window off for the lane (the quick lane: short tasks,
# latency first). The slow window is about the lane's concurrency, so a newcomer waits
# behind at most one or two slow tasks of each backlogged tenant.
_FAIR_WINDOW_DEFAULTS = {"slow": 2}  # other lanes: 0, no window
SWITCHYARD_FAIR_WINDOW = {
    lane.name: env_int(f"SWITCHYARD_FAIR_WINDOW_{lane.name.upper()}",
                     _FAIR_WINDOW_DEFAULTS.get(lane.name, 0))
    for lane in _topology.LANES
}
# Starvation bound for the standard tier, per lane: at least this share of the lane's
# starts over SWITCHYARD_FAIR_SHARE_WINDOW seconds goes to standard work while some
# waits, and no standard job in its tenant's window waits longer than the max wait
# (seconds). The dispatcher promotes a standard job above the premium band to keep both.
SWITCHYARD_STANDARD_MIN_SHARE = {
    lane.name: float(os.environ.get(f"SWITCHYARD_STANDARD_MIN_SHARE_{lane.name.upper()}") or 0.10)
    for lane in _topology.LANES
}
SWITCHYARD_STANDARD_MAX_WAIT = {
    lane.name: float(os.environ.get(f"SWITCHYARD_STANDARD_MAX_WAIT_{lane.name.upper()}") or 60)
    for lane in _topology.LANES
}
SWITCHYARD_FAIR_SHARE_WINDOW = float(os.environ.get("SWITCHYARD_FAIR_SHARE_WINDOW") or 30)
# A standard job is promoted this many seconds before its max wait runs out, to cover
# the dispatcher's tick and one delivery.
SWITCHYARD_STARVATION_MARGIN = float(os.environ.get("SWITCHYARD_STARVATION_MARGIN") or 10)
CELERY_TASK_PUBLISH_RETRY = True
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}

# Events: Flower and Switchyard's metrics need both. task-sent is the only
# event that carries the routing key and queue (task-received does not).
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_SEND_SENT_EVENT = True
# Event and control (pidbox) queues are exclusive and transient: RabbitMQ 4.3
# refuses transient non-exclusive queues (deprecated feature transient_nonexcl_queues).
CELERY_EVENT_QUEUE_EXCLUSIVE = True
CELERY_EVENT_QUEUE_DURABLE = False
CELERY_EVENT_QUEUE_TTL = 5.0
CELERY_EVENT_QUEUE_EXPIRES = 60.0
CELERY_CONTROL_QUEUE_EXCLUSIVE = True
CELERY_CONTROL_QUEUE_DURABLE = False
# Celery's event and control exchanges are the topology's, declared by the operator and
# never by a Switchyard process (switchyard/control.py, switchyard/events.py).
CELERY_EVENT_EXCHANGE = _topology.EVENT_EXCHANGE_NAME
CELERY_CONTROL_EXCHANGE = _topology.CONTROL_NAMESPACE
# Per-consumer QoS (never global): switchyard/celery.py installs a consumer that
# always sends basic.qos with global=false. RabbitMQ 4.3 refuses global QoS.

# The broker's consumer_timeout (ms). Each lane's hard time limit must stay
# below it; workers check this at start-up (switchyard/celery.py).
SWITCHYARD_BROKER_CONSUMER_TIMEOUT_MS = env_int(
    "SWITCHYARD_BROKER_CONSUMER_TIMEOUT_MS", DEFAULT_CONSUMER_TIMEOUT_MS
)

# Periodic work run by beat.
# A staged upload no unfinished job names is deleted once older than this (seconds): long
# enough for the web to commit the job it staged it for.
SWITCHYARD_MEDIA_STAGING_GRACE = env_int("SWITCHYARD_MEDIA_STAGING_GRACE", 600)
CELERY_BEAT_SCHEDULE = {
    "jobs-prune-finished": {
        "task": "jobs.prune_finished",
        "schedule": 3600.0,
    },
    # Schedules' fire records, kept as long as the jobs (docs/schedules.md).
    "schedules-prune-fires": {
        "task": "schedules.prune_fires",
        "schedule": 3600.0,
    },
    # Permanently delete files trashed more than SWITCHYARD_MEDIA_TRASH_RETENTION_DAYS ago.
    # Delete staged uploads whose job will never read them (cancelled, expired, dead).
    "media-sweep-staging": {
        "task": "media.sweep_staging",
        "schedule": 3600.0,
    },
    "media-purge-trashed": {
        "task": "media.purge_trashed",
        "schedule": SWITCHYARD_MEDIA_PURGE_EVERY,  # noqa: F405 - from .media
    },
}
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

# How long finished job records are kept (days) before jobs.prune_finished removes them.
SWITCHYARD_JOB_RETENTION_DAYS = env_int("SWITCHYARD_JOB_RETENTION_DAYS", 30)
