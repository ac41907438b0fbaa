"""Benchmarks run on the test fixtures: their own vhost, database and role processes."""
from tests.conftest import *  # noqa: F403
