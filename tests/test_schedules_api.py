"""The schedule API on the real database: what a tenant sends, sees and is refused."""
from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from rest_framework.test import APIClient

from jobs.models import Job
from schedules.firing import schedule_fire_due
from schedules.models import Schedule, ScheduleFire
from tenants.services import tenant_create

pytestmark = pytest.mark.django_db

DAILY = {"task": "demo.quick_task", "params": {"x": 1}, "cron": "30 2 * * *",
         "timezone": "Europe/Berlin"}


def client_for(name: str, tier: str = "premium") -> APIClient:
    tenant, key = tenant_create(name=name, tier=tier)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    client.tenant = tenant
    return client


@pytest.fixture
def api():
    return client_for("sched")


def create(api, body, status=201) -> dict:
    resp = api.post("/api/v1/schedules", body, format="json")
    assert resp.status_code == status, resp.json()
    return resp.json()


def test_create_then_read_shows_the_next_five_fire_times_in_utc(api):
    body = create(api, {**DAILY, "options": {"priority": 3, "expires": 600},
                        "catch_up": "run_once", "name": "nightly"})
    assert body["cron"] == "30 2 * * *" and body["timezone"] == "Europe/Berlin"
    assert body["overlap"] == "skip" and body["catch_up"] == "run_once"
    assert body["options"] == {"priority": 3, "expires": 600.0}
    times = [dt.datetime.fromisoformat(t) for t in body["next_fire_times"]]
    assert len(times) == 5 and times == sorted(times)
    assert body["next_fire_at"] and times[0] == dt.datetime.fromisoformat(
        body["next_fire_at"].replace("Z", "+00:00"))
    berlin = [t.astimezone(ZoneInfo("Europe/Berlin")) for t in times]
    assert all((t.hour, t.minute) in {(2, 30), (3, 0)} for t in berlin)  # 03:00: a DST gap
    got = api.get(f"/api/v1/schedules/{body['id']}").json()
    assert got["id"] == body["id"] and got["last_runs"] == []
    listed = api.get("/api/v1/schedules").json()
    assert [s["id"] for s in listed["results"]] == [body["id"]]


@pytest.mark.parametrize(("change", "field", "says"), [
    ({"cron": "61 2 * * *"}, "cron", "minute: 61 is outside 0-59"),
    ({"cron": "30 2 * *"}, "cron", "five fields"),
    ({"timezone": "Europe/Atlantis"}, "timezone", "unknown time zone"),
    ({"task": "no.such_task"}, "task", "unknown task"),
    ({"params": {"x": 1, "extra": 2}}, "params", ""),
    ({"cron": "", "every": 5}, "every", "at least 10 seconds"),
    ({"every": 60}, "every", "not both"),
    ({"options": {"countdown": 5}}, "options.countdown", "fire times say when"),
    ({"options": {"priority": 12}}, "options", ""),
    ({"options": {"queue": "slow"}}, "options", ""),
    ({"overlap": "sometimes"}, "overlap", ""),
    ({"jitter": 7200}, "jitter", "between 0 and 3600"),
    ({"surprise": 1}, "surprise", "unknown field"),
])
def test_what_the_job_api_would_refuse_is_a_400_naming_the_field(api, change, field, says):
    errors = create(api, {**DAILY, **change}, status=400)["errors"]
    named = [key for key in errors if key == field or key.startswith(f"{field}.")]
    assert named, errors
    assert says in str(errors[named[0]]), errors
    assert not Schedule.objects.exists()


def test_patch_changes_the_rule_and_moves_the_next_fire_time(api):
    body = create(api, DAILY)
    resp = api.patch(f"/api/v1/schedules/{body['id']}", {"cron": "", "every": 30},
                     format="json")
    assert resp.status_code == 200, resp.json()
    changed = resp.json()
    assert changed["every"] == 30 and changed["cron"] == ""
    first, second = (dt.datetime.fromisoformat(t) for t in changed["next_fire_times"][:2])
    assert (second - first) == dt.timedelta(seconds=30)
    bad = api.patch(f"/api/v1/schedules/{body['id']}", {"timezone": "Mars/Olympus"},
                    format="json")
    assert bad.status_code == 400 and "timezone" in bad.json()["errors"]


