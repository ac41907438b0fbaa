"""The API docs' pages' policy (web)."""
from __future__ import annotations

import functools

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
