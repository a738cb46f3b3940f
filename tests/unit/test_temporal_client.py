"""The Temporal client's options: the `temporal` CLI's profiles (envconfig), jobctl's settings on top."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.service import TLSConfig

from config.settings import Settings, SettingsError
from workers.temporal_client import client_options, describe_target

CA = "-----BEGIN CERTIFICATE-----\nTUlJQ2E=\n-----END CERTIFICATE-----\n"
PROFILES = """
[profile.default]
address = "default.example:7233"

[profile.prod]
address = "prod.example:7233"
namespace = "jobs-prod"
grpc_meta = { "x-team" = "payments" }

[profile.prod.tls]
server_name = "frontend.internal"
server_ca_cert_path = "{ca}"
client_cert_data = "CERT"
client_key_data = "KEY"

[profile.cloud]
address = "jobs.a1b2c.tmprl.cloud:7233"
namespace = "jobs.a1b2c"
api_key = "cloud-key"
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    (tmp_path / "ca.pem").write_text(CA)
    path = tmp_path / "temporal.toml"
    path.write_text(PROFILES.replace("{ca}", str(tmp_path / "ca.pem")))
    return path


def settings(**given: object) -> Settings:
    return Settings(_env_file=None, **given)  # type: ignore[arg-type, call-arg]


def test_nothing_configured_is_the_local_dev_server_without_tls(tmp_path: Path) -> None:
    options = client_options(settings(), environ={"TEMPORAL_CONFIG_FILE": str(tmp_path / "absent.toml")})
    assert (options.target_host, options.namespace, options.tls, options.api_key) == (
        "127.0.0.1:7233",
        "default",
        False,
        None,
    )


def test_a_profile_gives_address_namespace_mtls_with_its_ca_and_server_name(config_file: Path) -> None:
    options = client_options(settings(), environ={"TEMPORAL_CONFIG_FILE": str(config_file), "TEMPORAL_PROFILE": "prod"})
    assert (options.target_host, options.namespace) == ("prod.example:7233", "jobs-prod")
    assert isinstance(options.tls, TLSConfig)
    assert options.tls.server_root_ca_cert == CA.encode() and options.tls.domain == "frontend.internal"
    assert (options.tls.client_cert, options.tls.client_private_key) == (b"CERT", b"KEY")
    assert options.rpc_metadata == {"x-team": "payments"}
    assert "server name frontend.internal" in describe_target(options) and "KEY" not in describe_target(options)
    assert "KEY" not in repr(options), "the private key never reaches a log line"


def test_the_default_profile_is_read_without_temporal_profile(config_file: Path) -> None:
    assert client_options(settings(), environ={"TEMPORAL_CONFIG_FILE": str(config_file)}).target_host == (
        "default.example:7233"
    )


def test_an_api_key_profile_turns_on_tls(config_file: Path) -> None:
    options = client_options(
        settings(), environ={"TEMPORAL_CONFIG_FILE": str(config_file), "TEMPORAL_PROFILE": "cloud"}
    )
    assert options.api_key == "cloud-key" and options.tls is True
    assert "cloud-key" not in repr(options)


def test_envconfig_variables_override_the_profile(config_file: Path) -> None:
    options = client_options(
        settings(),
        environ={
            "TEMPORAL_CONFIG_FILE": str(config_file),
            "TEMPORAL_PROFILE": "prod",
            "TEMPORAL_NAMESPACE": "jobs-staging",
            "TEMPORAL_TLS_SERVER_NAME": "staging.internal",
        },
    )
    assert options.namespace == "jobs-staging" and isinstance(options.tls, TLSConfig)
    assert options.tls.domain == "staging.internal"


def test_jobctl_settings_that_were_set_win_over_the_profile(config_file: Path, tmp_path: Path) -> None:
    (tmp_path / "other-ca.pem").write_text(CA.replace("TUlJQ2E=", "b3RoZXI="))
    options = client_options(
        settings(
            temporal_address="cluster.internal:7233",
            temporal_namespace="jobs",
            temporal_tls_server_ca=str(tmp_path / "other-ca.pem"),
            temporal_tls_server_name="temporal.test",
            temporal_tls_cert="-----BEGIN CERTIFICATE-----\nmine\n-----END CERTIFICATE-----",
            temporal_tls_key="-----BEGIN PRIVATE KEY-----\nmine\n-----END PRIVATE KEY-----",
        ),
        environ={"TEMPORAL_CONFIG_FILE": str(config_file), "TEMPORAL_PROFILE": "prod"},
    )
    assert (options.target_host, options.namespace) == ("cluster.internal:7233", "jobs")
    assert isinstance(options.tls, TLSConfig)
    assert options.tls.domain == "temporal.test" and b"b3RoZXI=" in (options.tls.server_root_ca_cert or b"")
    assert (options.tls.client_cert or b"").startswith(b"-----BEGIN CERTIFICATE-----\nmine")


def test_defaults_of_settings_never_hide_the_profile(config_file: Path) -> None:
    """TEMPORAL_ADDRESS unset: jobctl's default 127.0.0.1:7233 is not a choice, the profile's address is."""
    options = client_options(
        settings(task_queue="jobs"), environ={"TEMPORAL_CONFIG_FILE": str(config_file), "TEMPORAL_PROFILE": "prod"}
    )
    assert options.target_host == "prod.example:7233"


def test_a_server_ca_alone_is_tls_verified_by_that_ca(tmp_path: Path) -> None:
    options = client_options(
        settings(temporal_tls_server_ca=CA), environ={"TEMPORAL_CONFIG_FILE": str(tmp_path / "absent.toml")}
    )
    assert isinstance(options.tls, TLSConfig) and options.tls.server_root_ca_cert == CA.encode()
    assert options.tls.client_cert is None


def test_mistakes_name_the_setting(config_file: Path, tmp_path: Path) -> None:
    absent = {"TEMPORAL_CONFIG_FILE": str(tmp_path / "absent.toml")}
    with pytest.raises(SettingsError, match="TEMPORAL_TLS_CERT: set together with TEMPORAL_TLS_KEY"):
        client_options(settings(temporal_tls_cert=CA), environ=absent)
    with pytest.raises(SettingsError, match="TEMPORAL_TLS_SERVER_CA: no such file"):
        client_options(settings(temporal_tls_server_ca="/nowhere/ca.pem"), environ=absent)
    with pytest.raises(SettingsError, match="TEMPORAL_PROFILE.*nope"):
        client_options(settings(), environ={"TEMPORAL_CONFIG_FILE": str(config_file), "TEMPORAL_PROFILE": "nope"})
