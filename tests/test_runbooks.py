"""Every command in docs/runbooks exists as written.

A runbook is read at 3 a.m. and its commands pasted: one that no longer exists
(a renamed subcommand, a dropped option, a compose service or Deployment that
is gone) costs the on-call engineer the time the runbook was meant to save.
Each line of each ```sh block is split into its commands, and each must be:

* a Switchyard command, parsed by its real parser: ``python -m routing ...``,
  ``python platform/manage.py ...`` (Django's command and its options),
  ``deploy/bin/...``, ``make ...``, ``celery -A switchyard <command>``;
* or a recognisably external tool (``rabbitmqctl``, ``docker compose``,
  ``kubectl``, ...), where the compose services, Kubernetes Deployments and
  ScaledObjects it names must exist, and the command run inside a container
  is checked as a Switchyard command.
"""
from __future__ import annotations

import re
import shlex
import uuid
from pathlib import Path

import pytest
import yaml
from django.core.management import CommandError, get_commands, load_command_class

from routing.cli import build_parser
from tests import runbooks

REPO = Path(__file__).resolve().parents[1]
COMPOSE_SERVICES = set(yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"])
K8S = [d for p in (REPO / "deploy" / "k8s").glob("*.yaml")
       for d in yaml.safe_load_all(p.read_text()) if d]
DEPLOYMENTS = {d["metadata"]["name"] for d in K8S if d["kind"] == "Deployment"}
SCALED_OBJECTS = {d["metadata"]["name"] for d in K8S if d["kind"] == "ScaledObject"}
#: RabbitMQ's Cluster Operator names a cluster's pods <cluster>-server-<n>.
RABBITMQ_PODS = {f"{d['metadata']['name']}-server-{n}" for d in K8S
                 if d["kind"] == "RabbitmqCluster" for n in range(d["spec"]["replicas"])}
EXTERNAL = {"rabbitmqctl", "rabbitmq-diagnostics", "rabbitmq-plugins", "rabbitmq-queues",
            "rabbitmq-upgrade", "curl", "psql", "df", "grep", "set", "."}
PLACEHOLDERS = {"JOB_ID": str(uuid.uuid4()), "WORKFLOW_ID": str(uuid.uuid4()),
                "SCHEDULE_ID": str(uuid.uuid4())}
MAKE_TARGETS = set(re.findall(r"^([\w.-]+):", (REPO / "Makefile").read_text(), re.M))

COMMANDS = runbooks.all_commands()


def split_commands(line: str) -> list[list[str]]:
    """The simple commands of a shell line (split at |, &&, ||, ;), as argv lists."""
    for name, value in PLACEHOLDERS.items():
        line = line.replace(name, value)
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    commands, current = [], []
    tokens = iter(lexer)
    for token in tokens:
        if token in {">", ">>", "<"}:
            next(tokens)  # a redirection and its file
        elif token in {"|", "||", "&&", ";", "&"}:
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    return [c for c in commands if c]


def check_switchyard(argv: list[str]) -> None:
    """Parse a Switchyard command with its own parser; fail if it does not exist."""
    if argv[:1] in (["python"], [".venv/bin/python"]) and argv[1:3] == ["-m", "routing"]:
        try:
            build_parser().parse_args(argv[3:])
        except SystemExit as exc:
            raise AssertionError(f"python -m routing rejects {argv[3:]}") from exc
    elif argv[:1] in (["python"], [".venv/bin/python"]) and argv[1:2] == [
            "platform/manage.py"]:
        name = argv[2]
        commands = get_commands()
        assert name in commands, f"manage.py has no command {name!r}"
        assert name != "queues", "runbooks must not rely on manage.py queues"
        command = load_command_class(commands[name], name)
        try:
            command.create_parser("manage.py", name).parse_args(argv[3:])
        except (SystemExit, CommandError) as exc:
            raise AssertionError(f"manage.py {name} rejects {argv[3:]}") from exc
    elif argv[:1] == [".venv/bin/python"] and argv[1].startswith("deploy/bin/"):
        assert (REPO / argv[1]).is_file(), argv[1]
    elif argv[0].startswith("deploy/bin/"):
        assert (REPO / argv[0]).is_file(), argv[0]
    elif argv[0] == "make":
        assert argv[1] in MAKE_TARGETS, f"no make target {argv[1]!r}"
    elif argv[0] == "celery":
        from celery.bin.celery import celery

        assert argv[1:3] == ["-A", "switchyard"], argv
        assert argv[3] in celery.commands, f"celery has no command {argv[3]!r}"
        if argv[3] in {"inspect", "control"}:
            assert argv[4] in {"active", "reserved", "stats", "active_queues", "ping",
                               "add_consumer", "cancel_consumer", "shutdown"}, argv[4]
    else:
        raise AssertionError(f"not a Switchyard command: {shlex.join(argv)}")


def check_docker(argv: list[str]) -> None:
    assert argv[1] == "compose", "docker commands go through docker compose"
    sub, rest = argv[2], argv[3:]
    assert sub in {"up", "run", "exec", "logs", "ps", "stop", "start", "restart", "pull"}, sub
    services, inner = [], []
    i = 0
    while i < len(rest):
        token = rest[i]
        if token.startswith("-"):
            if token in {"--tail", "--scale"}:
                if token == "--scale":
                    services.append(rest[i + 1].split("=")[0])
                i += 2
                continue
            i += 1
            continue
        if sub in {"run", "exec"}:
            services.append(token)
            inner = rest[i + 1:]
            break
        services.append(token)
        i += 1
    for service in services:
        assert service in COMPOSE_SERVICES, f"docker compose has no service {service!r}"
    if inner:
        check_command(inner, in_container=True)


def check_kubectl(argv: list[str]) -> None:
    assert argv[1:3] == ["-n", "switchyard"] or "-k" in argv or "-f" in argv, argv
    for token in argv:
        if token.startswith(("deploy/", "deployment/")) and "/" in token and not (
                REPO / token).exists():
            assert token.split("/", 1)[1] in DEPLOYMENTS, f"no Deployment {token}"
    if "scaledobject" in argv:
        name = argv[argv.index("scaledobject") + 1]
        assert name in SCALED_OBJECTS, f"no ScaledObject {name}"
    if "--" in argv:
        inner = argv[argv.index("--") + 1:]
        target = argv[argv.index("exec") + 1]
        assert target.startswith("deploy/") or target in RABBITMQ_PODS, target
        check_command(inner, in_container=True)
    for path in (a for a in argv if a.startswith("deploy/k8s")):
        assert (REPO / path).exists(), path


def check_command(argv: list[str], in_container: bool = False) -> None:
    while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):
        argv = argv[1:]  # VAR=value prefixes
    tool = argv[0]
    if tool == "docker" and not in_container:
        check_docker(argv)
    elif tool == "kubectl" and not in_container:
        check_kubectl(argv)
    elif tool in EXTERNAL:
        return
    else:
        check_switchyard(argv)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: f"{c.runbook}:{c.line[:60]}")
