"""switchyard_client against a stub of the platform's API: the catalogue cache, the
router's decisions and the result backend's states, polling and timeouts.

No broker and no platform process: the API is a small HTTP server in this process
answering what each test sets (``StubApi``). tests/test_client.py runs the same
client against the real web, broker and workers.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import switchyard_client
from celery import states
from celery.exceptions import TaskRevokedError, TimeoutError
from switchyard_client.backend import STATES

from jobs.models import Job

TOKEN = "sy_test-token"


def catalogue_entry(name: str, lane: str, tier: str = "premium", band=(5, 9),
                    positional=("x",)) -> dict:
    """One entry of ``GET /api/v1/tasks`` as the platform answers it for a tenant."""
    return {"name": name, "lane": lane, "description": "", "params_schema": {"type": "object"},
            "accepts_batches": False, "item_schema": None, "exchange": "tasks",
            "routing_key": f"{lane}.{tier}.{name}", "positional": list(positional),
            "priority_band": list(band)}


PREMIUM_CATALOGUE = [catalogue_entry("demo.quick_task", "quick"),
                     catalogue_entry("demo.slow_task", "slow", positional=("seconds",))]


class StubApi:
    """An HTTP server answering ``routes[path] = (status, json)``; 404 for the rest.
    ``requests`` lists each path asked for, with the Authorization header."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, object]] = {}
        self.requests: list[tuple[str, str | None]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                stub.requests.append((self.path, self.headers.get("Authorization")))
                status, payload = stub.routes.get(self.path, (404, {"detail": "Not found."}))
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def job(self, job_id: str, status: str, **fields) -> None:
        self.routes[f"/api/v1/jobs/{job_id}"] = (200, {
            "id": job_id, "task": "demo.quick_task", "status": status, "lane": "quick",
            "params": {"x": 1}, "attempts": 1, "result": None, "error": "",
            "finished_at": None, **fields})

    def asked(self, prefix: str) -> int:
        return sum(1 for path, _ in self.requests if path.startswith(prefix))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub_api():
    api = StubApi()
    api.routes["/api/v1/tasks"] = (200, PREMIUM_CATALOGUE)
    yield api
    api.close()


@pytest.fixture
def app(stub_api):
    # The broker is never reached by these tests: nothing is published.
    return switchyard_client.connect("amqp://tenant-acme:pw@127.0.0.1:1//",
                                     api_url=stub_api.url, token=TOKEN)


def route(app, name, **options):
    return app.amqp.router.route(options, name)


# -- connect -------------------------------------------------------------------------------


def test_connect_configures_json_confirms_and_no_declarations(app):
    conf = app.conf
    assert (conf.task_serializer, conf.result_serializer) == ("json", "json")
    assert list(conf.accept_content) == ["json"]
    assert conf.broker_transport_options["confirm_publish"] is True
    assert conf.task_create_missing_queues is False
    assert conf.task_send_sent_event is False
    assert isinstance(app.backend, switchyard_client.JobBackend)
    assert TOKEN not in app.backend.as_uri(include_password=True)


def test_connect_refuses_settings_that_would_break_the_contract(stub_api):
    for setting in ({"task_serializer": "pickle"}, {"task_routes": {"x": "y"}},
                    {"task_create_missing_queues": True},
                    {"broker_transport_options": {"confirm_publish": False}}):
        with pytest.raises(switchyard_client.ConfigurationError):
            switchyard_client.connect("amqp://u:p@127.0.0.1//", api_url=stub_api.url,
                                      token=TOKEN, **setting)
    with pytest.raises(switchyard_client.ConfigurationError, match="token"):
        switchyard_client.connect("amqp://u:p@127.0.0.1//", api_url=stub_api.url, token="")


def test_connect_leaves_the_process_current_app_alone(stub_api):
    from celery import current_app

    before = current_app._get_current_object()
    switchyard_client.connect("amqp://u:p@127.0.0.1//", api_url=stub_api.url, token=TOKEN)
    assert current_app._get_current_object() is before


# -- catalogue and routing -----------------------------------------------------------------


def test_catalogue_is_fetched_with_the_token_and_kept_for_its_ttl(stub_api):
    clock = [0.0]
    catalogue = switchyard_client.Catalogue(
        switchyard_client.api.Api(stub_api.url + "/api/v1/", TOKEN), ttl=60,
        clock=lambda: clock[0])
    assert catalogue.route("demo.quick_task").routing_key == "quick.premium.demo.quick_task"
    catalogue.route("demo.slow_task")
    clock[0] = 59.0
    catalogue.route("demo.quick_task")
    assert stub_api.requests == [("/api/v1/tasks", f"Token {TOKEN}")]
    clock[0] = 61.0
    catalogue.route("demo.quick_task")
    assert stub_api.asked("/api/v1/tasks") == 2


def test_a_task_deployed_after_the_fetch_is_found_by_refetching_on_a_miss(app, stub_api):
    route(app, "demo.quick_task")
    stub_api.routes["/api/v1/tasks"] = (200, [*PREMIUM_CATALOGUE,
                                              catalogue_entry("media.thumbnail", "slow")])
    assert route(app, "media.thumbnail")["routing_key"] == "slow.premium.media.thumbnail"
    assert stub_api.asked("/api/v1/tasks") == 2


def test_unknown_task_names_itself_and_the_catalogue(app, stub_api):
    with pytest.raises(switchyard_client.UnknownTask) as raised:
        app.send_task("demo.no_such_task", args=[1])
    message = str(raised.value)
    assert "'demo.no_such_task'" in message and f"{stub_api.url}/api/v1/tasks" in message
    assert "nothing was sent" in message


def test_field_report_queue_and_routing_key_options_never_name_a_queue(app):
    # Given the options the field reports pass ...
    for options in ({"queue": "test"}, {"queue": "quick_tasks"}, {"queue": "slow_tasks"},
                    {"routing_key": "heavy_tasks"}, {"exchange": "celery", "queue": "celery"},
                    {"routing_key": "quick.standard.demo.quick_task"}):  # another tier's key
        # ... the message goes to the catalogue's exchange and key, with no queue to declare
        routed = route(app, "demo.quick_task", **options)
        assert "queue" not in routed, options
        assert (routed["exchange"], routed["exchange_type"], routed["routing_key"],
                routed["declare"]) == ("tasks", "topic", "quick.premium.demo.quick_task", [])


def test_a_routing_key_of_another_lane_for_the_callers_tier_is_sent_as_given(app):
    # The platform's worker moves such a job to the task's own lane and records it.
    routed = route(app, "demo.quick_task", routing_key="slow.premium.demo.quick_task")
    assert routed["routing_key"] == "slow.premium.demo.quick_task"


def test_relative_priority_is_placed_in_the_tiers_band(app, stub_api):
    assert [route(app, "demo.quick_task", priority=p)["priority"]
            for p in (0, 3, 5, 7, 9)] == [5, 6, 7, 8, 9]
    assert route(app, "demo.quick_task")["priority"] == 7  # no priority: place(None)
    stub_api.routes["/api/v1/tasks"] = (200, [catalogue_entry("demo.quick_task", "quick",
                                                              tier="standard", band=(0, 4))])
    standard = switchyard_client.connect("amqp://u:p@127.0.0.1:1//", api_url=stub_api.url,
                                         token=TOKEN)
    assert [route(standard, "demo.quick_task", priority=p)["priority"]
            for p in (0, 9, None)] == [0, 4, 2]
    with pytest.raises(ValueError, match="outside 0..9"):
        route(standard, "demo.quick_task", priority=10)


def test_a_platform_without_routing_fields_is_a_clear_error(app, stub_api):
    old = {k: v for k, v in PREMIUM_CATALOGUE[0].items()
           if k not in ("routing_key", "priority_band", "exchange", "positional")}
    stub_api.routes["/api/v1/tasks"] = (200, [old])
    with pytest.raises(switchyard_client.CatalogueError,
                       match="no routing_key or priority_band for task 'demo.quick_task'"):
        app.send_task("demo.quick_task", kwargs={"x": 1})


def test_an_api_that_is_down_keeps_the_catalogue_already_fetched(stub_api):
    clock = [0.0]
    catalogue = switchyard_client.Catalogue(switchyard_client.api.Api(stub_api.url, TOKEN),
                                            ttl=60, clock=lambda: clock[0])
    catalogue.route("demo.quick_task")
    stub_api.routes["/api/v1/tasks"] = (503, {"detail": "down"})
    clock[0] = 120.0
    assert catalogue.route("demo.quick_task").lane == "quick"
    with pytest.raises(switchyard_client.CatalogueError, match="503"):
        catalogue.route("demo.deployed_meanwhile")  # cannot tell: not "unknown"


def test_a_link_to_an_unknown_task_is_refused_before_publishing(app):
    from switchyard_client.amqp import _check_links

    message = app.amqp.create_task_message(
        str(uuid.uuid4()), "demo.quick_task", (), {}, callbacks=[app.signature("demo.nope")])
    with pytest.raises(switchyard_client.UnknownTask, match="unknown link task 'demo.nope'"):
        _check_links(app, message)


def test_remote_task_reads_like_a_celery_task(app):
    slow_task = app.remote_task("demo.slow_task")
    assert slow_task.s(3).args == (3,) and slow_task.s(3).task == "demo.slow_task"
    assert slow_task.si().immutable
    with pytest.raises(TypeError, match=r"demo.slow_task.delay"):
        slow_task(10)


# -- result backend ------------------------------------------------------------------------


def test_every_job_status_maps_onto_a_celery_state():
    assert set(STATES) == set(Job.Status.values)
    finished = {STATES[s] for s in Job.FINISHED}
    unfinished = {STATES[s] for s in Job.UNFINISHED}
    assert finished <= states.READY_STATES and not unfinished & states.READY_STATES


def test_backend_states_results_and_errors(app, stub_api):
    ids = {status: str(uuid.uuid4()) for status in STATES}
    for status, job_id in ids.items():
        stub_api.job(job_id, status, result=42 if status == "succeeded" else None,
                     error=f"{status} because" if status != "succeeded" else "")
    result = app.AsyncResult
    assert [result(ids[s]).status for s in ("queued", "started", "retrying")] == [
        "PENDING", "STARTED", "RETRY"]
    assert result(ids["succeeded"]).get(timeout=5) == 42
    assert result(ids["succeeded"]).successful()
    for status, exc in (("failed", switchyard_client.JobFailed),
                        ("dead", switchyard_client.JobDead),
                        ("expired", switchyard_client.JobExpired)):
        res = result(ids[status])
        assert res.ready() and not res.successful() and res.status == "FAILURE"
        with pytest.raises(exc, match=f"{status} because") as raised:
            res.get(timeout=5)
        assert raised.value.error == f"{status} because" and raised.value.job_id == ids[status]
        assert isinstance(result(ids[status]).get(propagate=False), exc)
    cancelled = result(ids["cancelled"])
    assert cancelled.status == "REVOKED"
    with pytest.raises(TaskRevokedError):
        cancelled.get(timeout=5)
    assert result(str(uuid.uuid4())).status == "PENDING"  # unknown: 404
    assert result("not-a-uuid").status == "PENDING"


def test_get_polls_with_backoff_until_the_job_finishes(app, stub_api):
    job_id = str(uuid.uuid4())
    stub_api.job(job_id, "queued")
    threading.Timer(1.0, stub_api.job, (job_id, "succeeded"), {"result": "done"}).start()
    started = time.monotonic()
    assert app.AsyncResult(job_id).get(timeout=10) == "done"
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 1.8
    # 50 ms growing to 0.5 s: far fewer polls than one every 50 ms, more than one.
    assert 3 <= stub_api.asked(f"/api/v1/jobs/{job_id}") <= 10


def test_get_honours_its_timeout(app, stub_api):
    job_id = str(uuid.uuid4())
    stub_api.job(job_id, "started")
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=f"job {job_id} did not finish within 0.7 s"):
        app.AsyncResult(job_id).get(timeout=0.7)
    assert 0.7 <= time.monotonic() - started < 1.3


