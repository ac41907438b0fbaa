"""Hypothesis properties of the routing keys and the priority mapping (no broker, no Django).

The examples in test_routing_topology.py pin the known cases; these search the whole
input space: any relative priority, any absolute one found on a message, any task name,
any tier a header may claim.
"""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from routing import celery_config, priorities, topology

tiers = st.sampled_from(priorities.TIERS)
lanes = st.sampled_from(topology.LANES)
relative = st.one_of(st.none(), st.integers(-10**6, 10**6))
absolute = st.one_of(st.none(), st.integers(-10**6, 10**6))
# Task names as Celery registers them: dotted words (never the topic wildcards * and #).
task_names = st.lists(st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True),
                      min_size=1, max_size=5).map(".".join)
claimed_tiers = st.one_of(st.none(), st.sampled_from([t.name for t in priorities.TIERS]),
                          st.text(max_size=12))


@given(tier=tiers, asked=relative)
def test_place_lands_in_the_band_whatever_is_asked(tier, asked):
    assert tier.place(asked) in tier


@given(tier=tiers, a=st.integers(-100, 100), b=st.integers(-100, 100))
def test_place_is_monotone_in_the_relative_priority(tier, a, b):
    low, high = sorted((a, b))
    assert tier.place(low) <= tier.place(high)


@given(tier=tiers)
def test_place_reaches_both_ends_of_the_band(tier):
    assert tier.place(priorities.RELATIVE_MIN) == tier.low
    assert tier.place(priorities.RELATIVE_MAX) == tier.high


@given(standard_asks=relative, premium_asks=relative, found=absolute)
def test_any_premium_priority_is_served_before_any_standard_one(standard_asks, premium_asks,
                                                                found):
    # On RabbitMQ a higher number is delivered first.
    assert priorities.PREMIUM.place(premium_asks) > priorities.STANDARD.place(standard_asks)
    assert priorities.PREMIUM.clamp(found) > priorities.STANDARD.clamp(found)


@given(tier=tiers, found=absolute)
def test_clamp_lands_in_the_band_and_rechecking_never_drifts(tier, found):
    once = tier.clamp(found)
    assert once in tier
    assert tier.clamp(once) == once
    if found is not None and found in tier:
        assert once == found


@given(lane=lanes, tier=tiers, task=task_names)
def test_a_routing_key_matches_exactly_its_lanes_binding_and_carries_the_tier(lane, tier, task):
    key = celery_config.route_for(task, lane.name, tier.name)["routing_key"]
    assert topology.queues_for_key(key) == [lane.queue]
    assert topology.queues_for_key(key, dead=True) == [lane.dead_queue]
    matching = [ln.name for ln in topology.LANES if topology.topic_matches(ln.binding_key, key)]
    assert matching == [lane.name]
    assert topology.parse_routing_key(key) == (lane.name, tier.name, task)


@given(lane=lanes, key_tier=tiers, claimed=claimed_tiers, task=task_names, priority=absolute)
def test_publish_guard_never_gives_a_message_more_than_its_key_or_header(lane, key_tier, claimed,
                                                                         task, priority):
    headers = {} if claimed is None else {celery_config.TIER_HEADER: claimed}
    properties = {} if priority is None else {"priority": priority}
    key = topology.routing_key(lane.name, key_tier.name, task)
    celery_config.enforce_on_publish(headers, properties, key)
    final = priorities.tier(headers[celery_config.TIER_HEADER])
    assert properties["priority"] in final
    # Never above the key's band, never above a valid claimed band, never an unknown name
    assert final.low <= key_tier.low
    if claimed in priorities.TIERS_BY_NAME:
        assert final.low <= priorities.tier(claimed).low
    else:
        assert final == priorities.DEFAULT_TIER


@given(lane=lanes, claimed=claimed_tiers, task=task_names)
def test_router_routes_an_unknown_tier_claim_to_the_lowest_band(lane, claimed, task):
    router = celery_config.make_router(lambda name: lane.name)
    headers = {} if claimed is None else {celery_config.TIER_HEADER: claimed}
    route = router(task, (), {}, {"headers": headers})
    _, key_tier, _ = topology.parse_routing_key(route["routing_key"])
    expected = claimed if claimed in priorities.TIERS_BY_NAME else priorities.DEFAULT_TIER.name
    assert key_tier == expected and route["queue"] == lane.queue
