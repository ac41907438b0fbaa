"""switchyard_client against the real platform: its web, RabbitMQ and workers.

What an internal service notices: ``pip install ./client`` brings nothing of the
platform; its calls land in the task's lane with the routing key of its tier, a
priority inside its band and its broker user as ``user_id``, with nothing
declared; results come back through ``AsyncResult.get()``; and the field reports'
own calling code runs unchanged but for how the app is made.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import celery.exceptions
import pytest
import switchyard_client
from django.conf import settings
from kombu import Connection, Queue

from jobs.models import Job
from routing.management import Management
from tenants.services import tenant_create
from tests.processes import role_env, wait_until
from tests.test_client_offline import PREMIUM_CATALOGUE, StubApi
from tests.test_lanes import start_lane
from tests.test_platform import free_port, http_status

pytestmark = [pytest.mark.rabbitmq, pytest.mark.workers]

REPO = Path(__file__).resolve().parents[1]
#: Top-level modules of the platform (and Django): none may be imported by a client.
PLATFORM_MODULES = ("django", "rest_framework", "routing", "switchyard", "jobs", "tenants",
                    "media", "monitoring", "demo")


def manage(broker_url: str, *args: str) -> str:
    """Run ``platform/manage.py`` as an operator would, on this run's vhost and database;
    return its last line of output."""
    done = subprocess.run([sys.executable, "platform/manage.py", *args], cwd=REPO,
                          env=role_env(broker_url), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"manage.py {' '.join(args)} failed:\n{done.stderr}"
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture
def web(start_role) -> str:
    """The web role (one gunicorn worker) on a free port, once it answers: its URL."""
    port = free_port()
    role = start_role("web", WEB_BIND=f"127.0.0.1:{port}", WEB_WORKERS="1")
    wait_until(lambda: http_status(f"http://127.0.0.1:{port}/healthz") == 200, 60, "the web",
               roles=[role])
    return f"http://127.0.0.1:{port}"


@dataclass
class Caller:
    """A tenant as an internal service holds it: its API token and broker URL."""

    name: str
    tier: str
    token: str
    broker_url: str

    @property
    def broker_user(self) -> str:
        return urllib.parse.unquote(urllib.parse.urlsplit(self.broker_url).username or "")


@pytest.fixture
def caller(web, broker_url, management):
    """``caller(name, tier)``: a tenant with its API token and its own RabbitMQ user
    (made by ``manage.py tenant_broker_user``, removed after the test)."""
    users: list[str] = []

    def make(name: str, tier: str = "premium") -> Caller:
        _, token = tenant_create(name=name, tier=tier)
        made = Caller(name, tier, token, manage(broker_url, "tenant_broker_user", name))
        users.append(made.broker_user)
        return made

    yield make
    for user in users:  # users are node-wide; the run's vhost goes, they would stay
        try:
            management.request("DELETE", "users/" + Management.q(user))
        except Exception:  # noqa: BLE001 - already gone
            pass


def queue_names(management) -> set[str]:
    return {q["name"] for q in management.queues(settings.TEST_VHOST)}


def exchange_names(management) -> set[str]:
    return {x["name"] for x in management.get("exchanges/" +
                                              Management.q(settings.TEST_VHOST))}


def take_all(broker_url: str, queue: str) -> list:
    """Every message waiting in ``queue``, read off it (as the platform's operator)."""
    taken = []
    with Connection(broker_url, connect_timeout=5) as conn:
        bound = Queue(queue, no_declare=True)(conn.default_channel)
        while (message := bound.get(no_ack=True)) is not None:
            taken.append(message)
    return taken


def post_job(api_url: str, token: str, task: str, params: dict) -> str:
    request = urllib.request.Request(
        f"{api_url}/api/v1/jobs", data=json.dumps({"task": task, "params": params}).encode(),
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 202
        return json.load(answer)["id"]


@pytest.fixture(scope="session")
def client_target(tmp_path_factory) -> Path:
    """``client/`` installed on its own into a directory as a service would (``pip install
    ./client``), with no dependency (Celery is the virtualenv's). Its one build requirement,
    setuptools, pinned in client/pyproject.toml, comes from the configured package index."""
    target = tmp_path_factory.mktemp("client-install")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--disable-pip-version-check", "--target", str(target), str(REPO / "client")],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return target


#: The start of every script run alone: prove the platform is out of reach.
ALONE = """
    import json, sys

    class NotInAServicesVirtualenv:
        # The virtualenv has the platform's requirements; a service's has only the client's.
        # kombu imports Django when it finds it (kombu.utils.json): hide it, as it would be.
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("django", "rest_framework"):
                raise ModuleNotFoundError("No module named " + repr(name), name=name)

    sys.meta_path.insert(0, NotInAServicesVirtualenv())
    REPO, PLATFORM = {repo!r}, {platform!r}
    assert not any(p.rstrip("/") in (REPO, PLATFORM) for p in sys.path), sys.path
    for name in ("jobs", "routing", "switchyard"):
        try:
            __import__(name)
        except ImportError:
            pass
        else:
            raise AssertionError(name + " is importable: the platform is on the path")
    import switchyard_client

    def loaded(names):
        return sorted({{m.split(".")[0] for m in sys.modules}} & set(names))
""".format(repo=str(REPO), platform=str(REPO / "platform"))


def run_alone(target: Path, script: str, *args: str, cwd: Path) -> dict:
    """Run ``script`` with the installed client and the virtualenv's packages only: neither
    the repository nor platform/ is on its path (``ALONE`` checks it first, then imports
    the client). It prints one JSON line, returned."""
    code = textwrap.dedent(ALONE) + textwrap.dedent(script)
    done = subprocess.run([sys.executable, "-c", code, *args],
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(target)},
                          cwd=cwd, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_client_installs_alone_and_imports_nothing_of_the_platform(client_target, lanes_empty,
                                                                   tmp_path):
    # Given the installed client, a catalogue and the run's vhost (as guest: no tenant user
    # is needed to check imports)
    api = StubApi()
    api.routes["/api/v1/tasks"] = (200, PREMIUM_CATALOGUE)
    try:
        # When a process with no access to the repository connects and publishes
        seen = run_alone(client_target, """
            app = switchyard_client.connect(sys.argv[1], api_url=sys.argv[2], token="sy_x")
            sent = app.signature("demo.quick_task").delay(1)
            print(json.dumps({"file": switchyard_client.__file__, "id": sent.id,
                              "loaded": loaded(sys.argv[3].split(","))}))
        """, lanes_empty, api.url, ",".join(PLATFORM_MODULES), cwd=tmp_path)
    finally:
        api.close()
    # Then it used the installed copy, loaded nothing of the platform, and its message is
    # in the quick lane
    assert seen["file"].startswith(str(client_target))
    assert seen["loaded"] == []
    assert [m.headers["id"] for m in take_all(lanes_empty, "quick")] == [seen["id"]]


def test_catalogue_gives_each_tenant_the_routes_of_its_tier(web, broker_url):
    _, premium = tenant_create(name="cat-premium", tier="premium")
    _, standard = tenant_create(name="cat-standard", tier="standard")
    for token, tier, band in ((premium, "premium", (5, 9)), (standard, "standard", (0, 4))):
        app = switchyard_client.connect(broker_url, api_url=web, token=token)
        quick = app.catalogue.route("demo.quick_task")
        slow = app.catalogue.route("demo.slow_task")
        assert (quick.exchange, quick.routing_key, quick.priority_band) == (
            "tasks", f"quick.{tier}.demo.quick_task", band)
        assert (slow.lane, slow.routing_key, slow.positional) == (
            "slow", f"slow.{tier}.demo.slow_task", ("seconds",))
        with pytest.raises(switchyard_client.UnknownTask, match="demo.poison"):
            app.catalogue.route("demo.poison")  # not public: not in the catalogue


def test_calls_land_in_their_lane_with_their_tiers_key_band_and_user_id(caller, web,
                                                                         management,
                                                                         broker_url,
                                                                         client_target,
                                                                         tmp_path):
    # Given two tenants' services, each with its own broker user, and no worker running
    premium, standard = caller("route-premium", "premium"), caller("route-standard", "standard")
    queues_before, exchanges_before = queue_names(management), exchange_names(management)

    # When they call as the field reports do, each from a process of its own
    sent = run_alone(client_target, """
        premium = switchyard_client.connect(sys.argv[1], api_url=sys.argv[3], token=sys.argv[4])
        standard = switchyard_client.connect(sys.argv[2], api_url=sys.argv[3],
                                             token=sys.argv[5])
        quick_task = premium.signature("demo.quick_task")
        slow_task = premium.remote_task("demo.slow_task")
        sent = {  # job id: (tenant, lane, AMQP priority expected)
            quick_task.delay(1).id: ("premium", "quick", 7),  # no priority: place(None)
            quick_task.apply_async(kwargs={"x": 2}, queue="test").id: ("premium", "quick", 7),
            quick_task.apply_async(args=[100], queue="quick_tasks", priority=0).id:
                ("premium", "quick", 5),
            slow_task.apply_async(args=[10], queue="slow_tasks", priority=9).id:
                ("premium", "slow", 9),
            premium.send_task("demo.slow_task", args=[1], countdown=60, priority=7,
                              link=premium.signature("demo.quick_task")).id:
                ("premium", "slow", 8),
            standard.signature("demo.quick_task").apply_async(
                args=[3], priority=9, routing_key="quick.premium.demo.quick_task").id:
                ("standard", "quick", 4),
            standard.signature("demo.quick_task").apply_async(args=[4], expires=600).id:
                ("standard", "quick", 2),
        }
        try:
            premium.send_task("demo.no_such_task", args=[1])
        except switchyard_client.UnknownTask as exc:
            unknown = str(exc)
        print(json.dumps({"sent": sent, "unknown": unknown}))
    """, premium.broker_url, standard.broker_url, web, premium.token, standard.token,
        cwd=tmp_path)

    # Then each message is in its task's lane, on its tenant's tier's key, in its band,
    # with its tenant's broker user as user_id; the unknown task sent nothing
    assert "'demo.no_such_task'" in sent["unknown"] and "/api/v1/tasks" in sent["unknown"]
    callers = {"premium": premium, "standard": standard}
    found = {}
    for lane in ("quick", "slow"):
        for message in take_all(broker_url, lane):
            found[message.headers["id"]] = (lane, message)
    assert set(found) == set(sent["sent"])
    for job_id, (who, lane, priority) in sent["sent"].items():
        seen_lane, message = found[job_id]
        task = message.headers["task"]
        assert seen_lane == lane
        assert message.delivery_info["exchange"] == "tasks"
        assert message.delivery_info["routing_key"] == f"{lane}.{who}.{task}"
        assert message.properties["priority"] == priority
        assert message.properties["user_id"] == callers[who].broker_user
        assert message.content_type == "application/json"
        # no per-message TTL: an expired message would be dead-lettered with no job record
        assert "expiration" not in message.properties
    # and nothing was declared: no queue "test", "quick_tasks" or "celery", no exchange
    assert queue_names(management) == queues_before
    assert exchange_names(management) == exchanges_before


def test_results_come_back_through_the_job_api(web, start_role, management, broker_url):
    # Given jobs submitted through the REST API and a quick worker running them
    _, token = tenant_create(name="results-co", tier="premium")
    _, other_token = tenant_create(name="results-other", tier="premium")
    worker = start_lane(start_role, management, "quick", concurrency=1)
    ok = post_job(web, token, "demo.quick_task", {"x": {"answer": 42}})
    bad = post_job(web, token, "demo.flaky", {"fail_runs": 1})
    app = switchyard_client.connect(broker_url, api_url=web, token=token)

    # Then AsyncResult reads each outcome as Celery's would
    assert app.AsyncResult(ok).get(timeout=30) == {"answer": 42}
    done = app.AsyncResult(ok)
    assert (done.status, done.ready(), done.successful(), done.result) == (
        "SUCCESS", True, True, {"answer": 42})
    with pytest.raises(switchyard_client.JobFailed, match="run 1 of 1 planned failures"):
        app.AsyncResult(bad).get(timeout=30)
    failed = app.AsyncResult(bad)
    assert (failed.status, failed.ready(), failed.successful()) == ("FAILURE", True, False)
    assert "run 1 of 1 planned failures" in failed.result.error
    unknown = app.AsyncResult(str(uuid.uuid4()))
    assert (unknown.status, unknown.ready()) == ("PENDING", False)
    # Another tenant's job is not the caller's: as unknown
    other = switchyard_client.connect(broker_url, api_url=web, token=other_token)
    assert other.AsyncResult(ok).status == "PENDING"
    started = time.monotonic()
    with pytest.raises(celery.exceptions.TimeoutError, match="did not finish within 1 s"):
        other.AsyncResult(ok).get(timeout=1)
    assert time.monotonic() - started < 2
    worker.assert_running()


def test_field_reports_code_runs_through_the_client(caller, start_role, management, web,
                                                   client_target, tmp_path):
    # Given a standard tenant's service, both lanes' workers (one slow process) and the
    # dispatcher (a countdown is kept in the job table until due)
    service = caller("reports-co", "standard")
    slow = start_lane(start_role, management, "slow", concurrency=1)
    quick = start_lane(start_role, management, "quick", concurrency=1)
    dispatcher = start_role("dispatcher")
    roles = [slow, quick, dispatcher]

    # When the reports' calling code runs in a process importing nothing of the platform
    seen = run_alone(client_target, """
        import time
        app = switchyard_client.connect(sys.argv[1], api_url=sys.argv[2], token=sys.argv[3])

        # Second report, run_tasks.py (1 s sleeps, not 10 to 99 s)
        slow_task = app.signature("demo.slow_task")
        quick_task = app.signature("demo.quick_task")
        slow = [slow_task.delay(1) for i in range(10)]
        started = time.monotonic()
        first = quick_task.delay(100)
        first_result = first.get(timeout=30)
        quick_seconds = time.monotonic() - started
        slow_done_by_then = sum(r.ready() for r in slow)
        routed = quick_task.apply_async(args=[100], queue="quick_tasks").get(timeout=30)
        also_slow = slow_task.apply_async(args=[0], queue="slow_tasks")

        # First report: apply_async(kwargs=..., queue=...) and delay(list_of_ids)
        test = app.signature("demo.quick_task")
        by_kwargs = test.apply_async(kwargs={"x": {"file_id": 7, "user_id": 3}},
                                     queue="test").get(timeout=30)
        generate_test_batch = app.signature("demo.quick_task")
        batch = generate_test_batch.delay(["11", "12"]).get(timeout=30)
        later = app.send_task("demo.quick_task", args=["later"], countdown=1, priority=7,
                              link=app.signature("demo.quick_task"))
        later_result = later.get(timeout=30)
        slow_results = [r.get(timeout=60) for r in [*slow, also_slow]]
        print(json.dumps({
            "first": first_result, "quick_seconds": quick_seconds,
            "slow_done_by_then": slow_done_by_then, "routed": routed,
            "by_kwargs": by_kwargs, "batch": batch, "later": later_result,
            "later_id": later.id, "slow": slow_results,
            "loaded": loaded(sys.argv[4].split(","))}))
    """, service.broker_url, web, service.token, ",".join(PLATFORM_MODULES), cwd=tmp_path)

    # Then every call got its result; the quick one did not wait for the slow backlog
    assert seen["loaded"] == []
    assert (seen["first"], seen["routed"], seen["by_kwargs"], seen["batch"], seen["later"]) == (
        100, 100, {"file_id": 7, "user_id": 3}, ["11", "12"], "later")
    assert seen["slow"] == [1.0] * 10 + [0.0]
    assert seen["quick_seconds"] < 5 and seen["slow_done_by_then"] <= 5
    # and the link ran with the parent's result as its first argument
    wait_until(lambda: Job.objects.filter(parent_id=seen["later_id"],
                                          status=Job.Status.SUCCEEDED).exists(), 30,
               "the linked job", roles=roles)
    assert Job.objects.get(parent_id=seen["later_id"]).result == "later"
    jobs = Job.objects.filter(tenant__name="reports-co")
    assert set(jobs.values_list("status", flat=True)) == {Job.Status.SUCCEEDED}
    assert set(jobs.values_list("tier", flat=True)) == {"standard"}
