"""The Kubernetes manifests (deploy/k8s/, issue #36): every overlay renders without a cluster and
validates against the Kubernetes schemas (`make deploy-check` runs the same), and what the code
needs of a deployment holds in each: probes, resources, a grace period above the worker's drain, a
worker and a ScaledObject per task queue, every setting a process requires, secrets by reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from config.settings import Settings
from devtools.deploy import KustomizeError, overlays, render, validate
from workers.worker import QUEUES, WorkerOptions

SECRET_NAME = "jobctl-secrets"
"""The one Secret every process reads its secrets from (docs/OPERATIONS.md lists its keys)."""
SECRET_SETTINGS = {
    name.upper() for name, field in Settings.model_fields.items() if "SecretStr" in str(field.annotation)
} | {"DATABASE_URL", "TEMPORAL_TLS_KEY"}  # a password in the URL, a private key
QUEUE_NAMES = {
    "jobs": Settings.model_fields["task_queue"].default,
    "messaging": Settings.model_fields["messaging_task_queue"].default,
}

TEMPORAL_CLIENT = {"TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE", "PAYLOAD_ENCRYPTION_KEY"}
"""Every process with a Temporal client: one cluster, and the payload key (a payload encrypted by
one process and read by another without it is unreadable; workers/temporal_client.py)."""
REQUIRED: dict[str, set[str]] = {
    # `require_database_url()`; ACTOR_HASH_KEY: Settings refuses real credentials without it;
    # WORKER_BUILD_ID with WORKER_DEPLOYMENT_NAME (workers/worker.py, deployment_config);
    # PUBLIC_BASE_URL: reminders link to it.
    "worker": TEMPORAL_CLIENT
    | {"DATABASE_URL", "ACTOR_HASH_KEY", "PUBLIC_BASE_URL", "WORKER_DEPLOYMENT_NAME", "WORKER_BUILD_ID"},
    "api": TEMPORAL_CLIENT | {"DATABASE_URL", "ACTOR_HASH_KEY", "PUBLIC_BASE_URL"},
    # `jobctl webhooks` refuses to start without the two signing secrets and WEBHOOK_BASE_URL.
    "webhooks": TEMPORAL_CLIENT
    | {"DATABASE_URL", "ACTOR_HASH_KEY", "STRIPE_WEBHOOK_SECRET", "TWILIO_AUTH_TOKEN", "WEBHOOK_BASE_URL"},
    # `jobctl codec-server` refuses without the key and a credential (the token; or CODEC_OIDC_ISSUER).
    "codec-server": {"PAYLOAD_ENCRYPTION_KEY", "CODEC_SERVER_TOKEN"},
    "migrate": {"DATABASE_URL"},
    "bootstrap": TEMPORAL_CLIENT,
}


@pytest.fixture(scope="module", params=overlays())
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(request.param)


def _of(resources: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in resources if r["kind"] == kind]


def _pod(resource: dict[str, Any]) -> dict[str, Any]:
    return resource["spec"]["template"]["spec"]


def _command(resource: dict[str, Any]) -> str:
    """The jobctl command a workload runs: its container's first argument."""
    return _pod(resource)["containers"][0]["args"][0]


