"""Start Switchyard's real processes (role scripts in deploy/bin) for integration tests.

Each process gets this run's vhost and this run's test database, so what the
tests see is exactly what `make run` would do, in isolation.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from django.db import connection

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / "deploy" / "bin"


def database_url() -> str:
    """A DATABASE_URL naming the database the tests are using right now."""
    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    user = s.get("USER") or ""
    password = f":{s['PASSWORD']}" if s.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    host = s.get("HOST") or "127.0.0.1"
    port = f":{s['PORT']}" if s.get("PORT") else ""
    return f"postgres://{auth}{host}{port}/{s['NAME']}"


def role_env(broker_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="switchyard.settings.base",
        CELERY_BROKER_URL=broker_url,
        DATABASE_URL=database_url(),
        DATABASE_CONN_MAX_AGE="0",
        SWITCHYARD_LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
        # The base settings leave the demo tasks out; the tests and drills submit them.
        SWITCHYARD_DEMO_TASKS="1",
    )
    env.update(extra)
    return env


class Role:
    """One running role script; its output goes to a log file shown on failure."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path, *,
                 command: list[str] | None = None) -> None:
        """Run ``deploy/bin/<args[0]> args[1:]``, or ``command`` (any program) if given."""
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            command or [str(BIN / args[0]), *args[1:]], env=env, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def assert_running(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")

    def stop(self, timeout: float = 20.0) -> int | None:
        """Warm shutdown (SIGTERM to the whole process group), SIGKILL after ``timeout``."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


def wait_until(predicate: Callable[[], object], timeout: float, what: str,
               interval: float = 0.05, roles: list[Role] | None = None):
    """Poll ``predicate`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        for role in roles or []:
            role.assert_running()
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {r.name} ---\n{r.log()}" for r in roles or [])
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{logs}")
        time.sleep(interval)
