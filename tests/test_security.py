"""Security guarantees not covered next to their feature (docs/security.md lists them all).

Production settings are loaded in a subprocess, as a deploy loads them, with only
the environment a deploy gives: the repository holds no secret they would accept.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from jobs.models import Job
from jobs.submission import job_submit
from routing import priorities
from tenants.models import Tenant
from tenants.services import tenant_create
from tests.processes import BIN, role_env

REPO = Path(__file__).resolve().parent.parent
MANAGE = REPO / "platform" / "manage.py"


def production_env(**overrides: str | None) -> dict[str, str]:
    """What a deploy sets (docker-compose.yml, deploy/k8s), with fresh random secrets."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DJANGO_", "DATABASE_URL", "CELERY_", "SWITCHYARD_"))}
    env.update(
        PYTHONPATH=f"{REPO / 'platform'}{os.pathsep}{REPO}",
        DJANGO_SETTINGS_MODULE="switchyard.settings.production",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_ALLOWED_HOSTS="switchyard.example.com",
        DATABASE_URL=f"postgres://switchyard:{secrets.token_urlsafe(16)}@db.internal:5432/sy",
        CELERY_BROKER_URL=f"amqp://switchyard-web:{secrets.token_urlsafe(16)}@rabbitmq:5672//",
    )
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(MANAGE), *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_check_deploy_is_clean_with_production_settings():
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=production_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout
    assert "WARNING" not in result.stderr


def test_production_settings_are_secure_by_default():
    code = ("from django.conf import settings as s; print(s.DEBUG, s.SECURE_SSL_REDIRECT, "
            "s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_SECONDS >= 31536000)")
    result = manage("shell", "-c", code, env=production_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].split() == ["False", "True", "True", "True", "True"]


@pytest.mark.parametrize(("overrides", "named"), [
    ({"DJANGO_SECRET_KEY": None}, "DJANGO_SECRET_KEY"),
    # the development default of the base settings, and .env.example's placeholder
    ({"DJANGO_SECRET_KEY": "switchyard-development-only-not-secret"}, "DJANGO_SECRET_KEY"),
    ({"DJANGO_SECRET_KEY": "change-me-to-50-random-characters"}, "DJANGO_SECRET_KEY"),
    ({"DATABASE_URL": None}, "DATABASE_URL"),
    ({"CELERY_BROKER_URL": None}, "CELERY_BROKER_URL"),
    ({"CELERY_BROKER_URL": "amqp://guest:guest@rabbitmq:5672//"}, "CELERY_BROKER_URL"),
    ({"CELERY_BROKER_URL": "amqp://switchyard-web@rabbitmq:5672//"}, "CELERY_BROKER_URL"),
    # .env.example's placeholders, as docker-compose.yml would pass them on
    ({"DATABASE_URL": "postgres://switchyard:change-me@postgres:5432/switchyard"},
     "DATABASE_URL"),
    ({"CELERY_BROKER_URL": "amqp://switchyard-web:change-me@rabbitmq:5672//"},
     "CELERY_BROKER_URL"),
    ({"SWITCHYARD_METRICS_TOKEN": "change-me"}, "SWITCHYARD_METRICS_TOKEN"),
    ({"SWITCHYARD_METRICS_TOKEN": "short"}, "SWITCHYARD_METRICS_TOKEN"),
], ids=["no-key", "dev-key", "placeholder-key", "no-database", "no-broker", "guest-broker",
        "passwordless-broker", "placeholder-database", "placeholder-broker",
        "placeholder-metrics-token", "short-metrics-token"])
def test_production_refuses_to_start_without_its_secrets(overrides, named):
    result = manage("check", env=production_env(**overrides))
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and named in result.stderr


#: Run in a process of its own with the settings under test: what a worker registers
#: (it imports every installed app's tasks at start), and what a tenant sees of the API:
#: the task catalogue, and the answer to a submission of the drill task demo.witness
#: (made only where demo is not installed: it would need the database otherwise).
DEMO_PROBE = """
import json
from django.conf import settings
from django.urls import resolve
from rest_framework.test import APIRequestFactory, force_authenticate
from switchyard.celery import app
from tenants.authentication import TenantPrincipal
from tenants.models import Tenant

app.loader.import_default_modules()
tenant = Tenant(name="probe", tier="premium")

def call(method, path, data=None):
    request = getattr(APIRequestFactory(), method)(
        path, data, format="json", secure=True, HTTP_HOST=settings.ALLOWED_HOSTS[0])
    force_authenticate(request, user=TenantPrincipal(tenant), token=tenant)
    response = resolve(path).func(request)
    return [response.status_code, json.loads(json.dumps(response.data, default=str))]

catalogue = call("get", "/api/v1/tasks")
submitted = (None if "demo" in settings.INSTALLED_APPS
             else call("post", "/api/v1/jobs", {"task": "demo.witness", "params": {}}))
print(json.dumps({"apps": settings.INSTALLED_APPS, "registered": sorted(app.tasks),
                  "catalogue": [catalogue[0], [t["name"] for t in catalogue[1]]],
                  "submitted": submitted}))
"""


