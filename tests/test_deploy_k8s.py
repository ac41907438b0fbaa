"""The Kubernetes manifests in ``deploy/k8s``, validated without a cluster.

Core kinds are checked against Kubernetes' own OpenAPI schemas in strict mode
(``kubernetes-validate``: unknown fields are errors). KEDA's ``ScaledObject``
and ``TriggerAuthentication`` and the Cluster Operator's ``RabbitmqCluster``
have no schema there, so the fields Switchyard relies on are checked against
small schemas written from their documentation (unknown fields refused at the
levels used). Then what ties the files together: every lane has its worker
Deployment, autoscaler and budget, graceful shutdown outlasts the lane's hard
limit, every Secret and key referred to is one ``deploy/bin/k8s-secrets``
writes, and the broker's settings agree with the platform's.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from routing import access, topology
from tests.processes import BIN
from tests.test_deploy_compose import SERVICES, variables_read_by_the_code

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
KUBERNETES_VERSION = "1.32.0"
KUSTOMIZATION = yaml.safe_load((K8S / "kustomization.yaml").read_text())


def load(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


MANIFESTS = {path.name: load(path) for path in sorted(K8S.glob("*.yaml"))
             if path.name != "kustomization.yaml"}
RESOURCES = [doc for docs in MANIFESTS.values() for doc in docs]
CUSTOM_KINDS = {"ScaledObject", "TriggerAuthentication", "RabbitmqCluster"}


def of_kind(kind: str) -> dict[str, dict]:
    return {r["metadata"]["name"]: r for r in RESOURCES if r["kind"] == kind}


DEPLOYMENTS = of_kind("Deployment")


def pod_specs() -> dict[str, dict]:
    specs = {name: d["spec"]["template"]["spec"] for name, d in DEPLOYMENTS.items()}
    specs.update({name: j["spec"]["template"]["spec"] for name, j in of_kind("Job").items()})
    return specs


def rendered_secrets(**extra: str) -> list[dict]:
    env = {**os.environ, **extra, "DJANGO_SECRET_KEY": "k" * 60,
           "DATABASE_URL": "postgres://switchyard:pw@db.internal:5432/switchyard",
           "FLOWER_BASIC_AUTH": "ops:a-long-flower-password",
           "SWITCHYARD_METRICS_TOKEN": "a-metrics-token-for-this-test"}
    env.update({g.password_variable: f"password-of-{g.role}-0123456789" for g in access.grants()})
    result = subprocess.run([sys.executable, str(BIN / "k8s-secrets")], env=env,
                            capture_output=True,
                            text=True, timeout=60, check=True)
    return json.loads(result.stdout)["items"]


# -- schemas of the custom resources (the fields used here, from KEDA's and the operator's docs)

_META = {"type": "object", "required": ["name", "namespace"],
         "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}}}
SCALED_OBJECT = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"}, "kind": {"const": "ScaledObject"},
        "metadata": _META,
        "spec": {
            "type": "object", "additionalProperties": False,
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {"type": "object", "required": ["name"],
                                   "additionalProperties": False,
                                   "properties": {"name": {"type": "string"},
                                                  "kind": {"type": "string"},
                                                  "apiVersion": {"type": "string"}}},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "advanced": {"type": "object", "additionalProperties": False, "properties": {
                    "horizontalPodAutoscalerConfig": {"type": "object", "properties": {
                        "behavior": {"type": "object"}}}}},
                "triggers": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False,
                    "required": ["type", "metadata"],
                    "properties": {
                        "type": {"const": "rabbitmq"},
                        "metadata": {
                            "type": "object", "additionalProperties": False,
                            "required": ["queueName", "mode", "value"],
                            "properties": {
                                "protocol": {"enum": ["auto", "amqp", "http"]},
                                "queueName": {"type": "string"},
                                "vhostName": {"type": "string"},
                                "mode": {"enum": ["QueueLength", "MessageRate"]},
                                "value": {"type": "string", "pattern": r"^\d+(\.\d+)?$"},
                                "activationValue": {"type": "string"},
                                "excludeUnacknowledged": {"type": "string"},
                            }},
                        "authenticationRef": {"type": "object", "required": ["name"],
                                              "properties": {"name": {"type": "string"}}},
                    }}},
            }},
    },
}
TRIGGER_AUTHENTICATION = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"}, "kind": {"const": "TriggerAuthentication"},
        "metadata": _META,
        "spec": {"type": "object", "additionalProperties": False,
                 "required": ["secretTargetRef"],
                 "properties": {"secretTargetRef": {"type": "array", "minItems": 1, "items": {
                     "type": "object", "additionalProperties": False,
                     "required": ["parameter", "name", "key"],
                     "properties": {"parameter": {"type": "string"},
                                    "name": {"type": "string"}, "key": {"type": "string"}}}}}},
    },
}
RABBITMQ_CLUSTER = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "rabbitmq.com/v1beta1"}, "kind": {"const": "RabbitmqCluster"},
        "metadata": _META,
        "spec": {
            "type": "object", "additionalProperties": False,
            "required": ["replicas", "image", "persistence", "rabbitmq"],
            "properties": {
                "replicas": {"type": "integer", "minimum": 1},
                "image": {"type": "string"},
                "resources": {"type": "object", "additionalProperties": False,
                              "properties": {"requests": {"type": "object"},
                                             "limits": {"type": "object"}}},
                "persistence": {"type": "object", "additionalProperties": False,
                                "required": ["storage"],
                                "properties": {"storage": {"type": "string"},
                                               "storageClassName": {"type": "string"}}},
                "rabbitmq": {"type": "object", "additionalProperties": False,
                             "properties": {"additionalConfig": {"type": "string"},
                                            "additionalPlugins": {"type": "array"},
                                            "advancedConfig": {"type": "string"},
                                            "envConfig": {"type": "string"}}},
                "override": {"type": "object", "additionalProperties": False, "properties": {
                    "statefulSet": {"type": "object"}, "service": {"type": "object"}}},
            }},
    },
}
CUSTOM_SCHEMAS = {"ScaledObject": SCALED_OBJECT, "TriggerAuthentication": TRIGGER_AUTHENTICATION,
                  "RabbitmqCluster": RABBITMQ_CLUSTER}


@pytest.mark.parametrize("resource", [r for r in RESOURCES if r["kind"] not in CUSTOM_KINDS],
                         ids=lambda r: f"{r['kind']}/{r['metadata']['name']}")
def test_core_resources_are_valid_kubernetes(resource):
    kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_catches_a_misspelled_field():
    broken = json.loads(json.dumps(DEPLOYMENTS["web"]))
    broken["spec"]["template"]["spec"]["terminationGracePeriod"] = 40
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    scaled = json.loads(json.dumps(of_kind("ScaledObject")["worker-slow"]))
    scaled["spec"]["triggers"][0]["metadata"]["queueLength"] = "5"  # the pre-2.x name
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, SCALED_OBJECT)


@pytest.mark.parametrize("resource", [r for r in RESOURCES if r["kind"] in CUSTOM_KINDS],
                         ids=lambda r: f"{r['kind']}/{r['metadata']['name']}")
def test_custom_resources_have_their_required_fields(resource):
    jsonschema.validate(resource, CUSTOM_SCHEMAS[resource["kind"]])


def test_each_lane_has_a_worker_deployment_an_autoscaler_on_its_queue_and_a_budget():
    scaled = of_kind("ScaledObject")
    budgets = of_kind("PodDisruptionBudget")
    auth = of_kind("TriggerAuthentication")
    for lane in topology.LANES:
        name = f"worker-{lane.name}"
        pod = DEPLOYMENTS[name]["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["command"] == ["deploy/bin/worker", lane.name]
        # Graceful shutdown outlasts the lane's hard limit: a running task always finishes.
        assert pod["terminationGracePeriodSeconds"] > lane.time_limit
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["exec"]["command"] == [
                "deploy/bin/healthcheck", "worker", lane.name]
        trigger = scaled[name]["spec"]["triggers"][0]
        assert scaled[name]["spec"]["scaleTargetRef"]["name"] == name
        assert trigger["metadata"]["queueName"] == lane.queue
        assert trigger["metadata"]["vhostName"] == "/"
        assert trigger["authenticationRef"]["name"] in auth
        assert scaled[name]["spec"]["minReplicaCount"] >= 1  # a lane is never unserved
        assert budgets[name]["spec"]["selector"]["matchLabels"] == (
            DEPLOYMENTS[name]["spec"]["selector"]["matchLabels"])
    assert set(scaled) == {f"worker-{ln.name}" for ln in topology.LANES}


def test_every_role_runs_with_probes_as_non_root():
    expected = {"web", "dispatcher", "beat", "flower",
                *(f"worker-{ln.name}" for ln in topology.LANES)}
    assert expected <= set(DEPLOYMENTS)
    for name in expected:
        pod = DEPLOYMENTS[name]["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert "readinessProbe" in container and "livenessProbe" in container, name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
        assert "limits" in container["resources"], name
    assert DEPLOYMENTS["beat"]["spec"]["replicas"] == 1
    assert DEPLOYMENTS["beat"]["spec"]["strategy"]["type"] == "Recreate"


def test_images_are_pinned_and_the_migration_uses_the_release_image():
    (image,) = KUSTOMIZATION["images"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", image["newTag"])
    release = f"{image['newName']}:{image['newTag']}"
    for name, pod in pod_specs().items():
        for container in pod["containers"]:
            assert container["image"] in {image["name"], release}, name
            assert not container["image"].endswith(":latest")
    assert pod_specs()["switchyard-migrate"]["containers"][0]["image"] == release
    cluster = of_kind("RabbitmqCluster")["switchyard-rabbitmq"]
    assert cluster["spec"]["image"] == SERVICES["rabbitmq"]["image"]


def test_kustomization_lists_every_manifest_but_the_migration_job():
    assert set(KUSTOMIZATION["resources"]) == set(MANIFESTS) - {"migrate-job.yaml"}


def test_rabbitmq_cluster_has_three_nodes_and_the_platforms_settings():
    cluster = of_kind("RabbitmqCluster")["switchyard-rabbitmq"]["spec"]
    assert cluster["replicas"] == 3
    conf = dict(re.findall(r"^([\w.]+)\s*=\s*(\S+)", cluster["rabbitmq"]["additionalConfig"],
                           re.M))
    config = of_kind("ConfigMap")["switchyard-config"]["data"]
    assert conf["consumer_timeout"] == config["SWITCHYARD_BROKER_CONSUMER_TIMEOUT_MS"]
    for lane in topology.LANES:
        topology.check_time_limit(lane, int(conf["consumer_timeout"]))
    pod = cluster["override"]["statefulSet"]["spec"]["template"]["spec"]
    (mount,) = pod["containers"][0]["volumeMounts"]
    (volume,) = pod["volumes"]
    assert volume["name"] == mount["name"]
    assert conf["load_definitions"] == mount["mountPath"] + "/definitions.json"
    assert volume["secret"]["secretName"] == "switchyard-rabbitmq-definitions"
    assert conf["deprecated_features.permit.global_qos"] == "false"


def test_every_secret_and_key_referred_to_is_written_by_k8s_secrets():
    secrets = {s["metadata"]["name"]: s for s in rendered_secrets()}
    for secret in secrets.values():
        kubernetes_validate.validate(secret, KUBERNETES_VERSION, strict=True)
    referred: set[tuple[str, str | None]] = set()
    for pod in pod_specs().values():
        for container in pod["containers"]:
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    referred.add((source["secretRef"]["name"], None))
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    referred.add((ref["name"], ref["key"]))
        for volume in pod.get("volumes", []):
            assert "secret" not in volume
    for auth in of_kind("TriggerAuthentication").values():
        for ref in auth["spec"]["secretTargetRef"]:
            referred.add((ref["name"], ref["key"]))
    referred.add(("switchyard-rabbitmq-definitions", "definitions.json"))
    for name, key in referred:
        assert name in secrets, name
        if key is not None:
            assert key in secrets[name]["stringData"], f"{name}/{key}"
    # Each role's pod logs in as its own broker user; the migration Job is the web's
    # release step (production settings load only with a broker login).
    for name, pod in pod_specs().items():
        for var in pod["containers"][0].get("env", []):
            if var["name"] == "CELERY_BROKER_URL":
                role = "web" if name == "switchyard-migrate" else name
                assert var["valueFrom"]["secretKeyRef"]["key"] == role
    keda = secrets["switchyard-keda"]["stringData"]["host"]
    assert keda.startswith("http://switchyard-keda:") and ":15672/" in keda
    definitions = json.loads(secrets["switchyard-rabbitmq-definitions"]["stringData"][
        "definitions.json"])
    assert all(u["password_hash"] for u in definitions["users"])


def test_no_pod_is_given_the_demo_tasks_switch():
    # Production settings refuse SWITCHYARD_DEMO_TASKS. .env sets it for `make run`, and an
    # operator may have sourced .env to run k8s-secrets: it must not reach a pod from there.
    secrets = {s["metadata"]["name"]: s["stringData"]
               for s in rendered_secrets(SWITCHYARD_DEMO_TASKS="1")}
    config_maps = {name: c["data"] for name, c in of_kind("ConfigMap").items()}
    for name, pod in pod_specs().items():
        for container in pod["containers"]:
            given = {var["name"] for var in container.get("env", [])}
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    given |= set(config_maps[source["configMapRef"]["name"]])
                if "secretRef" in source:
                    given |= set(secrets[source["secretRef"]["name"]])
            assert "DJANGO_SECRET_KEY" in given, f"{name}: the scan should see the secrets"
            assert "SWITCHYARD_DEMO_TASKS" not in given, f"{name}/{container['name']}"


def test_k8s_secrets_refuses_placeholders():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_RABBITMQ_")}
    env.update(DJANGO_SECRET_KEY="change-me-to-50-random-characters", DATABASE_URL="",
               FLOWER_BASIC_AUTH="admin:change-me", SWITCHYARD_METRICS_TOKEN="change-me")
    result = subprocess.run([sys.executable, str(BIN / "k8s-secrets")], env=env,
                            capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    for name in ("DJANGO_SECRET_KEY", "DATABASE_URL", "FLOWER_BASIC_AUTH",
                 "SWITCHYARD_METRICS_TOKEN", "SWITCHYARD_RABBITMQ_PASSWORD_WEB"):
        assert name in result.stderr


def test_config_names_only_variables_switchyard_reads_and_probes_use_an_allowed_host():
    config = of_kind("ConfigMap")["switchyard-config"]["data"]
    assert set(config) - variables_read_by_the_code() == set()
    allowed = config["DJANGO_ALLOWED_HOSTS"].split(",")
    web = DEPLOYMENTS["web"]["spec"]["template"]["spec"]["containers"][0]
    for probe in ("readinessProbe", "livenessProbe"):
        headers = {h["name"]: h["value"] for h in web[probe]["httpGet"]["httpHeaders"]}
        assert headers["Host"] in allowed and headers["X-Forwarded-Proto"] == "https"


def test_workers_dispatcher_and_beat_are_scraped_on_their_own_metrics_port():
    # Each of these pods serves its process group's metrics (monitoring/exporter.py) on the
    # port SWITCHYARD_METRICS_PORT names; the annotations point Prometheus at that port.
    for name in ("dispatcher", "beat", *(f"worker-{ln.name}" for ln in topology.LANES)):
        template = DEPLOYMENTS[name]["spec"]["template"]
        container = template["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        port = env["SWITCHYARD_METRICS_PORT"]
        annotations = template["metadata"]["annotations"]
        assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": port,
                               "prometheus.io/path": "/metrics"}, name
        assert {"name": "metrics", "containerPort": int(port)} in container["ports"], name
    # The web serves its own /metrics behind the bearer token: no open annotation for it.
    assert "annotations" not in DEPLOYMENTS["web"]["spec"]["template"]["metadata"]
