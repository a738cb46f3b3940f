"""temporal-dev.yml cannot run here (no Docker engine), so check its shape instead."""

from __future__ import annotations

from pathlib import Path

import yaml

from devtools import temporal_config
from schemas import search_attributes

COMPOSE = Path(__file__).resolve().parents[2] / "temporal-dev.yml"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_services_are_temporal_on_postgres_with_ui_and_admin_tools() -> None:
    services = _compose()["services"]
    assert set(services) == {
        "postgresql",
        "temporal-admin-tools",
        "temporal",
        "temporal-create-namespace",
        "temporal-ui",
    }
    assert services["temporal"]["environment"]["DB"].startswith("postgres")
    assert services["temporal-admin-tools"]["depends_on"]["postgresql"]["condition"] == "service_healthy"
    assert services["temporal"]["depends_on"]["temporal-admin-tools"]["condition"] == (
        "service_completed_successfully"
    ), "the server starts on a schema set up (or upgraded) first"


def test_images_are_the_maintained_ones_at_one_version() -> None:
    """auto-setup is deprecated; the server and its admin tools move together, the UI is recent
    enough for worker versioning (2.36+)."""
    services = _compose()["services"]
    images = {name: service["image"] for name, service in services.items()}
    assert not any("auto-setup" in image for image in images.values())
    server = images["temporal"].removeprefix("temporalio/server:")
    assert images["temporal-admin-tools"] == images["temporal-create-namespace"] == f"temporalio/admin-tools:{server}"
    version = server.split(":-")[-1].rstrip("}")
    assert tuple(int(p) for p in version.split(".")[:2]) >= (1, 30), version
    ui = images["temporal-ui"].split(":-")[-1].rstrip("}")
    assert tuple(int(p) for p in ui.split(".")[:2]) >= (2, 36), ui


def test_ports_match_what_jobctl_expects_and_stay_on_loopback() -> None:
    services = _compose()["services"]
    assert services["temporal"]["ports"] == ["127.0.0.1:7233:7233"]
    assert services["temporal-ui"]["ports"] == ["127.0.0.1:8233:8080"]
    assert services["postgresql"]["ports"] == ["127.0.0.1:5432:5432"]


def test_the_schema_setup_covers_both_databases_and_jobctl_bootstrap_does_the_rest() -> None:
    compose = _compose()
    setup = " ".join(compose["services"]["temporal-admin-tools"]["command"])
    assert "setup-schema" in setup and "update-schema" in setup and "temporal_visibility" in setup
    namespace = " ".join(compose["services"]["temporal-create-namespace"]["command"])
    assert (
        "namespace describe --namespace default" in namespace and "|| temporal operator namespace create" in namespace
    )
    text = COMPOSE.read_text()
    assert "jobctl bootstrap" in text, "the header says what makes the namespace ready for the worker"
    for key in search_attributes.ALL:  # registered by `jobctl bootstrap`, one path for every cluster
        assert key.name not in text
    dynamic = COMPOSE.parent / "docs" / "docker" / "dynamicconfig.yaml"
    assert yaml.safe_load(dynamic.read_text())["system.forceSearchAttributesCacheRefreshOnRead"][0]["value"] is True


def test_the_compose_server_runs_priority_fairness_and_shard_reads_as_the_dev_server_does() -> None:
    """One server config for jobctl (devtools/temporal_config.py); the compose file's server has
    4 history shards, few enough to want the dev server's queue reads. Partition counts excepted:
    a cluster keeps its own (docs/OPERATIONS.md)."""
    dynamic = yaml.safe_load((COMPOSE.parent / "docs" / "docker" / "dynamicconfig.yaml").read_text())
    wanted = {**temporal_config.PRIORITY_AND_FAIRNESS, **temporal_config.ONE_SHARD}
    for key, value in wanted.items():
        if key.startswith("matching.numTaskqueue"):
            continue
        assert str(dynamic[key][0]["value"]).lower() == value, key
