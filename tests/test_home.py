"""The API docs' pages, through Django's test client. In a real browser:
tests/test_browser_pages.py."""
from __future__ import annotations

import re

import pytest
from django.test import Client


@pytest.mark.parametrize("url, vendored", [
    ("/api/docs/", ("swagger-ui-dist/swagger-ui-bundle.js", "swagger-ui-dist/swagger-ui.css",
                    "swagger-ui-dist/favicon-32x32.png")),
    ("/api/redoc/", ("redoc/bundles/redoc.standalone.js",)),
])
def test_api_docs_pages_load_only_vendored_files(url, vendored):
    page = Client().get(url)
    assert page.status_code == 200
    html = page.content.decode()
    for name in vendored:
        assert f"/static/drf_spectacular_sidecar/{name}" in html
    assert re.findall(r'(?:src|href)="(https?:)?//', html) == []  # nothing from elsewhere
    assert "cdn.jsdelivr" not in html and "fonts.googleapis" not in html
    # ... and the browser is told to load nothing from another origin
    assert page["Content-Security-Policy"].startswith("default-src 'self';")
    assert "img-src 'self' data:;" in page["Content-Security-Policy"]
