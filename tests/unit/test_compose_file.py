"""temporal-dev.yml cannot run here (no Docker engine), so check its shape instead."""

from __future__ import annotations

from pathlib import Path

import yaml

from schemas import search_attributes

COMPOSE = Path(__file__).resolve().parents[2] / "temporal-dev.yml"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_services_are_temporal_on_postgres_with_ui_and_admin_tools() -> None:
    services = _compose()["services"]
    assert set(services) == {"postgresql", "temporal", "temporal-admin-tools", "temporal-ui"}
    assert services["temporal"]["environment"]["DB"].startswith("postgres")
    assert services["temporal"]["depends_on"]["postgresql"]["condition"] == "service_healthy"


def test_ports_match_what_jobctl_expects_and_stay_on_loopback() -> None:
    services = _compose()["services"]
    assert services["temporal"]["ports"] == ["127.0.0.1:7233:7233"]
    assert services["temporal-ui"]["ports"] == ["127.0.0.1:8233:8080"]
    assert services["postgresql"]["ports"] == ["127.0.0.1:5432:5432"]


def test_admin_tools_register_every_custom_search_attribute() -> None:
    command = " ".join(_compose()["services"]["temporal-admin-tools"]["command"])
    for key in search_attributes.ALL:
        assert key.name in command
    assert "--type Keyword" in command
