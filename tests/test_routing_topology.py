"""Routing keys, lanes and priority bands, checked without a broker.

``topology.queues_for_key`` routes the way RabbitMQ's topic exchange does, so
a key that reached two lanes (or none) here would do the same on the broker.
"""
from __future__ import annotations

import itertools

import pytest

from routing import priorities, topology

TASK_NAMES = ("x", "resize", "media.thumbnail", "a.b.c.d", "jobs.prune_finished")
RELATIVE_VALUES = range(-5, 16)


@pytest.mark.parametrize(
    ("lane", "tier", "task"),
    list(itertools.product(topology.LANES, priorities.TIERS, TASK_NAMES)),
    ids=lambda value: getattr(value, "name", value),
)
def test_every_task_key_reaches_exactly_its_lane_and_its_dead_queue(
    lane: topology.Lane, tier: priorities.Tier, task: str
) -> None:
    key = topology.routing_key(lane.name, tier.name, task)

    assert topology.queues_for_key(key) == [lane.queue]
    assert topology.queues_for_key(key, dead=True) == [lane.dead_queue]


def test_routing_key_parses_back_even_when_the_task_name_has_dots() -> None:
    key = topology.routing_key("slow", "premium", "media.thumbnail")

    assert key == "slow.premium.media.thumbnail"
    assert topology.parse_routing_key(key) == ("slow", "premium", "media.thumbnail")


def test_a_key_of_an_unknown_lane_reaches_no_queue() -> None:
    # Unroutable rather than delivered to some lane: the router never builds such keys.
    assert topology.queues_for_key("slowish.premium.x") == []
    assert topology.queues_for_key("premium.slow.x") == []


def test_bands_never_overlap_and_lie_within_max_priority() -> None:
    for a, b in itertools.combinations(priorities.TIERS, 2):
        assert not set(range(a.low, a.high + 1)) & set(range(b.low, b.high + 1)), (a, b)
    for t in priorities.TIERS:
        assert 0 <= t.low <= t.high <= priorities.MAX_PRIORITY


def test_premium_band_is_strictly_above_standard() -> None:
    # Higher numbers are served first on RabbitMQ, so this puts premium first.
    assert priorities.PREMIUM.low > priorities.STANDARD.high


@pytest.mark.parametrize("tier", priorities.TIERS, ids=lambda t: t.name)
def test_place_always_lands_inside_the_band(tier: priorities.Tier) -> None:
    for relative in [*RELATIVE_VALUES, None]:
        assert tier.place(relative) in tier, relative


@pytest.mark.parametrize("tier", priorities.TIERS, ids=lambda t: t.name)
def test_place_is_monotonic_and_reaches_both_ends(tier: priorities.Tier) -> None:
    placed = [tier.place(r) for r in RELATIVE_VALUES]

    assert placed == sorted(placed)
    assert tier.place(priorities.RELATIVE_MIN) == tier.low
    assert tier.place(priorities.RELATIVE_MAX) == tier.high


def test_standard_never_reaches_premium_whatever_it_asks() -> None:
    highest_standard = max(priorities.STANDARD.place(r) for r in RELATIVE_VALUES)

    assert highest_standard < priorities.PREMIUM.low
    assert priorities.STANDARD.clamp(priorities.MAX_PRIORITY) < priorities.PREMIUM.low


@pytest.mark.parametrize("tier", priorities.TIERS, ids=lambda t: t.name)
def test_clamp_keeps_in_band_values_and_pulls_others_to_the_nearest_edge(
    tier: priorities.Tier,
) -> None:
    for absolute in range(tier.low, tier.high + 1):
        assert tier.clamp(absolute) == absolute
    assert tier.clamp(tier.low - 1) == tier.low
    assert tier.clamp(tier.high + 1) == tier.high
    assert tier.clamp(None) == tier.place(None)
