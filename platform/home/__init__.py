"""The platform's front door, served by the web: the landing page at ``/`` (what Switchyard
is, where to go, its health at a glance), the runbooks, and the API docs' Redoc page."""
