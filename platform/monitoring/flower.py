"""Flower with Switchyard's Queues page: ``python -m monitoring.flower --conf=...``.

Stock Flower has no queue dimension (its metrics carry ``worker``, ``type`` and
``task`` only; its Broker page shows message counts without rates or tiers). This
launcher runs Flower 2.2.0 exactly as ``celery flower`` does (same options,
configuration file, authentication and pages) and adds:

* ``/queues``: per lane and tier, throughput over the last minute and the
  window, jobs waiting and the oldest one's age, wait percentiles, and per lane
  the broker's ready/unacked messages, consumers and dead letters; below them, charts
  of the last hour per lane and tier, minute by minute (runs finished, wait p50/p95:
  ``monitoring.history``, which says why they come from the job table); a "Queues"
  tab on every page's navigation bar leads there;
* ``/api/switchyard/queues``: the same as JSON (``monitoring.snapshot``, and the
  hour under ``history``);
* Flower's Tasks page with each task's lane, tier and tenant as columns and
  filters (``monitoring.flower_tasks``, which says where they come from);
* Flower's own ``/metrics`` behind its login: stock Flower serves it to anyone,
  and it names every worker and task;
* an event receiver that does not declare ``celeryev`` (``switchyard.events``).

All sit behind Flower's own login. The code leans on Flower's internals
(``flower.command``'s steps, the navigation bar's and the tasks page's markup, its
events state and search engine), so it refuses to run on another Flower version than
the one it is tested with.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported once Django is set up (main)
    from monitoring.history import LaneTierHistory

#: The Flower release this launcher is written and tested against (requirements.txt).
FLOWER_VERSION = "2.2.0"
TEMPLATES = Path(__file__).resolve().parent / "flower_templates"
QUEUES_TEMPLATE = "switchyard_queues.html"
#: Templates of ours are named so; the rest are Flower's.
OUR_TEMPLATES = "switchyard_"
#: Inserted into Flower's navigation bar, before the end of its first list.
NAV_ANCHOR = "</ul>"
NAV_ITEM = """  <li class="nav-item">
          <a class="nav-link{% if active_tab == 'queues' %} active{% end %}"
            href="{{ reverse_url('switchyard-queues') }}" id="switchyard-queues-tab"
            {% if active_tab == 'queues' %}aria-current="page"{% end %}>Queues</a>
        </li>
      """
#: In Flower's tasks.html: the state filters' end, after which the label filters go.
TASKS_ANCHOR = "</nav>"
TASKS_FILTERS = '{% include "switchyard_task_filters.html" %}'
TASKS_SCRIPT = ('\n{% block extra_scripts %}{% include "switchyard_tasks_script.html" %}'
                '{% end %}\n')


def _window(handler) -> int:
    try:
        return max(60, min(3600, int(handler.get_query_argument("window", "300"))))
    except ValueError:
        return 300


def _snapshot(window: int, history: LaneTierHistory) -> dict:
    """Runs on Flower's executor: the ORM blocks."""
    from django.db import close_old_connections

    from monitoring.snapshot import queue_snapshot

    close_old_connections()
    try:
        snap = queue_snapshot(window=window).as_dict()
        snap["history"] = history.read()
        return snap
    finally:
        close_old_connections()


