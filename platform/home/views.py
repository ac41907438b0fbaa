"""The landing page and the runbooks (web)."""
from __future__ import annotations

import datetime as dt
import functools
import re
import urllib.parse
from pathlib import Path

from django.conf import settings
from django.http import Http404
from django.shortcuts import render
from django.views.decorators.http import require_GET

from home.selectors import platform_health
from routing import topology

#: The API docs' pages may load and call this server only. Swagger UI and Redoc come from
#: drf-spectacular-sidecar's static files; Redoc's sidebar still names a logo on Redocly's
#: CDN, which this keeps the browser from fetching. Inline scripts and styles: drf-spectacular's
#: templates have them; blob: workers: Redoc's search.
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; "
            "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; "
            "worker-src 'self' blob:; connect-src 'self'; frame-ancestors 'self'")


def self_only(view):
    """The view's pages load nothing from another origin (Content-Security-Policy)."""
    @functools.wraps(view)
    def wrapped(request, *args, **kwargs):
        response = view(request, *args, **kwargs)
        response["Content-Security-Policy"] = DOCS_CSP
        return response
    return wrapped


def _flower_url(request) -> str:
    """SWITCHYARD_FLOWER_URL, else Flower's port on the host this page was asked for."""
    if settings.SWITCHYARD_FLOWER_URL:
        return settings.SWITCHYARD_FLOWER_URL
    host = urllib.parse.urlsplit(f"//{request.get_host()}").hostname or "127.0.0.1"
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return f"{request.scheme}://{host}:{settings.SWITCHYARD_FLOWER_PORT}/"


def _runbooks() -> list[Path]:
    folder = Path(settings.SWITCHYARD_RUNBOOKS_DIR)
    return sorted(p for p in folder.glob("*.md") if p.name != "README.md") \
        if folder.is_dir() else []


def _symptoms() -> dict[str, str]:
    """Each runbook's symptom, from the table of docs/runbooks/README.md."""
    index = Path(settings.SWITCHYARD_RUNBOOKS_DIR) / "README.md"
    if not index.is_file():
        return {}
    rows = re.findall(r"^\| \[([\w-]+)\.md\]\([^)]*\) \| (.+?) \|$", index.read_text(), re.M)
    return {name: symptom.replace("`", "") for name, symptom in rows}


def _listed() -> list[dict[str, str]]:
    symptoms = _symptoms()
    return [{"name": p.stem, "title": _title(p), "symptom": symptoms.get(p.stem, "")}
            for p in _runbooks()]


def _title(path: Path) -> str:
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("# "):
            return line[2:].strip().replace("`", "")
    return path.stem.replace("-", " ")


@require_GET
def landing(request):
    """What Switchyard is, where to go next, and its health at a glance. Visitors see
    lane totals and yes/no checks; staff also see why a check failed."""
    health = platform_health()
    descriptions = {lane.name: lane.description for lane in topology.LANES}
    return render(request, "home/landing.html", {
        "health": health,
        "checked_at": dt.datetime.fromtimestamp(health.checked_at, tz=dt.UTC),
        "lanes": [(backlog, descriptions[backlog.lane_name]) for backlog in health.lanes],
        "is_staff": bool(getattr(request.user, "is_staff", False)),
        "flower_url": _flower_url(request),
        "runbooks": _listed(),
    })


@require_GET
def runbook_list(request):
    return render(request, "home/runbooks.html", {"runbooks": _listed()})


@require_GET
def runbook_detail(request, name: str):
    """One runbook's Markdown, as written in docs/runbooks/ (the names are the files')."""
    found = {p.stem: p for p in _runbooks()}.get(name)
    if found is None:
        raise Http404(f"no runbook {name}")
    return render(request, "home/runbook.html",
                  {"name": name, "title": _title(found),
                   "text": found.read_text(errors="replace")})
