"""``docker-compose.yml``, ``deploy/Dockerfile``, ``.env.example`` and the role scripts.

No Docker engine runs here, so the compose file is parsed (PyYAML, with the
YAML merge keys compose uses) and checked for what would bite in production:
a missing role, an unpinned image, no health check, a default credential, a
Python role on another image, an environment variable nothing reads, a grace
period shorter than a lane's time limit. The health-check script itself runs
against real processes.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from routing import access, topology
from tests.processes import BIN, role_env

REPO = Path(__file__).resolve().parents[1]
COMPOSE_TEXT = (REPO / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES: dict[str, dict] = COMPOSE["services"]
DOCKERFILE = (REPO / "deploy" / "Dockerfile").read_text()
ENV_EXAMPLE = (REPO / ".env.example").read_text()
RABBITMQ_CONF = (REPO / "deploy" / "rabbitmq" / "rabbitmq.conf").read_text()

APP_IMAGE = "switchyard:local"
ONE_SHOT = {"rabbitmq-definitions", "migrate"}
PYTHON_SERVICES = {name for name, s in SERVICES.items() if s.get("image") == APP_IMAGE}
LONG_RUNNING = {name for name, s in SERVICES.items()
                if name not in ONE_SHOT and not s.get("profiles")}


def procfile_roles() -> set[str]:
    return {line.split(":", 1)[0] for line in (REPO / "Procfile").read_text().splitlines()
            if line.strip()}


def variables_read_by_the_code() -> set[str]:
    """Environment variables Switchyard's settings, routing and role scripts read."""
    sources = [*REPO.glob("platform/**/*.py"), *REPO.glob("routing/*.py"),
               *(p for p in BIN.iterdir() if p.is_file())]
    found = {g.password_variable for g in access.grants()}
    for path in sources:
        text = path.read_text()
        found |= set(re.findall(
            r"(?:env_int|env_bool|environ\.get|environ\.setdefault|getenv)\(\s*\"([A-Z][A-Z0-9_]+)\"",
            text))
        found |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]+)(?::-|\})", text))
    return found


def test_every_role_is_a_service():
    lanes = {f"worker-{ln.name}" for ln in topology.LANES}
    expected = {"rabbitmq", "postgres", "web", "dispatcher", "beat", "flower"} | lanes

    assert expected <= set(SERVICES)
    assert procfile_roles() <= set(SERVICES)  # every role make run starts runs here too
    for lane in topology.LANES:
        assert SERVICES[f"worker-{lane.name}"]["command"] == ["deploy/bin/worker", lane.name]


def test_images_are_pinned_to_a_release_never_latest():
    for name, service in SERVICES.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), name
        if image != APP_IMAGE:
            # A release, never a floating major: PostgreSQL's 17.6 is its patch release
            # (Prometheus spells its releases with a v: v2.53.0).
            assert re.search(r":v?\d+\.\d+", image), f"{name}: pin a release ({image})"
    assert re.match(r"rabbitmq:4\.\d+\.\d+-management$", SERVICES["rabbitmq"]["image"])
    bases = re.findall(r"^FROM\s+(\S+)", DOCKERFILE, re.M)
    assert bases and all(re.fullmatch(r"python:3\.11\.\d+-slim-\w+", b) for b in bases)


def test_python_roles_share_one_image_built_from_deploy_dockerfile():
    assert {"web", "dispatcher", "beat", "flower", "migrate", "operator",
            *(f"worker-{ln.name}" for ln in topology.LANES)} <= PYTHON_SERVICES
    for name in PYTHON_SERVICES:
        assert SERVICES[name]["build"] == {"context": ".", "dockerfile": "deploy/Dockerfile"}
        command = SERVICES[name]["command"]
        assert command[0].startswith("deploy/bin/") or command[0] == "python", name
        if command[0].startswith("deploy/bin/"):
            assert (REPO / command[0]).is_file(), name


