"""Flower's Tasks page with each task's lane, tier and tenant: three columns and three filters.

Run by Flower (``monitoring.flower`` installs the state, the search engine and the two
handlers below).

Where the labels come from, and why: the **job table**, looked up by task id (a job's id
is its Celery task id) in bounded batches, and kept on Flower's own task objects.

* Flower's tasks are built from Celery events, and no event the worker sends carries
  the lane, tier or tenant: ``task-received`` has no routing key or headers, and
  ``task-sent`` (which has the routing key) is sent only by ``send_task``: the bulk
  path writes its messages without Celery, and no event carries the tenant.
* Adding them to the worker's events would change how every task's events are made
  in the worker's main process (which publishes them all), and would show the
  message's *claims*: the ``tenant`` header is only a claim when a tenant's broker
  user sends a Celery-native message (the worker runs it as the sender's own tenant,
  ``jobs.senders``), and such a message may run under a corrected lane or tier
  (``Job.received_as``). The job record holds what the platform decided.
* The lookup is bounded: a task is looked up once it is first seen (at most
  ``BATCH`` ids per query, on the primary key, every ``INTERVAL_MS``), its labels live
  and die with Flower's task object (``max_tasks`` bounds both), and a task still not
  found after ``GIVE_UP_SECONDS`` (a Celery-native message is recorded by the worker
  that runs it, so it may show a moment later; a task that is no job never will)
  falls back to the lane and tier of its routing key, if Flower saw one.

The filters act on every task Flower holds, not only the page shown: the search engine
(Flower's own, subclassed) keeps an exact index of each label, as Flower does for
``state`` and ``worker``.
"""
from __future__ import annotations

import time
import uuid
from collections import defaultdict
from dataclasses import dataclass

from django.db import close_old_connections
from flower.events import EventsState
from flower.utils.search import QuerySyntaxError, TaskSearchEngine, _remove_posting
from flower.utils.tasks import as_dict
from flower.views.tasks import TasksDataTable, TasksView, visible_task_columns
from tornado import web

from jobs.models import Job
from routing import priorities, topology

#: Ids looked up per query, and how often a batch may be sent.
BATCH = 1000
INTERVAL_MS = 500
#: Seconds after which a task not in the job table gets its routing key's labels.
GIVE_UP_SECONDS = 30.0
LABELS = ("lane", "tier", "tenant")
#: The columns this page adds, after Flower's ``state``, as Flower's own TASK_COLUMNS.
COLUMNS = {"lane": "Lane", "tier": "Tier", "tenant": "Tenant"}
#: Tenants offered in the tenant filter's suggestions.
MAX_TENANT_CHOICES = 500


@dataclass(frozen=True)
class JobLabels:
    lane: str = ""
    tier: str = ""
    tenant: str = ""


UNKNOWN = JobLabels()


def labels_of(task) -> JobLabels | None:
    """The labels set on a Flower task object, ``None`` while not looked up."""
    return getattr(task, "job_labels", None)


def set_labels(task, labels: JobLabels) -> None:
    """Keep ``labels`` on the task; also as plain attributes, which Flower's sort reads."""
    task.job_labels = labels
    task.lane, task.tier, task.tenant = labels.lane, labels.tier, labels.tenant


def labels_from_routing_key(task) -> JobLabels:
    """Lane and tier from the routing key Flower saw (``task-sent``), else none."""
    try:
        lane, tier, _ = topology.parse_routing_key(getattr(task, "routing_key", None) or "")
    except ValueError:
        return UNKNOWN
    return JobLabels(lane=lane, tier=tier)


def job_labels_lookup(task_ids: list[str]) -> dict[str, JobLabels]:
    """Labels of those ``task_ids`` that are jobs: one query on the primary key."""
    ids = []
    for task_id in task_ids:
        try:
            ids.append(uuid.UUID(task_id))
        except ValueError:  # not a Switchyard job id
            continue
    if not ids:
        return {}
    rows = Job.objects.filter(id__in=ids).values_list("id", "lane", "tier", "tenant_name")
    return {str(i): JobLabels(lane=lane, tier=tier, tenant=tenant)
            for i, lane, tier, tenant in rows}


def _lookup_on_executor(task_ids: list[str]) -> dict[str, JobLabels]:
    """Runs on Flower's executor (the ORM blocks), with a healthy connection."""
    close_old_connections()
    try:
        return job_labels_lookup(task_ids)
    finally:
        close_old_connections()


class LabelledSearchEngine(TaskSearchEngine):
    """Flower's task search, with an exact index of each task's lane, tier and tenant."""

    def __init__(self) -> None:
        super().__init__()
        self.label_postings: dict[str, defaultdict[str, set]] = {
            name: defaultdict(set) for name in LABELS}
        self._labels: dict[str, JobLabels] = {}

    def _clear(self) -> None:
        super()._clear()
        for index in self.label_postings.values():
            index.clear()
        self._labels.clear()

    def _index(self, task_id, task) -> None:
        super()._index(task_id, task)
        labels = labels_of(task)
        if labels is None:
            return
        self._labels[task_id] = labels
        for name in LABELS:
            value = getattr(labels, name)
            if value:
                self.label_postings[name][value].add(task_id)

    def remove(self, task_id) -> None:
        super().remove(task_id)
        labels = self._labels.pop(task_id, None)
        if labels is not None:
            for name in LABELS:
                value = getattr(labels, name)
                if value:
                    _remove_posting(self.label_postings[name], value, task_id)

    def labelled(self, **wanted: str) -> set[str] | None:
        """Ids of the tasks with every label given (exact values), ``None`` if none given."""
        found: set[str] | None = None
        for name, value in wanted.items():
            if not value:
                continue
            ids = self.label_postings[name].get(value, set())
            found = set(ids) if found is None else found & ids
        return found

    def values(self, name: str) -> list[str]:
        return sorted(self.label_postings[name])