def test_pause_resume_trigger_and_delete(api):
    body = create(api, {**DAILY, "overlap": "allow"})
    url = f"/api/v1/schedules/{body['id']}"
    paused = api.post(f"{url}/pause").json()
    assert paused["paused"] and paused["next_fire_times"] == []
    resumed = api.post(f"{url}/resume").json()
    assert not resumed["paused"] and len(resumed["next_fire_times"]) == 5
    trigger = api.post(f"{url}/trigger")
    assert trigger.status_code == 202, trigger.json()
    job = Job.objects.get(id=trigger.json()["job"])
    assert trigger["Location"] == f"/api/v1/jobs/{job.id}"
    assert (job.tenant_id, job.task, job.tier) == (api.tenant.id, "demo.quick_task", "premium")
    runs = api.get(url).json()["last_runs"]
    assert [(r["outcome"], r["triggered"], r["job"]) for r in runs] == [
        ("fired", True, str(job.id))]
    assert api.delete(url).status_code == 204
    assert api.get(url).status_code == 404
    assert Job.objects.filter(id=job.id).exists()  # the jobs it fired stay


def test_another_tenants_schedule_is_not_found(api):
    body = create(api, DAILY)
    other = client_for("other")
    url = f"/api/v1/schedules/{body['id']}"
    assert other.get(url).status_code == 404
    assert other.patch(url, {"paused": True}, format="json").status_code == 404
    assert other.post(f"{url}/trigger").status_code == 404
    assert other.delete(url).status_code == 404
    assert other.get("/api/v1/schedules").json()["results"] == []


def test_the_tier_comes_from_the_tenant(api):
    standard = client_for("std", tier="standard")
    body = create(standard, {**DAILY, "options": {"priority": 9}})
    job = Job.objects.get(id=standard.post(f"/api/v1/schedules/{body['id']}/trigger")
                          .json()["job"])
    assert job.tier == "standard" and job.priority <= 4


def test_trigger_over_quota_is_429_and_a_fire_over_quota_is_recorded(api):
    api.tenant.max_queued_jobs = 0
    api.tenant.save()
    body = create(api, {"task": "demo.quick_task", "params": {"x": 1}, "every": 10})
    resp = api.post(f"/api/v1/schedules/{body['id']}/trigger")
    assert resp.status_code == 429 and "Retry-After" in resp
    schedule = Schedule.objects.get(id=body["id"])
    schedule_fire_due(now=schedule.next_fire_at)
    fire = ScheduleFire.objects.get(schedule=schedule)
    assert (fire.outcome, fire.reason) == ("skipped", "quota")
    runs = api.get(f"/api/v1/schedules/{body['id']}").json()["last_runs"]
    assert runs[0]["outcome"] == "skipped" and runs[0]["reason"] == "quota"


def test_admin_lists_schedules_per_tenant_with_their_next_fire_time(api, client):
    from django.contrib.auth.models import User
    body = create(api, DAILY)
    User.objects.create_user("ops", password="pw", is_staff=True, is_superuser=True)
    assert client.login(username="ops", password="pw")
    page = client.get(f"/admin/schedules/schedule/?tenant__id__exact={api.tenant.id}")
    assert page.status_code == 200
    text = page.content.decode()
    assert body["id"] in text and "30 2 * * *" in text and "Europe/Berlin" in text
    detail = client.get(f"/admin/schedules/schedule/{body['id']}/change/")
    assert detail.status_code == 200
    resp = client.post("/admin/schedules/schedule/", {
        "action": "pause", "_selected_action": [body["id"]]})
    assert resp.status_code == 302 and Schedule.objects.get(id=body["id"]).paused


def test_the_schedules_command_lists_shows_and_fires(api):
    import io

    from django.core.management import call_command
    body = create(api, {"task": "demo.quick_task", "params": {"x": 1}, "every": 10,
                        "overlap": "allow"})
    Schedule.objects.filter(id=body["id"]).update(
        next_fire_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5))
    out = io.StringIO()
    call_command("schedules", "list", "--overdue", stdout=out)
    assert body["id"] in out.getvalue() and "OVERDUE" in out.getvalue()
    out = io.StringIO()
    call_command("schedules", "fire", stdout=out)
    assert out.getvalue().startswith("1 fired, 0 skipped")
    out = io.StringIO()
    call_command("schedules", "show", body["id"], stdout=out)
    assert "fired" in out.getvalue() and "every 10 s" in out.getvalue()
    call_command("schedules", "pause", body["id"], stdout=io.StringIO())
    assert Schedule.objects.get(id=body["id"]).paused
    call_command("schedules", "resume", body["id"], stdout=io.StringIO())
    assert not Schedule.objects.get(id=body["id"]).paused