def _environment(resource: dict[str, Any], resources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{variable: where it comes from} for the workload's container: its env and its ConfigMaps' keys."""
    (container,) = _pod(resource)["containers"]
    config_maps = {c["metadata"]["name"]: c["data"] for c in _of(resources, "ConfigMap")}
    found: dict[str, dict[str, Any]] = {}
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, "secrets are named key by key (secretKeyRef), never by envFrom"
        found |= {key: {"configMap": value} for key, value in config_maps[source["configMapRef"]["name"]].items()}
    found |= {variable["name"]: variable for variable in container.get("env", [])}
    return found


def test_the_overlays_are_dev_and_prod() -> None:
    assert overlays() == ["dev", "prod"]


def test_every_object_validates_against_the_kubernetes_schemas(rendered: list[dict[str, Any]]) -> None:
    """Core kinds against kubernetes-validate's bundled schemas (strict), KEDA's against
    deploy/k8s/schemas/: a misspelt field is an error here, not a field the cluster drops."""
    assert validate(rendered) == []


def test_every_deployment_has_probes_requests_and_limits(rendered: list[dict[str, Any]]) -> None:
    for deployment in _of(rendered, "Deployment"):
        for container in _pod(deployment)["containers"]:
            where = f"{deployment['metadata']['name']}/{container['name']}"
            assert "livenessProbe" in container and "readinessProbe" in container, where
            assert {"cpu", "memory"} <= container["resources"]["requests"].keys(), where
            assert {"cpu", "memory"} <= container["resources"]["limits"].keys(), where
    for job in _of(rendered, "Job"):
        assert {"requests", "limits"} <= _pod(job)["containers"][0]["resources"].keys()


def test_the_grace_period_outlasts_the_workers_drain(rendered: list[dict[str, Any]]) -> None:
    """SIGTERM lets in-flight activities finish for graceful_shutdown_timeout; a SIGKILL before
    that cuts them off (they are retried, but a send may have left)."""
    drain = WorkerOptions().graceful_shutdown_timeout.total_seconds()
    for deployment in _of(rendered, "Deployment"):
        assert _pod(deployment)["terminationGracePeriodSeconds"] > drain, deployment["metadata"]["name"]


def test_one_worker_deployment_and_one_scaled_object_per_task_queue(rendered: list[dict[str, Any]]) -> None:
    workers = [d for d in _of(rendered, "Deployment") if _command(d) == "worker"]
    by_queue = {}
    for worker in workers:
        args = _pod(worker)["containers"][0]["args"]
        assert args[1::2] == ["--task-queue"], f"{worker['metadata']['name']} polls one queue, named"
        by_queue.setdefault(args[2], []).append(worker["metadata"]["name"])
        readiness = _pod(worker)["containers"][0]["readinessProbe"]["exec"]["command"]
        assert readiness == ["jobctl", "worker", "--check", "--task-queue", args[2]]
    assert sorted(by_queue) == sorted(QUEUES) and all(len(names) == 1 for names in by_queue.values())
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in _of(rendered, "ScaledObject")}
    assert len(scaled) == len(_of(rendered, "ScaledObject")) == len(QUEUES)
    for queue, (name,) in by_queue.items():
        (trigger,) = scaled[name]["spec"]["triggers"]
        assert trigger["type"] == "temporal"
        assert trigger["metadata"]["taskQueue"] == QUEUE_NAMES[queue]
        assert "replicas" not in next(d for d in workers if d["metadata"]["name"] == name)["spec"], "KEDA owns it"


def test_every_process_is_deployed_and_the_release_runs_migrate_then_bootstrap(rendered: list[dict[str, Any]]) -> None:
    assert sorted(_command(d) for d in _of(rendered, "Deployment")) == sorted(
        ["api", "codec-server", "webhooks", *["worker"] * len(QUEUES)]
    )
    jobs = {_command(j): j for j in _of(rendered, "Job")}
    assert sorted(jobs) == ["bootstrap", "migrate"]
    waves = {name: int(job["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]) for name, job in jobs.items()}
    assert waves["migrate"] < waves["bootstrap"] < 0, "migrate, then bootstrap, before the workers"


def test_every_setting_a_process_requires_is_set_or_referenced(rendered: list[dict[str, Any]]) -> None:
    for workload in _of(rendered, "Deployment") + _of(rendered, "Job"):
        environment = _environment(workload, rendered)
        present = {
            name
            for name, source in environment.items()
            if not source.get("valueFrom", {}).get("secretKeyRef", {}).get("optional", False)
        }
        missing = REQUIRED[_command(workload)] - present
        assert not missing, f"{workload['metadata']['name']} lacks {sorted(missing)}"


def test_every_variable_set_is_a_setting(rendered: list[dict[str, Any]]) -> None:
    """A misspelt name is silently ignored by the settings (extra="ignore"): catch it here."""
    settings = {name.upper() for name in Settings.model_fields}
    for workload in _of(rendered, "Deployment") + _of(rendered, "Job"):
        assert set(_environment(workload, rendered)) - settings == set(), workload["metadata"]["name"]


def test_secrets_come_by_reference_from_one_secret(rendered: list[dict[str, Any]]) -> None:
    assert _of(rendered, "Secret") == [], "no secret values in the repository"
    for config_map in _of(rendered, "ConfigMap"):
        assert set(config_map["data"]) & SECRET_SETTINGS == set()
    for workload in _of(rendered, "Deployment") + _of(rendered, "Job"):
        for name, source in _environment(workload, rendered).items():
            reference = source.get("valueFrom", {}).get("secretKeyRef")
            if name in SECRET_SETTINGS:
                assert reference is not None, f"{name} is a secret: a secretKeyRef to {SECRET_NAME}"
                assert (reference["name"], reference["key"]) == (SECRET_NAME, name)
            assert reference is None or reference["name"] == SECRET_NAME
    for authentication in _of(rendered, "TriggerAuthentication"):
        assert {ref["name"] for ref in authentication["spec"]["secretTargetRef"]} == {SECRET_NAME}


def test_the_build_id_is_one_value_per_overlay(rendered: list[dict[str, Any]]) -> None:
    """Written in four places of an overlay (its release/ suffix, label and KEDA patch, the image
    tag): the workers must poll as the version KEDA measures, in pods named after it."""
    config = _of(rendered, "ConfigMap")[0]["data"]
    release = [r for r in rendered if "jobctl.dev/build-id" in r["metadata"].get("labels", {})]
    (build_id,) = {r["metadata"]["labels"]["jobctl.dev/build-id"] for r in release}
    assert sorted(r["kind"] for r in release) == sorted(
        ["Job", "Job"] + ["Deployment", "PodDisruptionBudget", "ScaledObject"] * len(QUEUES)
    )
    for resource in release:
        assert resource["metadata"]["name"].endswith(f"-{build_id}")
        if resource["kind"] in ("Deployment", "Job"):
            assert _pod(resource)["containers"][0]["image"].endswith(f":{build_id}")
        if resource["kind"] == "ScaledObject":
            metadata = resource["spec"]["triggers"][0]["metadata"]
            assert metadata["workerDeploymentBuildId"] == build_id
            assert metadata["workerDeploymentName"] == config["WORKER_DEPLOYMENT_NAME"]
        if resource["kind"] == "Deployment":
            assert resource["spec"]["template"]["metadata"]["labels"]["jobctl.dev/build-id"] == build_id
            assert resource["spec"]["selector"]["matchLabels"]["jobctl.dev/build-id"] == build_id, "builds side by side"
            assert _environment(resource, rendered)["WORKER_BUILD_ID"]["valueFrom"] == {
                "fieldRef": {"fieldPath": "metadata.labels['jobctl.dev/build-id']"}
            }
    for deployment in _of(rendered, "Deployment"):
        if deployment not in release:
            assert deployment["spec"]["template"]["spec"]["containers"][0]["image"].endswith(f":{build_id}")


def test_every_deployment_has_a_disruption_budget_and_services_reach_their_pods(
    rendered: list[dict[str, Any]],
) -> None:
    def selects(selector: dict[str, str], deployment: dict[str, Any]) -> bool:
        return selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()

    budgets = [b["spec"]["selector"]["matchLabels"] for b in _of(rendered, "PodDisruptionBudget")]
    deployments = _of(rendered, "Deployment")
    for deployment in deployments:
        assert [b for b in budgets if selects(b, deployment)], deployment["metadata"]["name"]
    for service in _of(rendered, "Service"):
        (target,) = [d for d in deployments if selects(service["spec"]["selector"], d)]
        ports = {p["name"] for p in _pod(target)["containers"][0]["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports


def test_the_renderer_refuses_a_kustomize_field_it_does_not_implement(tmp_path: Path) -> None:
    """It would otherwise render something else than `kubectl apply -k` applies."""
    (tmp_path / "kustomization.yaml").write_text("resources: []\nreplicas:\n  - {name: x, count: 2}\n")
    with pytest.raises(KustomizeError, match="replicas not supported"):
        render(tmp_path)


POOL_DEFAULT = Settings.model_fields["database_pool_size"].default
RESERVED_CONNECTIONS = 10
"""PostgreSQL's superuser_reserved_connections (3) and a few for an operator's psql and the migrate Job."""


def test_every_pool_at_full_scale_fits_the_databases_connections(rendered: list[dict[str, Any]]) -> None:
    """Pods x DATABASE_POOL_SIZE under the database's max_connections, the workers at KEDA's maximum
    and twice (a rollout runs the old build's workers beside the new), the other Deployments with
    one pod surged: past it, a pod added under load fails its connects and its work retries
    (the scale-out drill saw "too many clients" hold a reminders day's lanes for 20-30 s)."""
    (config,) = [c for c in _of(rendered, "ConfigMap") if c["metadata"]["name"] == "jobctl-config"]
    ceiling = int(config["metadata"]["annotations"]["jobctl.dev/database-max-connections"])
    most = {s["spec"]["scaleTargetRef"]["name"]: s["spec"]["maxReplicaCount"] for s in _of(rendered, "ScaledObject")}
    used: dict[str, int] = {}
    for deployment in _of(rendered, "Deployment"):
        environment = _environment(deployment, rendered)
        if "DATABASE_URL" not in environment:
            continue
        pool = environment.get("DATABASE_POOL_SIZE", {}).get("value") or POOL_DEFAULT
        name = deployment["metadata"]["name"]
        pods = 2 * most[name] if name in most else deployment["spec"].get("replicas", 1) + 1
        used[name] = pods * int(pool)
    assert any(name in most for name in used), "the workers' pools are counted"
    assert sum(used.values()) + RESERVED_CONNECTIONS <= ceiling, (
        f"{sum(used.values())} connections at full scale ({used}) + {RESERVED_CONNECTIONS} reserved"
        f" > max_connections {ceiling}: lower a DATABASE_POOL_SIZE or a maxReplicaCount, or raise the database's"
    )
