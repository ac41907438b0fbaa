"""The two reads the client makes on the platform's REST API, with the tenant's token.

``GET /api/v1/tasks`` (the catalogue: where each task goes for this tenant) and
``GET /api/v1/jobs/{id}`` (a job's status and outcome). Standard library only.
"""
from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from ._version import __version__
from .errors import ApiError, ConfigurationError

API_PREFIX = "/api/v1"
USER_AGENT = f"switchyard-client/{__version__}"


def base_url(api_url: str) -> str:
    """``http://host:8000`` from ``http://host:8000``, ``.../`` or ``.../api/v1``."""
    if not api_url or not isinstance(api_url, str):
        raise ConfigurationError("api_url must be the platform's URL, e.g. http://switchyard:8000")
    parts = urllib.parse.urlsplit(api_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"api_url {api_url!r} is not an http(s) URL")
    path = parts.path.rstrip("/")
    if path.endswith(API_PREFIX):
        path = path[: -len(API_PREFIX)]
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


class Api:
    """Calls on one platform as one tenant. ``timeout`` (seconds) bounds each request."""

    def __init__(self, api_url: str, token: str, *, timeout: float = 10.0) -> None:
        if not token or not isinstance(token, str):
            raise ConfigurationError("token must be the tenant's API token "
                                     "(manage.py create_tenant prints one)")
        self.base_url = base_url(api_url)
        self._token = token
        self.timeout = timeout

    def __repr__(self) -> str:  # never shows the token
        return f"<Api {self.base_url}>"

    def get(self, path: str, *, timeout: float | None = None) -> Any:
        """GET ``/api/v1<path>`` and decode its JSON; ``ApiError`` on any failure."""
        return self._call("GET", path, timeout=timeout)

    def post(self, path: str, payload: Any, *, timeout: float | None = None) -> Any:
        """POST ``payload`` as JSON to ``/api/v1<path>`` and decode the answer."""
        return self._call("POST", path, payload=json.dumps(payload).encode(), timeout=timeout)

    def _call(self, method: str, path: str, *, payload: bytes | None = None,
              timeout: float | None = None) -> Any:
        url = self.base_url + API_PREFIX + path
        headers = {"Authorization": f"Token {self._token}", "Accept": "application/json",
                   "User-Agent": USER_AGENT}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=payload, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as answer:
                body = answer.read()
        except urllib.error.HTTPError as exc:
            detail = _detail(exc)
            hint = {401: " (is the token right, and the tenant active?)"}.get(exc.code, "")
            raise ApiError(f"{method} {url}: {exc.code} {detail}{hint}".rstrip(), url=url,
                           status=exc.code, detail=detail) from None
        except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets
            reason = getattr(exc, "reason", exc)
            raise ApiError(f"{method} {url}: no answer ({reason})", url=url) from exc
        try:
            return json.loads(body)
        except ValueError:
            raise ApiError(f"{method} {url}: the answer is not JSON", url=url,
                           status=200) from None

    def tasks(self) -> list[dict[str, Any]]:
        """The catalogue: the tasks this tenant may call, with where each goes."""
        found = self.get("/tasks")
        if not isinstance(found, list):
            raise ApiError(f"GET {self.base_url}{API_PREFIX}/tasks: expected a JSON list",
                           url=self.base_url + API_PREFIX + "/tasks", status=200)
        return found

    def job(self, job_id: str, *, timeout: float | None = None) -> dict[str, Any] | None:
        """The job ``job_id`` of this tenant, or ``None`` if the API knows none (404)."""
        try:
            return self.get("/jobs/" + urllib.parse.quote(str(job_id), safe=""),
                            timeout=timeout)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        payload = json.loads(exc.read() or b"{}")
    except (ValueError, OSError):
        return exc.reason or ""
    if isinstance(payload, dict) and payload.get("detail"):
        return str(payload["detail"])
    return exc.reason or ""