def test_runbook_command_exists(command: runbooks.Command):
    for argv in split_commands(command.line):
        check_command(argv)


def test_the_check_refuses_what_does_not_exist():
    for line in ("python -m routing verifyy", "python platform/manage.py dlq list",
                 "python platform/manage.py queues", "docker compose logs worker-medium",
                 "kubectl -n switchyard exec deploy/worker-medium -- python -m routing show",
                 "frobnicate --now"):
        with pytest.raises(AssertionError):
            for argv in split_commands(line):
                check_command(argv)


def test_every_runbook_has_its_four_sections_and_is_indexed():
    index = (runbooks.RUNBOOKS / "README.md").read_text()
    pages = sorted(p for p in runbooks.RUNBOOKS.glob("*.md") if p.name != "README.md")
    assert len(pages) >= 11
    for page in pages:
        headings = re.findall(r"^## (\w+)", page.read_text(), re.M)
        assert headings[:4] == ["Symptom", "Confirm", "Fix", "Verify"], page.name
        assert f"]({page.name})" in index, f"{page.name} is not in the runbooks index"
        assert runbooks.commands(page), f"{page.name} has no command"
        assert "manage.py queues" not in page.read_text()


def test_the_runbooks_the_brief_asks_for_exist():
    names = {p.stem for p in runbooks.RUNBOOKS.glob("*.md")}
    assert {"backlog-growing", "premium-latency", "poison-messages", "broker-down",
            "resource-alarm", "consumer-timeout", "topology-drift", "adding-a-lane-or-a-task",
            "scaling-a-lane", "rotating-credentials", "upgrading-rabbitmq"} <= names


def test_the_runbooks_database_queries_run(transactional_db):
    import datetime as dt

    from django.utils import timezone

    from jobs.models import Job
    from tenants.models import Tenant
    from tests.processes import role_env

    tenant = Tenant.objects.create(name="acme", tier="premium")
    now = timezone.now()
    job = Job.objects.create(tenant=tenant, tenant_name="acme", task="demo.quick_task",
                             lane="quick", tier="premium", priority=7,
                             routing_key="quick.premium.demo.quick_task", submitted_at=now,
                             started_at=now + dt.timedelta(seconds=2), status="succeeded")
    Job.objects.create(tenant=tenant, tenant_name="acme", task="demo.quick_task", lane="quick",
                       tier="premium", priority=7, routing_key="quick.premium.demo.quick_task",
                       submitted_at=now)  # queued, never published
    queries = [c for c in COMMANDS if "manage.py shell" in c.line]
    assert len(queries) >= 5
    env = role_env("amqp://guest:guest@127.0.0.1:1//")
    for command in queries:
        result = runbooks.run(command.line, env, timeout=120, JOB_ID=str(job.id))
        assert result.returncode == 0, f"{command.runbook}: {result.stderr[-2000:]}"
        assert result.stdout.strip(), command.line
    latency = next(c for c in queries if c.runbook == "premium-latency.md")
    lines = runbooks.run(latency.line, env).stdout.split()
    assert lines[:3] == ["quick", "premium", "1"] and float(lines[3]) == 2.0
    unpublished = next(c for c in queries if c.runbook == "broker-down.md"
                       and "published_at__isnull=True).count()" in c.line)
    assert runbooks.run(unpublished.line, env).stdout.strip() == "1"
