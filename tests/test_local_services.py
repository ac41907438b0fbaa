"""What ``make test`` and ``make run`` set up first (tools/local-services), and the rule that
a skipped test fails ``make test`` (tests/skip_policy.py).

The script runs with a PATH of fake ``rabbitmq-*``, ``pg_*``, ``apt-get``, ``id`` commands
that record their calls and keep their state in files: its decisions are tested without
touching the shared RabbitMQ, PostgreSQL or the machine's packages.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "local-services"
BASH = shutil.which("bash") or "/bin/bash"

FAKES = {
    # State: files in $STATE; every call is appended to $STATE/calls.
    "rabbitmq-diagnostics": '[ -e "$STATE/rabbit-up" ]',
    "rabbitmq-server": '[ -e "$STATE/rabbit-starts" ] && : > "$STATE/rabbit-up"; exit 0',
    "rabbitmq-plugins": """case "$1" in
  list) echo 'Listing plugins with pattern ".*" ...'
        [ -e "$STATE/plugin-on" ] && echo rabbitmq_management; exit 0 ;;
  enable) : > "$STATE/plugin-on" ;;
esac""",
    "pg_isready": '[ -e "$STATE/pg-up" ]',
    "pg_lsclusters": """echo "14 old 5433 down postgres /var/lib/postgresql/14/old /var/log/x.log"
echo "15 main 5432 down postgres /var/lib/postgresql/15/main /var/log/y.log\"""",
    "pg_ctlcluster": ': > "$STATE/pg-up"',
    "id": 'echo "$FAKE_UID"',
    # Installing a package puts its command on the PATH.
    "apt-get": """if [ "$1" = install ]; then
  # What Debian's maintainer scripts would be told about starting a service (101: never).
  if [ -x "$SWITCHYARD_POLICY_RC_D" ]; then "$SWITCHYARD_POLICY_RC_D" prometheus start
    echo "policy-rc.d says $?" >> "$STATE/calls"
  else echo "policy-rc.d absent" >> "$STATE/calls"; fi
  for package in "$@"; do
    case "$package" in
      chromium) command=chromium ;; chromium-driver) command=chromedriver ;;
      faketime) command=faketime ;; prometheus) command=promtool ;; *) continue ;;
    esac
    printf '#!/bin/bash\\n' > "$FAKE_BIN/$command"; chmod +x "$FAKE_BIN/$command"
  done
fi""",
}