def test_long_running_services_have_healthchecks_restart_policies_and_conditions():
    for name in LONG_RUNNING:
        service = SERVICES[name]
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        assert service.get("restart") in {"unless-stopped", "on-failure", "always"}, name
        for dependency, rule in (service.get("depends_on") or {}).items():
            assert rule["condition"] in {"service_healthy", "service_completed_successfully"}, (
                f"{name} -> {dependency}")
    for name in ONE_SHOT:
        assert SERVICES[name]["restart"] == "no"
    for name in PYTHON_SERVICES - {"migrate", "operator", "rabbitmq-definitions"}:
        assert SERVICES[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully")
        assert SERVICES[name]["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    assert SERVICES["rabbitmq"]["depends_on"]["rabbitmq-definitions"]["condition"] == (
        "service_completed_successfully")


def test_volumes_keep_the_database_broker_and_media():
    assert {"postgres-data", "rabbitmq-data", "media"} <= set(COMPOSE["volumes"])
    assert "postgres-data:/var/lib/postgresql/data" in SERVICES["postgres"]["volumes"]
    assert "rabbitmq-data:/var/lib/rabbitmq" in SERVICES["rabbitmq"]["volumes"]
    for lane in topology.LANES:
        assert "media:/app/var/media" in SERVICES[f"worker-{lane.name}"]["volumes"]
    assert SERVICES["rabbitmq"]["hostname"] == "rabbitmq"  # the node name keeps its data


def test_no_default_or_literal_credentials():
    assert "guest" not in COMPOSE_TEXT
    for url in re.findall(r"\w+://[^\s\"']+", COMPOSE_TEXT):
        userinfo = url.split("://", 1)[1].split("@", 1)
        if len(userinfo) == 2 and ":" in userinfo[0]:
            password = userinfo[0].split(":", 1)[1]
            assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", password), url
    secrets = ("PASSWORD", "SECRET", "BASIC_AUTH")
    for name, service in SERVICES.items():
        for key, value in (service.get("environment") or {}).items():
            if any(word in key for word in secrets):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", str(value)), f"{name}: {key}"


def test_each_role_logs_in_as_its_own_broker_user():
    for name in PYTHON_SERVICES - ONE_SHOT:
        url = SERVICES[name]["environment"]["CELERY_BROKER_URL"]
        role = "operator" if name == "operator" else name
        grant = access.grant(role)
        assert url.startswith(f"amqp://{grant.user}:${{{grant.password_variable}:?"), name
        assert url.endswith("@rabbitmq:5672//"), name
    definitions = SERVICES["rabbitmq-definitions"]["environment"]
    assert set(definitions) == {g.password_variable for g in access.grants()}


def test_service_environments_name_only_variables_switchyard_reads():
    read = variables_read_by_the_code()
    for name in PYTHON_SERVICES:
        unknown = set(SERVICES[name].get("environment") or {}) - read
        assert unknown == set(), f"{name} sets variables nothing reads: {sorted(unknown)}"


def test_env_example_has_every_required_variable_as_a_placeholder():
    example = dict(line.split("=", 1) for line in ENV_EXAMPLE.splitlines()
                   if line and not line.startswith("#"))
    required = set(re.findall(r"\$\{([A-Z_]+):\?", COMPOSE_TEXT))

    assert required <= set(example), sorted(required - set(example))
    for name in required | {g.password_variable for g in access.grants()}:
        value = example[name]
        assert value.startswith("change-me") or value.endswith(":change-me"), name


def test_demo_tasks_are_on_for_make_run_and_never_passed_to_a_container():
    # .env (from .env.example) turns the demo tasks on for `make run`; compose reads the same
    # file, but only to fill in ${...}: no service may pass the switch on (production
    # settings would refuse to start), nor load .env wholesale.
    example = dict(line.split("=", 1) for line in ENV_EXAMPLE.splitlines()
                   if line and not line.startswith("#"))
    assert example["SWITCHYARD_DEMO_TASKS"] == "1"
    for name, service in SERVICES.items():
        assert "SWITCHYARD_DEMO_TASKS" not in (service.get("environment") or {}), name
        assert "env_file" not in service, name
    assert "SWITCHYARD_DEMO_TASKS" not in COMPOSE_TEXT + DOCKERFILE


def test_dev_env_replaces_every_placeholder_with_a_random_secret(tmp_path: Path):
    (tmp_path / ".env.example").write_text(ENV_EXAMPLE)
    env = {**os.environ, "PYTHON": "python3"}
    subprocess.run([str(BIN / "dev-env"), ".env"], cwd=tmp_path, env=env, check=True,
                   capture_output=True)
    written = (tmp_path / ".env").read_text()

    assert not re.search(r"^[A-Z_]+=.*change-me", written, re.M)
    passwords = re.findall(r"^SWITCHYARD_RABBITMQ_PASSWORD_\w+=(.+)$", written, re.M)
    assert len(passwords) == len(access.grants()) == len(set(passwords))
    assert access.passwords_from_env(dict(
        line.split("=", 1) for line in written.splitlines() if line and line[0] != "#"))
    assert oct((tmp_path / ".env").stat().st_mode)[-3:] == "600"


def test_worker_grace_periods_outlast_their_lane_time_limit():
    for lane in topology.LANES:
        grace = SERVICES[f"worker-{lane.name}"]["stop_grace_period"]
        assert int(grace.removesuffix("s")) > lane.time_limit, lane.name


def test_rabbitmq_config_matches_the_platform():
    conf = dict(re.findall(r"^([\w.]+)\s*=\s*(\S+)", RABBITMQ_CONF, re.M))
    assert conf["consumer_timeout"] == str(
        SERVICES["web"]["environment"]["SWITCHYARD_BROKER_CONSUMER_TIMEOUT_MS"])
    for lane in topology.LANES:
        topology.check_time_limit(lane, int(conf["consumer_timeout"]))
    # The definitions the one-shot writes are the file the broker loads.
    written = SERVICES["rabbitmq-definitions"]["command"][1]
    volume, mount = SERVICES["rabbitmq-definitions"]["volumes"][0].split(":")
    loaded_from = next(v for v in SERVICES["rabbitmq"]["volumes"] if v.startswith(volume + ":"))
    assert conf["load_definitions"] == (loaded_from.split(":")[1]
                                        + written.removeprefix(mount))
    assert conf["deprecated_features.permit.global_qos"] == "false"
    assert conf["deprecated_features.permit.transient_nonexcl_queues"] == "false"
    assert "x-queue-mode" not in RABBITMQ_CONF


def test_dockerfile_runs_as_a_non_root_user_with_the_project_path():
    user = re.findall(r"^USER\s+(\S+)", DOCKERFILE, re.M)
    assert user and user[-1].split(":")[0] not in {"0", "root"}
    assert "PYTHONPATH=/app/platform:/app" in DOCKERFILE
    assert "DJANGO_SETTINGS_MODULE=switchyard.settings.production" in DOCKERFILE
    for path in ("routing/", "platform/", "deploy/bin/", "requirements.txt"):
        assert re.search(rf"^COPY .*{re.escape(path)}", DOCKERFILE, re.M), path
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".env", ".venv", ".git"} <= set(ignored)


