"""What "the database cannot answer" means, for every role, with nothing but Django.

SQLite's lock held past its busy timeout, PostgreSQL refusing connections or
restarting, a session the server cut: the web answers these 503 with
``Retry-After`` (``switchyard.api_errors``), the worker puts the delivery back or
tries its outcome again (``jobs.task``). Kept apart from the API's error
handling so a worker does not import Django REST framework for one tuple.
"""
from __future__ import annotations

from django.db import InterfaceError, OperationalError

#: The database errors that mean "cannot answer now", not "this request is wrong".
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError)
