"""The task catalogue, as one tenant sees it: where each task's messages go.

``GET /api/v1/tasks`` lists, for the calling tenant, each task's ``routing_key``
(``<lane>.<tier>.<task>``), its ``exchange``, ``priority_band`` (the tenant's tier's
absolute AMQP priorities, ``[low, high]``, higher served first) and ``positional``
(the parameter names positional arguments fill). The client fetches it once, keeps
it ``ttl`` seconds, and fetches it again on a name it does not know, so a task
deployed a moment ago is found at once.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import priorities
from .api import Api
from .errors import ApiError, CatalogueError, UnknownTask

logger = logging.getLogger(__name__)

#: What the client needs of each entry to publish.
REQUIRED_FIELDS = ("routing_key", "priority_band")


@dataclass(frozen=True)
class TaskRoute:
    """Where one task's messages go for this tenant, and how its priorities are placed."""

    name: str
    lane: str
    routing_key: str
    priority_band: tuple[int, int]
    exchange: str = priorities.EXCHANGE_NAME
    positional: tuple[str, ...] = ()
    description: str = ""

    @property
    def tier(self) -> str:
        """The tier part of the routing key (``premium`` in ``quick.premium.demo.x``)."""
        return self.routing_key.split(".", 2)[1]

    def place(self, relative: object) -> int:
        """The absolute AMQP priority for a caller's relative one (0..9, ``None``: default);
        ``ValueError`` for anything else, as the REST API answers 400."""
        return priorities.place(self.priority_band, priorities.check_relative(relative))

    @classmethod
    def from_entry(cls, entry: dict[str, Any], source: str) -> TaskRoute:
        """Build from one catalogue entry; ``CatalogueError`` says what is missing."""
        name = entry.get("name")
        missing = [f for f in REQUIRED_FIELDS if f not in entry]
        if missing:
            raise CatalogueError(
                f"the catalogue at {source} gives no {' or '.join(missing)} for task {name!r}: "
                "the platform predates Celery-native routing by catalogue, so the client "
                "cannot tell where its messages go; upgrade the platform")
        key = entry["routing_key"]
        parts = key.split(".", 2) if isinstance(key, str) else []
        if len(parts) != 3 or not all(parts) or parts[2] != name:
            raise CatalogueError(f"the catalogue at {source} gives task {name!r} the routing "
                                 f"key {key!r}, not <lane>.<tier>.{name}")
        band = entry["priority_band"]
        if (not isinstance(band, (list, tuple)) or len(band) != 2
                or not all(isinstance(b, int) and not isinstance(b, bool) for b in band)
                or not 0 <= band[0] <= band[1] <= priorities.MAX_PRIORITY):
            raise CatalogueError(f"the catalogue at {source} gives task {name!r} the priority "
                                 f"band {band!r}, not [low, high] within "
                                 f"0..{priorities.MAX_PRIORITY}")
        return cls(name=name, lane=entry.get("lane") or parts[0], routing_key=key,
                   priority_band=(band[0], band[1]),
                   exchange=entry.get("exchange") or priorities.EXCHANGE_NAME,
                   positional=tuple(entry.get("positional") or ()),
                   description=entry.get("description") or "")


class Catalogue:
    """The catalogue of one API, cached for ``ttl`` seconds, refreshed on a miss.

    Thread-safe. When a refresh fails (the API is down) the entries already fetched
    keep being used, so publishing does not depend on the API being up every minute.
    """

    def __init__(self, api: Api, *, ttl: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.api = api
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] = {}
        self._routes: dict[str, TaskRoute] = {}
        self._lanes: frozenset[str] = frozenset()
        self._fetched_at: float | None = None

    @property
    def source(self) -> str:
        return f"{self.api.base_url}/api/v1/tasks"

    def refresh(self) -> None:
        """Fetch the catalogue now; ``CatalogueError`` if it cannot be fetched."""
        try:
            listed = self.api.tasks()
        except ApiError as exc:
            raise CatalogueError(f"cannot fetch the task catalogue: {exc}") from exc
        entries = {e["name"]: e for e in listed if isinstance(e, dict) and e.get("name")}
        lanes = frozenset(e["lane"] for e in entries.values() if isinstance(e.get("lane"), str))
        with self._lock:
            self._entries = entries
            self._routes = {}
            self._lanes = lanes
            self._fetched_at = self._clock()

    def _fresh(self) -> bool:
        return self._fetched_at is not None and self._clock() - self._fetched_at < self.ttl

    def _refresh_or_keep(self) -> None:
        try:
            self.refresh()
        except CatalogueError:
            if self._fetched_at is None:
                raise
            logger.warning("task catalogue refresh failed; using the one fetched %.0f s ago",
                           self._clock() - self._fetched_at, exc_info=True)

    def route(self, name: str, *, role: str = "") -> TaskRoute:
        """Where ``name``'s messages go; ``UnknownTask`` if the catalogue has no such task
        (after fetching it again), ``CatalogueError`` if it cannot say."""
        if not self._fresh():
            self._refresh_or_keep()
        if name not in self._entries:
            # A miss: the task may have been deployed since the last fetch.
            self.refresh()
            if name not in self._entries:
                raise UnknownTask(name, self.api.base_url, role=role)
        with self._lock:
            found = self._routes.get(name)
            if found is None:
                found = self._routes[name] = TaskRoute.from_entry(self._entries[name],
                                                                  self.source)
        return found

    def lanes(self) -> frozenset[str]:
        """The lanes the catalogue names (those a routing key may start with)."""
        return self._lanes

    def names(self) -> list[str]:
        if not self._fresh():
            self._refresh_or_keep()
        return sorted(self._entries)