class LabelledEventsState(EventsState):
    """Flower's events state, noting each task whose labels are not known yet."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.search_engine = LabelledSearchEngine()
        self.search_engine.rebuild(self.tasks.items())
        #: task id -> when first seen (monotonic), insertion order: oldest first.
        self.unlabelled: dict[str, float] = {}

    def event(self, event) -> None:
        super().event(event)
        task_id = event.get("uuid")
        if event["type"].startswith("task-") and task_id and task_id not in self.unlabelled:
            task = self.tasks.get(task_id)
            if task is not None and labels_of(task) is None:
                self.unlabelled[task_id] = time.monotonic()

    def next_batch(self, size: int = BATCH) -> list[str]:
        """Up to ``size`` ids to look up, oldest first; forgets tasks Flower evicted."""
        batch = []
        for task_id in list(self.unlabelled):
            if task_id not in self.tasks:
                del self.unlabelled[task_id]
            elif len(batch) < size:
                batch.append(task_id)
        return batch

    def apply_labels(self, asked: list[str], found: dict[str, JobLabels],
                     now: float | None = None) -> None:
        """Set the labels ``found`` for ``asked``; an id not found is asked again next
        time (moved last, so new tasks are not kept waiting behind it) until
        ``GIVE_UP_SECONDS``, then gets its routing key's labels."""
        now = time.monotonic() if now is None else now
        for task_id in asked:
            seen = self.unlabelled.pop(task_id, None)
            task = self.tasks.get(task_id)
            if task is None or seen is None:
                continue
            labels = found.get(task_id)
            if labels is None and now - seen < GIVE_UP_SECONDS:
                self.unlabelled[task_id] = seen
                continue
            set_labels(task, labels or labels_from_routing_key(task))
            self.search_engine.upsert(task)


class LabelRefresher:
    """Looks up the labels of new tasks in the background of Flower's event loop, one
    batch at a time (never two queries at once)."""

    def __init__(self, application) -> None:
        self.application = application
        self.busy = False

    async def __call__(self) -> None:
        state = self.application.events.state
        if self.busy or not isinstance(state, LabelledEventsState):
            return
        batch = state.next_batch()
        if not batch:
            return
        self.busy = True
        try:
            found = await self.application.io_loop.run_in_executor(
                None, _lookup_on_executor, batch)
        except Exception:  # the database is down: try again at the next tick
            return
        finally:
            self.busy = False
        state.apply_labels(batch, found)


def task_columns(tasks_columns: str) -> list[tuple[str, str]]:
    """Slug and header of each column, in the order ``tasks_columns`` lists them: Flower's
    own and ``COLUMNS``."""
    out = []
    for name in map(str.strip, tasks_columns.split(",")):
        if name in COLUMNS:
            out.append((name, COLUMNS[name]))
        else:
            out.extend(visible_task_columns(name))
    return out


class LabelledTasksView(TasksView):
    """Flower's Tasks page with the label columns and filters (``tasks.html`` as amended
    by ``monitoring.flower``)."""

    @web.authenticated
    def get(self):
        app = self.application
        time_format = "natural-time" if app.options.natural_time else "time"
        if app.capp.conf.timezone:
            time_format += "-" + str(app.capp.conf.timezone)
        self.render("tasks.html", columns=task_columns(app.options.tasks_columns),
                    time=time_format, switchyard_lanes=[lane.name for lane in topology.LANES],
                    switchyard_tiers=[tier.name for tier in reversed(priorities.TIERS)])


class LabelledTasksDataTable(TasksDataTable):
    """Flower's table data (``/tasks/datatable``), filtered by the ``lane``, ``tier`` and
    ``tenant`` arguments, each row with its labels."""

    @web.authenticated
    def get(self):
        state = self.application.events.state
        draw = self.get_argument("draw", type=int, required=True)
        start = self.get_argument("start", type=int, required=True)
        length = self.get_argument("length", type=int, required=True)
        search = self.get_argument("search[value]", "", escape=False)
        column = self.get_argument("order[0][column]", type=int, required=True)
        sort_by = self.get_argument(f"columns[{column}][data]", "", type=str)
        descending = self.get_argument("order[0][dir]", "", type=str) == "desc"
        wanted = {name: self.get_argument(name, "", escape=False) for name in LABELS}

        task_map = getattr(state.tasks, "data", state.tasks)
        engine = state.search_engine
        ids = engine.labelled(**wanted) if isinstance(engine, LabelledSearchEngine) else None
        tasks = task_map if ids is None else {i: task_map[i] for i in ids if i in task_map}
        answer = {"draw": draw, "recordsTotal": len(task_map),
                  "switchyard_tenants": (engine.values("tenant")[:MAX_TENANT_CHOICES]
                                         if isinstance(engine, LabelledSearchEngine) else [])}
        try:
            page = engine.search(tasks, search, sort_by=sort_by or None, descending=descending,
                                 offset=start, limit=length)
        except QuerySyntaxError as exc:
            self.write({**answer, "data": [], "recordsFiltered": 0, "searchError": str(exc)})
            return
        rows = []
        for task_id in page.task_ids:
            task = task_map.get(task_id)
            if task is None:
                continue
            row = as_dict(self.format_task((task_id, task))[1])
            if row.get("worker"):
                row["worker"] = row["worker"].hostname
            labels = labels_of(task) or UNKNOWN
            row.update(lane=labels.lane, tier=labels.tier, tenant=labels.tenant)
            rows.append(row)
        self.write({**answer, "data": rows, "recordsFiltered": page.filtered_count})