def build_app_class():
    """Flower's application class with the Queues page and API added, its event
    receiver Switchyard's."""
    import flower
    import flower.events as flower_events
    from celery.events import EventReceiver
    from flower.app import Flower, rewrite_handler
    from flower.views import BaseHandler
    from flower.views.monitor import Metrics
    from tornado import template, web
    from tornado.ioloop import IOLoop, PeriodicCallback
    from tornado.web import url

    from switchyard.events import PlatformEventReceiver

    if flower.__version__ != FLOWER_VERSION:
        raise SystemExit(f"monitoring.flower is tested with Flower {FLOWER_VERSION}, found "
                         f"{flower.__version__}; pin flower=={FLOWER_VERSION} or re-test it")
    # Flower makes its event receiver from Celery's class, not from app.events: make it
    # bind its queue to celeryev without declaring the exchange, which its broker user
    # may read but not configure (switchyard/events.py, routing/access.py).
    if flower_events.EventReceiver not in (EventReceiver, PlatformEventReceiver):
        raise RuntimeError("flower.events no longer uses Celery's EventReceiver")
    flower_events.EventReceiver = PlatformEventReceiver
    # Flower's events state, keeping each task's lane, tier and tenant (its class is
    # looked up in flower.events when Flower starts).
    from monitoring import flower_tasks
    from monitoring.history import LaneTierHistory

    if flower_events.EventsState not in (flower_tasks.EventsState,
                                         flower_tasks.LabelledEventsState):
        raise RuntimeError("flower.events no longer defines the EventsState it uses")
    flower_events.EventsState = flower_tasks.LabelledEventsState

    class QueuesView(BaseHandler):
        @web.authenticated
        async def get(self):
            window = _window(self)
            snap = await IOLoop.current().run_in_executor(
                None, _snapshot, window, self.application.switchyard_history)
            self.render(QUEUES_TEMPLATE, snap=snap, snap_json=json.dumps(snap), window=window)

    class QueuesApi(BaseHandler):
        @web.authenticated
        async def get(self):
            snap = await IOLoop.current().run_in_executor(
                None, _snapshot, _window(self), self.application.switchyard_history)
            self.set_header("Content-Type", "application/json; charset=UTF-8")
            self.set_header("Cache-Control", "no-store")
            self.write(json.dumps(snap))

    class LoginMetrics(Metrics):
        """Flower's Prometheus metrics, asking for the login like every other page."""

        @web.authenticated
        async def get(self):
            await super().get()

    class TemplateLoader(template.Loader):
        """Flower's templates, with the Queues tab in its navigation bar and our page."""

        def _create_template(self, name):
            if name.startswith(OUR_TEMPLATES):
                return template.Template((TEMPLATES / name).read_text(), name=name, loader=self)
            if name == "tasks.html":
                text = (Path(self.root) / name).read_text()
                if TASKS_ANCHOR not in text or "block extra_scripts" in text:
                    raise RuntimeError("Flower's tasks.html changed; cannot add the label filters")
                text = text.replace(TASKS_ANCHOR, TASKS_ANCHOR + TASKS_FILTERS, 1) + TASKS_SCRIPT
                return template.Template(text, name=name, loader=self)
            if name == "navbar.html":
                text = (Path(self.root) / name).read_text()
                if NAV_ANCHOR not in text:
                    raise RuntimeError("Flower's navbar.html changed; cannot add the Queues tab")
                text = text.replace(NAV_ANCHOR, NAV_ITEM + NAV_ANCHOR, 1)
                return template.Template(text, name=name, loader=self)
            return super()._create_template(name)

    class SwitchyardFlower(Flower):
        def __init__(self, options=None, **kwargs):
            kwargs["template_loader"] = TemplateLoader(kwargs["template_path"])
            super().__init__(options=options, **kwargs)
            self.switchyard_history = LaneTierHistory()
            ours = [url(r"/queues", QueuesView, name="switchyard-queues"),
                    url(r"/api/switchyard/queues", QueuesApi, name="switchyard-queues-api"),
                    url(r"/metrics", LoginMetrics, name="switchyard-flower-metrics"),
                    # Flower's paths (its reverse_url("tasks") leads here too).
                    url(r"/tasks", flower_tasks.LabelledTasksView, name="switchyard-tasks"),
                    url(r"/tasks/datatable", flower_tasks.LabelledTasksDataTable)]
            if options is not None and options.url_prefix:
                ours = [rewrite_handler(h, options.url_prefix) for h in ours]
            # Before Flower's own rules: its last one answers 404 to everything.
            router = self.wildcard_router
            router.rules[:0] = [router.process_rule(rule) for rule in ours]
            self.switchyard_labels = PeriodicCallback(flower_tasks.LabelRefresher(self),
                                                      flower_tasks.INTERVAL_MS)

        def start(self):
            self.switchyard_labels.start()
            super().start()

        def stop(self):
            self.switchyard_labels.stop()
            super().stop()

    return SwitchyardFlower


def main(argv: list[str] | None = None) -> None:
    """Start Flower as ``celery -A switchyard flower ARGS`` would, with the Queues page."""
    argv = sys.argv[1:] if argv is None else argv
    # Flower records no job transitions: keep its own prometheus metrics out of
    # the directory the platform's processes share.
    os.environ.pop("SWITCHYARD_METRICS_DIR", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "switchyard.settings.base")
    import django

    django.setup()
    from flower import command
    from flower.urls import settings as flower_settings
    from tornado.options import options

    from switchyard.celery import app

    app_class = build_app_class()
    command.apply_env_options()
    command.apply_options("flower", argv)
    command.extract_settings()
    command.setup_logging()
    # Tornado's pretty logging may have put a handler of its own on the root logger.
    from django.conf import settings

    from switchyard import logs

    logs.adopt_handlers(logging.getLogger(), settings.SWITCHYARD_LOG_FORMAT)
    flower_app = app_class(capp=app, options=options, **flower_settings)
    atexit.register(flower_app.stop)
    signal.signal(signal.SIGTERM, command.sigterm_handler)
    port = flower_app.start_http_server()
    command.print_banner(app, "ssl_options" in flower_settings, port)
    try:
        flower_app.start()
    except (KeyboardInterrupt, SystemExit):
        pass


if __name__ == "__main__":
    main()
