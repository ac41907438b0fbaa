"""Shared fixtures: the run's own RabbitMQ vhost, and the broker-availability policy.

Tests marked ``rabbitmq`` get the ``broker_url`` of a vhost created for this
run and deleted after it. When RabbitMQ (or its management API) cannot be
reached they are skipped on a laptop and FAIL under ``CI=true`` (which ``make test``
sets): CI must never pass by skipping the tests that matter. Any other skip fails under
``CI=true`` too (tests/skip_policy.py); ``SWITCHYARD_ALLOW_SKIPS=1`` lets them all skip
and lists them in the summary.
"""
from __future__ import annotations

import os

import pytest
from django.conf import settings
from hypothesis import settings as hypothesis_settings

from routing.management import Management, ManagementError
from tests import background_bench
from tests.browser_support import browser, offline_browser  # noqa: F401 - fixtures
from tests.skip_policy import (  # noqa: F401 - pytest's hooks, taken by this conftest
    pytest_runtest_makereport,
    pytest_terminal_summary,
    skips_fail,
)

# Property tests and fuzzers (tests/test_fuzz_*.py) are derandomized: every run tries the
# same examples, so a failure in CI is reproduced by running the same test locally. No
# example database is written into the work tree. SWITCHYARD_FUZZ=explore searches anew.
hypothesis_settings.register_profile("switchyard", derandomize=True, database=None,
                                     deadline=None)
hypothesis_settings.register_profile("explore", database=None, deadline=None)
hypothesis_settings.load_profile(
    "explore" if os.environ.get("SWITCHYARD_FUZZ") == "explore" else "switchyard")

# A missing broker, database or browser fails the test rather than skipping it.
IN_CI = skips_fail()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("rabbitmq") or item.get_closest_marker("workers"):
            item.fixturenames.insert(0, "broker_vhost")
    # The bench smoke run goes on in the background while the other tests run; its test
    # comes after them, and the tests that stop or reconfigure a shared service after it.
    smoke = [item for item in items if item.nodeid == background_bench.SMOKE_TEST]
    if smoke and not config.option.collectonly:
        exclusive = [item for item in items if item.get_closest_marker("exclusive")]
        items[:] = [item for item in items if item not in smoke and item not in exclusive] \
            + smoke + exclusive
        background_bench.start()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    background_bench.stop()  # a session that ended before its smoke test (-x, a failure)


@pytest.fixture(autouse=True)
def _exclusive_after_the_bench(request: pytest.FixtureRequest) -> None:
    """An ``exclusive`` test waits for the background bench run to end."""
    if request.node.get_closest_marker("exclusive"):
        background_bench.wait(timeout=1500)


def _unreachable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"RabbitMQ is required under CI=true and is not usable: {reason} "
                    "(tools/local-services test starts it)")
    pytest.skip(f"RabbitMQ not usable here ({reason}); start it with `rabbitmq-server -detached`")


@pytest.fixture(scope="session")
def management() -> Management:
    return Management.for_broker(settings.CELERY_BROKER_URL)


@pytest.fixture(scope="session")
def broker_vhost(management: Management):
    """Create this run's vhost (and delete it, with every message in it, at the end)."""
    vhost = settings.TEST_VHOST
    try:
        management.create_vhost(vhost)
    except ManagementError as exc:
        _unreachable(str(exc))
    yield vhost
    management.delete_vhost(vhost)
    # Tenants' broker users (manage.py tenant_broker_user) are node-wide: remove this run's.
    for user in management.get("users") or []:
        if user["name"].startswith(settings.SWITCHYARD_BROKER_USER_PREFIX):
            management.delete_user(user["name"])


@pytest.fixture(scope="session")
def broker_url(broker_vhost: str) -> str:
    """AMQP URL of this run's vhost."""
    return settings.CELERY_BROKER_URL


@pytest.fixture(scope="session")
def topology_applied(broker_url: str) -> str:
    """Declare the whole topology (exchanges, lanes, dead-letter queues) in the run's vhost."""
    from kombu import Connection

    from routing import topology

    with Connection(broker_url, connect_timeout=5) as conn:
        channel = conn.default_channel
        for exchange in topology.EXCHANGES:
            exchange(channel).declare()
        for spec in topology.queue_specs():
            spec.to_kombu()(channel).declare()
    return broker_url


@pytest.fixture
def lanes_empty(topology_applied: str):
    """Purge every queue of the topology before and after a test."""
    from kombu import Connection

    from routing import topology

    def purge() -> None:
        with Connection(topology_applied, connect_timeout=5) as conn:
            for spec in topology.queue_specs():
                spec.to_kombu()(conn.default_channel).purge()

    purge()
    yield topology_applied
    purge()


@pytest.fixture
def role_env_defaults() -> dict[str, str]:
    """Environment every started role gets unless the call says otherwise."""
    return {}


@pytest.fixture
def start_role(transactional_db, lanes_empty, tmp_path, role_env_defaults):
    """Start role scripts (``start_role("worker", "slow")``); all are stopped after the test."""
    from tests.processes import Role, role_env

    started: list = []

    def start(script: str, *args: str, name: str | None = None, **env: str):
        role = Role(name or "-".join((script, *args)), [script, *args],
                    role_env(lanes_empty, **{**role_env_defaults, **env}), tmp_path)
        started.append(role)
        return role

    yield start
    for role in reversed(started):
        role.stop()


@pytest.fixture
def witness_dir(tmp_path):
    """An empty folder the ``demo.witness`` tasks of this test's workers note their runs in
    (``SWITCHYARD_WITNESS_DIR``; ``tests.drills.witnessed_runs`` reads it)."""
    directory = tmp_path / "witness"
    directory.mkdir()
    return directory