class Machine:
    """A fake machine: its commands, their state, and the calls the script made."""

    def __init__(self, root: Path) -> None:
        self.bin = root / "bin"
        self.state = root / "state"
        self.bin.mkdir()
        self.state.mkdir()
        for tool in ("sleep", "chmod", "rm", "sh"):  # the outside commands the script and fakes use
            os.symlink(shutil.which(tool), self.bin / tool)
        for name, body in FAKES.items():
            self.install(name, body)
        # Everything up and installed, unless a test says otherwise.
        self.set("rabbit-up", "plugin-on", "pg-up", "rabbit-starts")
        for command in ("chromium", "chromedriver", "faketime", "promtool"):
            self.install(command, "exit 0", record=False)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.env = {
            "PATH": str(self.bin), "STATE": str(self.state), "FAKE_BIN": str(self.bin),
            "FAKE_UID": "0", "SWITCHYARD_SERVICES_WAIT": "2",
            "SWITCHYARD_POLICY_RC_D": str(root / "policy-rc.d"),
            "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/switchyard",
            "RABBITMQ_MANAGEMENT_URL":
                f"http://guest:guest@127.0.0.1:{self.listener.getsockname()[1]}",
        }

    def install(self, name: str, body: str, record: bool = True) -> None:
        path = self.bin / name
        line = f'echo "{name} $*" >> "$STATE/calls"\n' if record else ""
        path.write_text(f"#!/bin/bash\n{line}{body}\n")
        path.chmod(0o755)

    def remove(self, *names: str) -> None:
        for name in names:
            (self.bin / name).unlink()

    def set(self, *flags: str) -> None:
        for flag in flags:
            (self.state / flag).touch()

    def clear(self, *flags: str) -> None:
        for flag in flags:
            (self.state / flag).unlink(missing_ok=True)

    def run(self, mode: str = "test", **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([BASH, str(SCRIPT), mode], env={**self.env, **env},
                              capture_output=True, text=True, timeout=60)

    def calls(self, prefix: str = "") -> list[str]:
        path = self.state / "calls"
        lines = path.read_text().splitlines() if path.exists() else []
        return [line for line in lines if line.startswith(prefix)]

    def actions(self) -> list[str]:
        """Calls that change the machine (not the probes)."""
        probes = ("rabbitmq-diagnostics", "rabbitmq-plugins list", "pg_isready",
                  "pg_lsclusters", "id")
        return [call for call in self.calls() if not call.startswith(probes)]


@pytest.fixture
def machine(tmp_path):
    fake = Machine(tmp_path)
    yield fake
    fake.listener.close()


def test_everything_up_changes_nothing(machine):
    done = machine.run()
    assert done.returncode == 0, done.stderr
    assert machine.actions() == []
    assert "everything was already up" in done.stdout


def test_a_stopped_rabbitmq_is_started_detached_and_waited_for(machine):
    machine.clear("rabbit-up")
    done = machine.run()
    assert done.returncode == 0, done.stderr
    assert machine.actions() == ["rabbitmq-server -detached"]
    assert "started RabbitMQ" in done.stdout


def test_a_rabbitmq_that_never_answers_stops_the_set_up(machine):
    machine.clear("rabbit-up", "rabbit-starts")
    done = machine.run()
    assert done.returncode == 1
    assert "RabbitMQ did not answer" in done.stderr
    assert machine.calls("pg_") == []  # stopped at once: nothing after it was tried


def test_a_disabled_management_plugin_is_enabled(machine):
    machine.clear("plugin-on")
    done = machine.run("run")
    assert done.returncode == 0, done.stderr
    assert machine.actions() == ["rabbitmq-plugins enable --quiet rabbitmq_management"]
    assert "enabled rabbitmq_management" in done.stdout


def test_a_management_api_that_does_not_listen_stops_the_set_up(machine):
    machine.listener.close()
    done = machine.run("run")
    assert done.returncode == 1
    assert "management API does not listen" in done.stderr


def test_a_stopped_postgresql_starts_the_cluster_of_the_database_urls_port(machine):
    machine.clear("pg-up")
    done = machine.run()
    assert done.returncode == 0, done.stderr
    assert machine.actions() == ["pg_ctlcluster --skip-systemctl-redirect 15 main start"]
    machine.clear("pg-up", "calls")
    done = machine.run(DATABASE_URL="postgresql://u:p@localhost:5433/other")
    assert done.returncode == 0, done.stdout + done.stderr
    assert machine.actions() == ["pg_ctlcluster --skip-systemctl-redirect 14 old start"]


def test_servers_on_other_hosts_and_sqlite_are_left_alone(machine):
    machine.clear("rabbit-up", "pg-up")
    done = machine.run("run", CELERY_BROKER_URL="amqp://u:p@rabbit.internal:5672//",
                       DATABASE_URL="postgres://u:p@db.internal:5432/sy")
    assert done.returncode == 0, done.stderr
    assert machine.calls("rabbitmq") == [] and machine.calls("pg_") == []
    done = machine.run("run", CELERY_BROKER_URL="amqp://u:p@rabbit.internal:5672//",
                       DATABASE_URL="")
    assert "SQLite" in done.stdout and machine.calls("pg_") == []


def test_missing_packages_are_installed_from_debian_when_root(machine):
    machine.remove("chromium", "chromedriver")
    done = machine.run()
    assert done.returncode == 0, done.stderr
    assert machine.actions() == ["apt-get update -qq",
                                 "apt-get install -y -qq --no-install-recommends chromium "
                                 "chromium-driver", "policy-rc.d says 101"]
    assert "installed chromium chromium-driver" in done.stdout
    # The hook that kept services from starting is gone again.
    assert not Path(machine.env["SWITCHYARD_POLICY_RC_D"]).exists()


def test_installing_promtool_never_starts_a_prometheus_server(machine):
    machine.remove("promtool")
    done = machine.run()
    assert done.returncode == 0, done.stderr
    assert "policy-rc.d says 101" in machine.calls("policy-rc.d")
    assert (machine.state.parent / "bin" / "promtool").exists()


def test_a_policy_hook_of_the_machine_is_left_as_it_was(machine):
    own = Path(machine.env["SWITCHYARD_POLICY_RC_D"])
    own.write_text("#!/bin/sh\nexit 0\n")
    own.chmod(0o755)
    machine.remove("faketime")
    assert machine.run().returncode == 0
    assert machine.calls("policy-rc.d") == ["policy-rc.d says 0"]
    assert own.read_text() == "#!/bin/sh\nexit 0\n"


def test_missing_packages_without_root_stop_at_once_with_the_command(machine):
    machine.remove("faketime")
    machine.clear("rabbit-up")
    done = machine.run(FAKE_UID="1000")
    assert done.returncode == 1
    assert "sudo apt-get install -y faketime" in done.stderr
    assert machine.actions() == []  # neither apt-get nor rabbitmq-server ran


def test_make_run_needs_no_browser(machine):
    machine.remove("chromium", "chromedriver", "faketime")
    done = machine.run("run", FAKE_UID="1000")
    assert done.returncode == 0, done.stderr
    assert machine.calls("apt-get") == []


def test_allow_skips_turns_a_stop_into_a_warning_and_goes_on(machine):
    machine.remove("chromedriver")
    machine.clear("rabbit-up")
    done = machine.run(FAKE_UID="1000", SWITCHYARD_ALLOW_SKIPS="1")
    assert done.returncode == 0, done.stderr
    assert machine.actions() == ["rabbitmq-server -detached"]
    assert "still missing: missing Debian packages: chromium-driver" in done.stdout


def test_uninstalled_servers_name_their_package(machine):
    machine.remove("rabbitmq-diagnostics")
    done = machine.run("run")
    assert done.returncode == 1 and "apt-get install -y rabbitmq-server" in done.stderr
    machine.install("rabbitmq-diagnostics", FAKES["rabbitmq-diagnostics"])
    machine.remove("pg_lsclusters")
    done = machine.run("run")
    assert done.returncode == 1 and "apt-get install -y postgresql" in done.stderr


# -- a skip fails make test ---------------------------------------------------------------

SAMPLE = '''
import pytest

def test_runs():
    pass

def test_needs_a_browser():
    pytest.skip("no Chromium here")

@pytest.mark.xfail(reason="known")
def test_known_bug():
    assert False
'''


def _pytest_with_policy(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    base = {k: v for k, v in os.environ.items() if k not in {"CI", "SWITCHYARD_ALLOW_SKIPS"}}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.skip_policy", "-p", "no:django",
         "-p", "no:cacheprovider", "-q", "-rs", "test_sample.py"],
        cwd=tmp_path, env={**base, "PYTHONPATH": str(REPO), **env},
        capture_output=True, text=True, timeout=120)


