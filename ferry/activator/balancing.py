"""Which ready instance gets the next request: Knative's activator policies (pkg/activator/net/lb_policy.go).

Pure functions over the instances' current in-flight counts, so every policy is testable without a server:

* concurrency 0 (unlimited): power of two random choices, the less loaded of two random instances;
* concurrency 1..3: the first instance with a free slot, which packs requests onto few instances
  (Knative's reasoning: with tiny limits, spreading buys nothing and keeps more instances warm);
* concurrency > 3: round robin from a cursor, skipping instances that are full.

A policy answers the index of the instance to use, or None when every instance is full.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import NamedTuple, Protocol


class Loaded(Protocol):
    """Anything with a count of requests it is handling now."""

    in_flight: int


class Choice(NamedTuple):
    index: int | None
    """The instance to use; None when none has a free slot."""
    cursor: int
    """Where round robin starts next time; the other policies hand back the cursor they were given."""


def power_of_two_choices(instances: Sequence[Loaded], rng: random.Random) -> int | None:
    """The less loaded of two distinct random instances (ties broken at random): near-best spread at O(1)."""
    count = len(instances)
    if count == 0:
        return None
    if count == 1:
        return 0
    first = rng.randrange(count)
    second = rng.randrange(count - 1)
    if second >= first:  # draw from the others only
        second += 1
    first_load, second_load = instances[first].in_flight, instances[second].in_flight
    if first_load < second_load:
        return first
    if second_load < first_load:
        return second
    return first if rng.random() < 0.5 else second


def first_available(instances: Sequence[Loaded], concurrency: int) -> int | None:
    """The first instance below `concurrency`."""
    for index, instance in enumerate(instances):
        if instance.in_flight < concurrency:
            return index
    return None


def round_robin(instances: Sequence[Loaded], concurrency: int, cursor: int) -> Choice:
    """From `cursor` on, the first instance below `concurrency`; the cursor moves past it.

    A cursor beyond the end (the set shrank) starts again at 0, as Knative does."""
    count = len(instances)
    if cursor >= count:
        cursor = 0
    for step in range(count):
        index = (cursor + step) % count
        if instances[index].in_flight < concurrency:
            return Choice(index, index + 1)
    return Choice(None, cursor)


def choose(instances: Sequence[Loaded], concurrency: int, cursor: int, rng: random.Random) -> Choice:
    """Knative's choice of policy by the revision's container concurrency."""
    if concurrency <= 0:
        return Choice(power_of_two_choices(instances, rng), cursor)
    if concurrency <= 3:
        return Choice(first_available(instances, concurrency), cursor)
    return round_robin(instances, concurrency, cursor)