def test_get_keeps_polling_through_a_broken_api_and_fails_at_once_on_a_bad_token(app,
                                                                                   stub_api):
    job_id = str(uuid.uuid4())
    stub_api.routes[f"/api/v1/jobs/{job_id}"] = (503, {"detail": "restarting"})
    threading.Timer(0.5, stub_api.job, (job_id, "succeeded"), {"result": 7}).start()
    assert app.AsyncResult(job_id).get(timeout=10) == 7

    refused = str(uuid.uuid4())
    stub_api.routes[f"/api/v1/jobs/{refused}"] = (401, {"detail": "Invalid token."})
    started = time.monotonic()
    with pytest.raises(switchyard_client.ApiError, match="401 Invalid token"):
        app.AsyncResult(refused).get(timeout=10)
    assert time.monotonic() - started < 1


def test_retry_policy_also_travels_to_the_platform_in_a_header(app):
    policy = {"max_retries": 3, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}
    routed = route(app, "demo.quick_task", retry_policy=policy, headers={"mine": 1})
    assert routed["headers"] == {"mine": 1, "switchyard_retry_policy": policy}
    assert routed["retry_policy"] == policy  # Celery still retries the publish by it
    assert "headers" not in route(app, "demo.quick_task")


def test_the_environment_of_another_celery_app_changes_nothing(stub_api, monkeypatch):
    # A service with a Celery app of its own has these set for it.
    monkeypatch.setenv("CELERY_BROKER_URL", "amqp://other:secret@elsewhere:5672//")
    monkeypatch.setenv("CELERY_BROKER_WRITE_URL", "amqp://other:secret@elsewhere:5672//")
    monkeypatch.setenv("CELERY_RESULT_BACKEND", "rpc://")
    app = switchyard_client.connect("amqp://tenant-acme:pw@broker:5672/sy", api_url=stub_api.url,
                                    token=TOKEN)
    with app.connection_for_write() as conn:
        assert (conn.userid, conn.hostname, conn.virtual_host) == ("tenant-acme", "broker", "sy")
    assert isinstance(app.backend, switchyard_client.JobBackend)
