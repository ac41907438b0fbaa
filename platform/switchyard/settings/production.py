"""Production settings: refuse to start without real secrets; secure cookies and HTTPS."""
from __future__ import annotations

import os
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

from .base import *  # noqa: F403
from .base import INSTALLED_APPS, env_bool

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if len(SECRET_KEY) < 50:
    raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set to at least 50 random characters")
if not os.environ.get("DATABASE_URL"):
    raise ImproperlyConfigured("DATABASE_URL must be set in production")
#: What ``.env.example`` holds until ``make .env`` replaces it: never a production secret.
_PLACEHOLDER = "change-me"
if _PLACEHOLDER in (urlsplit(os.environ["DATABASE_URL"]).password or ""):
    raise ImproperlyConfigured("DATABASE_URL must not carry the placeholder password of "
                               ".env.example (POSTGRES_PASSWORD=change-me)")
# Never the development default (guest, which a broker loading definitions.json does not
# have): each role logs in as its own RabbitMQ user (docs/operations.md).
_broker = urlsplit(os.environ.get("CELERY_BROKER_URL", ""))
if not _broker.password or _broker.username in (None, "", "guest"):
    raise ImproperlyConfigured("CELERY_BROKER_URL must be set in production, with the role's "
                               "own RabbitMQ user and password (never guest)")
if _PLACEHOLDER in _broker.password:
    raise ImproperlyConfigured("CELERY_BROKER_URL must not carry the placeholder password of "
                               ".env.example (SWITCHYARD_RABBITMQ_PASSWORD_<ROLE>=change-me)")
# /metrics names lanes' backlogs and tenants' shares, and each scrape reads the job table:
# in production it answers only with a bearer token (monitoring.views).
SWITCHYARD_METRICS_REQUIRE_TOKEN = True
_metrics_token = os.environ.get("SWITCHYARD_METRICS_TOKEN", "")
if _metrics_token and (_PLACEHOLDER in _metrics_token or len(_metrics_token) < 24):
    raise ImproperlyConfigured("SWITCHYARD_METRICS_TOKEN must be at least 24 random characters "
                               "(not the placeholder of .env.example)")
# Demo tasks are never installed in production: demo.witness, demo.poison and the rest would
# be any tenant's to submit (docs/security.md).
if env_bool("SWITCHYARD_DEMO_TASKS", False):
    raise ImproperlyConfigured("SWITCHYARD_DEMO_TASKS must not be set in production: it installs "
                               "the demo tasks, which any tenant could submit")
SWITCHYARD_DEMO_TASKS = False
INSTALLED_APPS = [app for app in INSTALLED_APPS if app != "demo"]

DEBUG = False
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
# A Prometheus inside the deployment's own network (docker-compose.yml's) scrapes /metrics
# over plain http, still with the bearer token. Off by default: where no proxy in front
# redirects to https, the token would travel in clear.
if env_bool("SWITCHYARD_METRICS_PLAIN_HTTP", False):
    SECURE_REDIRECT_EXEMPT = [r"^metrics$"]
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_SECURE_HSTS_SECONDS", "31536000"))
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SECURE_CONTENT_TYPE_NOSNIFF = True
