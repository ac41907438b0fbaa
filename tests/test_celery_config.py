"""What the Celery app is configured with, and the contract it enforces on publish."""
from __future__ import annotations

import pytest
from django.conf import settings

import routing.celery_config as rc
from routing import priorities, topology
from switchyard.celery import app, startup_problems
from switchyard.worker import Consumer


def test_reliability_settings():
    conf = app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_cancel_long_running_tasks_on_connection_loss is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_create_missing_queues is False
    assert conf.broker_transport_options["confirm_publish"] is True
    assert conf.task_send_sent_event is True and conf.worker_send_task_events is True


def test_json_only_never_pickle():
    conf = app.conf
    assert conf.accept_content == ["json"]
    assert conf.task_serializer == "json" and conf.result_serializer == "json"
    assert conf.event_serializer == "json"


def test_event_and_control_queues_are_exclusive():
    # RabbitMQ 4.3 refuses transient non-exclusive queues.
    assert app.conf.event_queue_exclusive is True and app.conf.event_queue_durable is False
    assert app.conf.control_queue_exclusive is True and app.conf.control_queue_durable is False


def test_task_queues_are_routings_lanes():
    declared = {q.name: q for q in app.conf.task_queues}
    assert set(declared) == {ln.name for ln in topology.LANES}
    for ln in topology.LANES:
        q = declared[ln.name]
        assert q.queue_arguments == topology.lane_queue_arguments(ln.name)
        assert q.exchange.name == "tasks" and q.exchange.type == "topic"
        assert q.routing_key == f"{ln.name}.#"
        assert q.durable and not q.auto_delete and not q.exclusive


def test_every_task_declares_a_lane_and_workers_may_start():
    assert startup_problems() == []
    ours = {n: t for n, t in app.tasks.items() if not n.startswith("celery.")}
    assert {"demo.slow_task", "demo.quick_task", "jobs.prune_finished"} <= set(ours)
    assert app.tasks["demo.slow_task"].lane == "slow"
    assert app.tasks["demo.quick_task"].lane == "quick"


def test_task_time_limits_come_from_the_lane():
    slow = app.tasks["demo.slow_task"]
    assert (slow.soft_time_limit, slow.time_limit) == (topology.SLOW.soft_time_limit,
                                                       topology.SLOW.time_limit)
    assert app.tasks["demo.quick_task"].time_limit == topology.QUICK.time_limit


def test_worker_refuses_to_start_when_a_lane_outlives_consumer_timeout(monkeypatch):
    monkeypatch.setattr(settings, "SWITCHYARD_BROKER_CONSUMER_TIMEOUT_MS", 10 * 60 * 1000)
    problems = startup_problems()
    assert len(problems) == 1
    assert "'slow'" in problems[0] and "consumer_timeout" in problems[0]


def test_lane_time_limit_must_leave_a_margin_below_consumer_timeout():
    with pytest.raises(ValueError, match="consumer_timeout"):
        topology.Lane("huge", soft_time_limit=60, time_limit=30 * 60)


def test_router_derives_exchange_key_and_queue_from_the_lane():
    router = rc.make_router(lambda name: {"media.thumbnail": "slow"}.get(name))
    route = router("media.thumbnail", (), {}, {"headers": {"tier": "premium"}})
    assert route["exchange"] == "tasks"
    assert route["routing_key"] == "slow.premium.media.thumbnail"
    assert route["queue"] == "slow"
    # No tier header: the lowest band, never a guess upwards.
    assert router("media.thumbnail", (), {}, {})["routing_key"] == "slow.standard.media.thumbnail"


def test_router_refuses_a_task_without_a_lane():
    router = rc.make_router(lambda name: None)
    with pytest.raises(rc.RoutingError, match="declares no lane"):
        router("orphan.task", (), {}, {})


def test_apply_async_routes_by_lane(monkeypatch):
    # What Celery itself would publish for a plain .apply_async() of a platform task.
    options = app.amqp.router.route({"headers": {"tier": "premium"}}, "demo.slow_task")
    assert options["routing_key"] == "slow.premium.demo.slow_task"
    assert options["queue"].name == "slow"


@pytest.mark.parametrize(
    ("tier", "asked", "expected"),
    [("standard", 9, 4), ("standard", None, priorities.STANDARD.place(None)), ("standard", 0, 0),
     ("premium", 0, 5), ("premium", 9, 9), ("premium", 7, 7), ("premium", 200, 9)],
)
def test_publish_guard_clamps_priority_into_the_band(tier, asked, expected):
    headers, props = {"tier": tier, "tenant": "acme"}, {}
    if asked is not None:
        props["priority"] = asked
    rc.enforce_on_publish(headers, props, f"slow.{tier}.demo.slow_task")
    assert props["priority"] == expected
    assert headers == {"tier": tier, "tenant": "acme"}


def test_publish_guard_fills_missing_headers_with_the_lowest_band():
    headers, props = {}, {"priority": 9}
    rc.enforce_on_publish(headers, props, "quick.standard.demo.quick_task")
    assert headers == {"tier": "standard", "tenant": rc.SYSTEM_TENANT}
    assert props["priority"] == 4


def test_publish_guard_never_lets_a_header_lift_a_standard_key():
    # A premium header on a standard routing key (or the reverse) gets the lower band.
    headers, props = {"tier": "premium"}, {"priority": 9}
    rc.enforce_on_publish(headers, props, "slow.standard.demo.slow_task")
    assert headers["tier"] == "standard" and props["priority"] == 4


def test_workers_use_switchyards_consumer():
    # What it does on a live broker is asserted in test_platform.py (per-consumer
    # prefetch, no global QoS); here: that workers are configured to use it.
    assert app.conf.worker_consumer == "switchyard.worker:Consumer"
    assert Consumer.__module__ == "switchyard.worker"