def demo_probe(env: dict[str, str]) -> dict:
    result = manage("shell", "-c", DEMO_PROBE, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def base_env(tmp_path: Path, **overrides: str | None) -> dict[str, str]:
    """The base settings (`make run`'s) with nothing of this test run's environment."""
    return production_env(**{"DJANGO_SETTINGS_MODULE": "switchyard.settings.base",
                             "DATABASE_URL": None, "CELERY_BROKER_URL": None,
                             "SWITCHYARD_VAR_DIR": str(tmp_path), **overrides})


def demo_names(names: list[str]) -> list[str]:
    return [name for name in names if name.startswith("demo.")]


@pytest.mark.parametrize("value", ["1", "true"])
def test_production_refuses_to_start_with_demo_tasks(value):
    result = manage("check", env=production_env(SWITCHYARD_DEMO_TASKS=value))
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and "SWITCHYARD_DEMO_TASKS" in result.stderr


@pytest.mark.parametrize("value", [None, "0"], ids=["unset", "off"])
def test_production_has_no_demo_task_a_tenant_could_submit(value):
    # Given production settings as a deploy gives them
    seen = demo_probe(production_env(SWITCHYARD_DEMO_TASKS=value))
    # Then the task catalogue lists no demo task (but the real ones) ...
    status, listed = seen["catalogue"]
    assert status == 200 and demo_names(listed) == [] and "media.thumbnail" in listed
    # ... submitting the drill task is refused as an unknown task ...
    status, body = seen["submitted"]
    assert status == 400 and "unknown task 'demo.witness'" in json.dumps(body)
    # ... and no worker would run one: none is registered, the app is not installed
    assert demo_names(seen["registered"]) == [] and "media.thumbnail" in seen["registered"]
    assert "demo" not in seen["apps"]


@pytest.mark.parametrize(("value", "installed"), [(None, False), ("0", False), ("1", True)],
                         ids=["unset", "off", "on"])
def test_base_settings_have_demo_tasks_only_when_switched_on(value, installed, tmp_path):
    seen = demo_probe(base_env(tmp_path, SWITCHYARD_DEMO_TASKS=value))
    assert ("demo" in seen["apps"]) is installed
    assert "media.thumbnail" in seen["registered"] and "media.thumbnail" in seen["catalogue"][1]
    if installed:
        assert {"demo.quick_task", "demo.slow_task", "demo.witness"} <= set(seen["registered"])
        assert {"demo.quick_task", "demo.slow_task"} <= set(seen["catalogue"][1])
    else:
        assert demo_names(seen["registered"]) == demo_names(seen["catalogue"][1]) == []
        assert seen["submitted"][0] == 400


@pytest.mark.django_db
def test_a_tenants_quota_counts_only_its_own_jobs():
    # Given a busy tenant with 5 jobs waiting, and a small one allowed 2
    busy, _ = tenant_create(name="busy", tier="premium")
    for _ in range(5):
        job_submit(tenant=busy, task="demo.slow_task", params={"seconds": 1})
    small, key = tenant_create(name="small", tier="standard")
    Tenant.objects.filter(id=small.id).update(max_queued_jobs=2)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    # When the small one submits three jobs
    codes = [client.post("/api/v1/jobs", {"task": "demo.quick_task"}, format="json").status_code
             for _ in range(3)]
    # Then the busy tenant's jobs never counted against it, and it sees only its own
    assert codes == [202, 202, 429]
    assert [j["task"] for j in client.get("/api/v1/jobs").json()["results"]] == [
        "demo.quick_task"] * 2


@pytest.mark.parametrize("auth", [None, "", "ops", "ops:", "admin:change-me", "ops:short"],
                         ids=["unset", "empty", "no-password", "empty-password", "placeholder",
                              "short-password"])
def test_flower_refuses_to_start_without_a_login(auth):
    env = role_env("amqp://guest:guest@127.0.0.1:1//", FLOWER_PORT="1")
    env.pop("FLOWER_BASIC_AUTH", None)
    if auth is not None:
        env["FLOWER_BASIC_AUTH"] = auth
    result = subprocess.run([str(BIN / "flower")], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0
    assert "FLOWER_BASIC_AUTH must be set" in result.stderr


# Whatever a request claims, in the body, its options or its headers:
TIER_CLAIMS = st.fixed_dictionaries({}, optional={
    "tier": st.sampled_from(["premium", "gold", ""]),
    "priority": st.integers(-3, 12),
    "queue": st.sampled_from(["slow", "quick", "premium"]),
    "routing_key": st.sampled_from(["quick.premium.demo.quick_task", "slow.premium.x"]),
    "exchange": st.just("tasks"),
})
HEADER_CLAIMS = st.fixed_dictionaries({}, optional={
    "HTTP_X_TIER": st.just("premium"), "HTTP_TIER": st.just("premium"),
})


@pytest.mark.django_db
@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(claims=TIER_CLAIMS, top_level=st.booleans(), headers=HEADER_CLAIMS)
def test_tier_and_band_come_from_the_tenant_record_whatever_the_request_claims(
        claims, top_level, headers):
    tenant, key = tenant_create(name=f"claimant-{uuid.uuid4().hex[:12]}", tier="standard")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    body = {"task": "demo.quick_task", **(claims if top_level else {"options": claims})}
    resp = client.post("/api/v1/jobs", body, format="json", **headers)
    # Refused when it names anything but a relative priority in 0..9 (unknown fields and
    # routing options are never ignored) ...
    in_range = 0 <= claims.get("priority", 0) <= 9
    refused = bool(claims) if top_level else bool(set(claims) - {"priority"}) or not in_range
    assert resp.status_code == (400 if refused else 202), resp.content
    # ... else placed in the standard band on a standard key, whatever the headers say
    if not refused:
        job = Job.objects.get(id=resp.json()["id"])
        assert job.tier == "standard" and job.priority in priorities.STANDARD
        assert job.routing_key == "quick.standard.demo.quick_task"
        assert job.priority == priorities.STANDARD.place(claims.get("priority"))