def test_under_ci_a_skip_is_a_failure_naming_what_is_missing(tmp_path):
    done = _pytest_with_policy(tmp_path, CI="true")
    assert done.returncode == 1, done.stdout
    assert "1 failed, 1 passed, 1 xfailed" in done.stdout
    assert "skipped under CI=true (make test sets it): no Chromium here" in done.stdout


def test_allow_skips_lets_it_skip_and_lists_it(tmp_path):
    done = _pytest_with_policy(tmp_path, CI="true", SWITCHYARD_ALLOW_SKIPS="1")
    assert done.returncode == 0, done.stdout
    assert "SWITCHYARD_ALLOW_SKIPS=1" in done.stdout
    assert "test_sample.py::test_needs_a_browser: no Chromium here" in done.stdout


def test_outside_ci_a_skip_stays_a_skip(tmp_path):
    done = _pytest_with_policy(tmp_path)
    assert done.returncode == 0 and "1 skipped" in done.stdout, done.stdout


# -- make test and .ci/run ----------------------------------------------------------------


@pytest.fixture
def fake_make_env(tmp_path):
    """A virtualenv whose python and ruff record their calls, and a fake set-up script."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "log"
    for name in ("python", "ruff"):
        tool = venv / "bin" / name
        tool.write_text(f'#!/bin/bash\necho "{name} CI=$CI $*" >> {log}\n')
        tool.chmod(0o755)
    services = tmp_path / "services"
    services.write_text(f'#!/bin/bash\necho "services $*" >> {log}\nexit "$SERVICES_RC"\n')
    services.chmod(0o755)
    (venv / ".installed").touch()  # newer than the requirements: make installs nothing
    return {"VENV": str(venv), "LOCAL_SERVICES": str(services), "log": log}


def _make_test(fake_make_env, services_rc: int) -> tuple[int, list[str]]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    done = subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), "test",
         f"VENV={fake_make_env['VENV']}", f"LOCAL_SERVICES={fake_make_env['LOCAL_SERVICES']}"],
        env={**env, "SERVICES_RC": str(services_rc)}, capture_output=True, text=True,
        timeout=60)
    log = fake_make_env["log"]
    return done.returncode, log.read_text().splitlines() if log.exists() else []


def test_make_test_sets_up_first_then_lints_and_tests_as_ci(fake_make_env):
    returncode, calls = _make_test(fake_make_env, 0)
    assert returncode == 0
    assert [call.split()[0] for call in calls] == ["services", "ruff", "python"]
    assert calls[0] == "services test"
    assert calls[2].startswith("python CI=true -m pytest")


def test_make_test_stops_when_the_set_up_fails_before_installing_anything(fake_make_env):
    Path(fake_make_env["VENV"], ".installed").unlink()  # make would create the virtualenv
    returncode, calls = _make_test(fake_make_env, 1)
    assert returncode != 0
    assert calls == ["services test"]


def test_ci_run_is_a_thin_call_of_make_test():
    lines = [line for line in (REPO / ".ci" / "run").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[-1] == "exec make test"
    assert not any(word in line for line in lines
                   for word in ("apt-get", "rabbitmq-server", "pg_ctlcluster", "plugins"))