def test_role_scripts_are_strict_bash():
    for script in sorted(BIN.iterdir()):
        text = script.read_text()
        if not text.startswith("#!/usr/bin/env bash"):
            continue
        assert os.access(script, os.X_OK), script.name
        assert "set -o errexit -o pipefail -o nounset" in text, script.name
        subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.rabbitmq
def test_healthcheck_of_dispatcher_and_beat_reaches_the_broker(broker_url):
    ok = subprocess.run([str(BIN / "healthcheck"), "dispatcher"], env=role_env(broker_url),
                        capture_output=True, text=True, timeout=60)
    down = subprocess.run([str(BIN / "healthcheck"), "beat"],
                          env=role_env("amqp://guest:guest@127.0.0.1:1//"),
                          capture_output=True, text=True, timeout=60)

    assert ok.returncode == 0, ok.stderr
    assert down.returncode != 0


def test_healthcheck_web_sends_an_allowed_host_and_https(start_role):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hosts = "switchyard.example.com,localhost"
    web = start_role("web", WEB_BIND=f"127.0.0.1:{port}", WEB_WORKERS="1",
                     DJANGO_ALLOWED_HOSTS=hosts)
    env = role_env("amqp://unused//", WEB_BIND=f"127.0.0.1:{port}", DJANGO_ALLOWED_HOSTS=hosts)

    from tests.processes import wait_until

    wait_until(lambda: subprocess.run([str(BIN / "healthcheck"), "web"], env=env,
                                      capture_output=True, timeout=30).returncode == 0,
               60, "the web health check to pass", interval=0.5, roles=[web])
    web.stop()
    failed = subprocess.run([str(BIN / "healthcheck"), "web"], env=env, capture_output=True,
                            timeout=30)
    assert failed.returncode != 0


def _check_compose_schema(path: Path) -> subprocess.CompletedProcess:
    """The Compose Specification's own JSON schema, as vendored by check-jsonschema."""
    return subprocess.run(
        [str(Path(sys.executable).with_name("check-jsonschema")), "--builtin-schema",
         "vendor.compose-spec", str(path)], capture_output=True, text=True, timeout=120)


def test_compose_file_is_valid_against_the_compose_specification(tmp_path: Path):
    done = _check_compose_schema(REPO / "docker-compose.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    # The check is real: a misspelled service key fails it.
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE_TEXT.replace("    stop_grace_period: 30s\n",
                                           "    stop_grace_periode: 30s\n", 1))
    done = _check_compose_schema(broken)
    assert done.returncode != 0 and "stop_grace_periode" in done.stdout + done.stderr
