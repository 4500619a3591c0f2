"""One revision's gate: its ready instances, a breaker per instance, and the FIFO of requests waiting for a slot.

Everything here runs synchronously on the event loop, so counts need no locks, and a slot that frees up is
handed straight to the oldest waiter (the waiter owns the reservation before it even wakes): nobody can
overtake the queue, and a slot is never lost between a release and a wake-up.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import OrderedDict
from collections.abc import Callable, Iterable

from .balancing import choose
from .poke import REPOKE_INTERVAL_S, poke_due

log = logging.getLogger("ferry.activator")

Address = tuple[str, int]
NO_AVOID: frozenset[Address] = frozenset()


class QueueFull(Exception):
    """The revision already holds `queue_limit` waiting requests."""


class RevisionRemoved(Exception):
    """The revision was removed from ferry (or the activator is closing) while the request waited."""


class Instance:
    """A ready instance as the activator sees it: where it is and how many of our requests it has now."""

    __slots__ = ("address", "in_flight", "listed")

    def __init__(self, address: Address):
        self.address = address
        self.in_flight = 0
        self.listed = True
        """False once ferry dropped it: no new request goes there; it is forgotten when its last one ends."""

    def __repr__(self) -> str:
        return f"Instance({self.address[0]}:{self.address[1]}, in_flight={self.in_flight}, listed={self.listed})"


class RevisionGate:
    """Holds a revision's requests until an instance has a free slot, and counts what it holds."""

    def __init__(self, name: str, *, concurrency: int, timeout_s: float, queue_limit: int,
                 on_demand: Callable[[str], None], rng: random.Random, loop: asyncio.AbstractEventLoop,
                 response_start_s: float | None = None):
        self.name = name
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.response_start_s = response_start_s
        """An instance that has the request must start its response within this (Knative's
        responseStartTimeoutSeconds); None: only the timeout bounds it."""
        self.requests_total = 0
        self.proxied = 0
        """Reservations held: requests being proxied (or about to be) to one of the instances."""
        self._queue_limit = queue_limit
        self._on_demand = on_demand
        self._rng = rng
        self._loop = loop
        self._ready: list[Instance] = []
        self._known: dict[Address, Instance] = {}
        """Ready instances plus dropped ones still finishing requests, so in-flight counts stay exact."""
        self._waiters: OrderedDict[asyncio.Future[Instance], frozenset[Address]] = OrderedDict()
        """Oldest first; the value is the instances that request must not use (they refused it already)."""
        self._cursor = 0
        self._last_poke: float | None = None
        self._repoke_timer: asyncio.TimerHandle | None = None
        self._removed_reason: str | None = None

    # -- what ferry tells us ---------------------------------------------------------------------------

    def update(self, endpoints: Iterable[Address], *, concurrency: int, timeout_s: float,
               response_start_s: float | None = None) -> None:
        """Replace the ready set. A dropped instance gets no new request; its running ones go on."""
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.response_start_s = response_start_s
        ready: list[Instance] = []
        listed: set[Address] = set()
        for host, port in endpoints:
            address = (str(host), int(port))
            if address in listed:
                continue
            listed.add(address)
            instance = self._known.get(address)
            if instance is None:
                instance = self._known[address] = Instance(address)
            instance.listed = True
            ready.append(instance)
        for instance in self._ready:
            if instance.address not in listed:
                instance.listed = False
                if instance.in_flight == 0:
                    del self._known[instance.address]
        self._ready = ready
        if ready:
            self._last_poke = None  # this wake-up is over: the next time at zero pokes at once
            self._cancel_repoke()
            self._dispatch()
        else:
            self._poke_if_due()  # requests that waited for a free slot now wait for an instance

    def poke_again(self) -> None:
        """Ask for a wake-up now if requests wait with no instance, even if one was asked for already (a
        restarted ferry has not heard it)."""
        self._last_poke = None
        self._cancel_repoke()
        self._poke_if_due()

    def remove(self, reason: str) -> None:
        """Fail every waiting request with `reason`; requests being proxied finish normally."""
        self._removed_reason = reason
        self._cancel_repoke()
        waiters, self._waiters = self._waiters, OrderedDict()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(RevisionRemoved(reason))

    # -- what requests do ------------------------------------------------------------------------------

    async def acquire(self, avoid: frozenset[Address] = NO_AVOID) -> Instance:
        """An instance with a slot reserved for the caller, who must `release` it.

        Waits in FIFO order; raises QueueFull at once when the queue is at its limit, RevisionRemoved when the
        revision goes away. Cancelling the caller (timeout, client gone) frees its place immediately."""
        if self._removed_reason is not None:
            raise RevisionRemoved(self._removed_reason)
        if not self._waiters:
            instance = self._reserve(avoid)
            if instance is not None:
                return instance
        if len(self._waiters) >= self._queue_limit:
            raise QueueFull(len(self._waiters))
        waiter: asyncio.Future[Instance] = self._loop.create_future()
        self._waiters[waiter] = avoid
        self._poke_if_due()
        try:
            return await waiter
        except BaseException:
            handed_over = self._waiters.pop(waiter, None) is None and waiter.done() and not waiter.cancelled()
            if handed_over and waiter.exception() is None:
                # Handed a slot just as we were cancelled: give it back.
                self.release(waiter.result())
            raise

    def release(self, instance: Instance) -> None:
        """The request on `instance` ended: its slot goes to the oldest waiter, if any."""
        instance.in_flight -= 1
        self.proxied -= 1
        if not instance.listed and instance.in_flight == 0 and self._known.get(instance.address) is instance:
            del self._known[instance.address]
        if self._waiters:
            self._dispatch()

    # -- counts ----------------------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def in_flight(self, address: Address) -> int:
        instance = self._known.get(address)
        return instance.in_flight if instance is not None else 0

    # -- inside ----------------------------------------------------------------------------------------

    def _reserve(self, avoid: frozenset[Address]) -> Instance | None:
        instances = self._ready
        if avoid:
            instances = [instance for instance in instances if instance.address not in avoid]
        choice = choose(instances, self.concurrency, self._cursor, self._rng)
        if choice.index is None:
            return None
        if not avoid:  # a filtered list's cursor means nothing for the full one
            self._cursor = choice.cursor
        instance = instances[choice.index]
        instance.in_flight += 1
        self.proxied += 1
        return instance

    def _dispatch(self) -> None:
        """Hand free slots to waiters, oldest first, until there are no waiters or no free slots."""
        if not self._ready:
            return
        waiters = self._waiters
        blocked: list[tuple[asyncio.Future[Instance], frozenset[Address]]] = []
        while waiters:
            waiter, avoid = waiters.popitem(last=False)
            if waiter.done():  # cancelled; its task has not run its cleanup yet
                continue
            instance = self._reserve(avoid)
            if instance is None:
                blocked.append((waiter, avoid))
                if not avoid:
                    break  # no free slot anywhere
                continue  # only instances this request already failed on are free; later ones may fit
            waiter.set_result(instance)
        for waiter, avoid in reversed(blocked):
            waiters[waiter] = avoid
            waiters.move_to_end(waiter, last=False)

    def _poke_if_due(self) -> None:
        now = self._loop.time()
        if poke_due(self._last_poke, now, has_endpoints=bool(self._ready), waiting=len(self._waiters)):
            self._last_poke = now
            log.debug("waking revision", extra={"revision": self.name, "waiting": len(self._waiters)})
            try:
                self._on_demand(self.name)
            except Exception:
                log.exception("on_demand failed", extra={"revision": self.name})
        if self._ready or not self._waiters or self._repoke_timer is not None or self._last_poke is None:
            return
        # A millisecond late, so the loop's clock resolution cannot make the timer fire just before it is due.
        self._repoke_timer = self._loop.call_at(self._last_poke + REPOKE_INTERVAL_S + 0.001, self._repoke)

    def _repoke(self) -> None:
        self._repoke_timer = None
        self._poke_if_due()

    def _cancel_repoke(self) -> None:
        if self._repoke_timer is not None:
            self._repoke_timer.cancel()
            self._repoke_timer = None
