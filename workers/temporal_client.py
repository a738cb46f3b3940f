"""One way to reach Temporal: the local dev server, a self-hosted cluster (mTLS, a private CA) or
Temporal Cloud, with the `temporal` CLI's profiles, and the same data converter everywhere."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.envconfig import ClientConfigProfile, ClientConfigTLS
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.service import TLSConfig

from config.settings import Settings, SettingsError
from workers.codec import data_converter
from workers.tracing import client_interceptors


@dataclass(frozen=True)
class ClientOptions:
    """Where and how `connect` reaches Temporal: the envconfig profile with jobctl's settings on top."""

    target_host: str
    namespace: str
    api_key: str | None = field(default=None, repr=False)  # never in a log line or a traceback
    tls: TLSConfig | bool = field(default=False, repr=False)  # holds the client's private key
    rpc_metadata: Mapping[str, str] = field(default_factory=dict)


def client_options(settings: Settings, *, environ: Mapping[str, str] | None = None) -> ClientOptions:
    """The Temporal client's options, in this order of precedence (docs/OPERATIONS.md, "Connecting
    to a cluster"), the first that sets a value wins:

    1. jobctl's settings that were set (environment, `.jobctl/dev-stack.env`, or explicitly):
       TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TEMPORAL_TLS_CERT/KEY,
       TEMPORAL_TLS_SERVER_CA, TEMPORAL_TLS_SERVER_NAME;
    2. the `temporal` CLI's environment configuration (`temporalio.envconfig`): the profile
       TEMPORAL_PROFILE (default `default`) of the TOML file TEMPORAL_CONFIG_FILE (default the CLI's,
       ~/.config/temporalio/temporal.toml), overridden by its own TEMPORAL_* variables
       (TEMPORAL_TLS_CLIENT_CERT_PATH, TEMPORAL_TLS_SERVER_CA_CERT_DATA, TEMPORAL_GRPC_META_*, ...);
    3. jobctl's defaults: 127.0.0.1:7233, namespace `default`, no TLS.

    `environ`: the variables envconfig reads (default: the process's)."""
    env = dict(os.environ if environ is None else environ)
    profile_name = env.get("TEMPORAL_PROFILE") or None
    try:
        profile = ClientConfigProfile.load(profile_name, override_env_vars=env)
    except Exception as exc:  # noqa: BLE001 - the bridge's ConfigError: a bad file or an unknown profile
        raise SettingsError(f"TEMPORAL_PROFILE/TEMPORAL_CONFIG_FILE: {exc}") from None
    given = settings.model_fields_set

    def setting(name: str) -> Any:
        value = getattr(settings, name)
        return value if name in given and value not in (None, "") else None

    api_key_setting = setting("temporal_api_key")
    api_key = api_key_setting.get_secret_value() if api_key_setting else profile.api_key
    return ClientOptions(
        target_host=setting("temporal_address") or profile.address or settings.temporal_address,
        namespace=setting("temporal_namespace") or profile.namespace or settings.temporal_namespace,
        api_key=api_key,
        tls=_tls(settings, profile.tls, api_key),
        rpc_metadata=dict(profile.grpc_meta),
    )


def _tls(settings: Settings, profile: ClientConfigTLS | None, api_key: str | None) -> TLSConfig | bool:
    """mTLS when a client certificate is configured, TLS with the given CA and server name when
    either is set, plain TLS for API keys (or TEMPORAL_TLS=true), none locally."""
    profile = profile or ClientConfigTLS()
    cert = _pem(settings.temporal_tls_cert, "TEMPORAL_TLS_CERT") or _source(profile.client_cert, "client cert")
    key = _pem(settings.temporal_tls_key, "TEMPORAL_TLS_KEY") or _source(profile.client_private_key, "client key")
    if bool(cert) != bool(key):
        raise SettingsError("TEMPORAL_TLS_CERT: set together with TEMPORAL_TLS_KEY")
    server_ca = _pem(settings.temporal_tls_server_ca, "TEMPORAL_TLS_SERVER_CA") or _source(
        profile.server_root_ca_cert, "server CA"
    )
    server_name = settings.temporal_tls_server_name or profile.server_name
    if cert or server_ca or server_name:
        return TLSConfig(server_root_ca_cert=server_ca, domain=server_name, client_cert=cert, client_private_key=key)
    if profile.disabled is not None:
        return not profile.disabled
    return api_key is not None


def _pem(value: str | None, name: str) -> bytes | None:
    """Accept the PEM itself or a path to it (what secret mounts give you)."""
    if not value:
        return None
    if value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    path = Path(value)
    if not path.is_file():
        raise SettingsError(f"{name}: no such file {value!r}")
    return path.read_bytes()


def _source(value: Path | str | bytes | None, what: str) -> bytes | None:
    """An envconfig data source (a path, or the PEM itself) as bytes."""
    if value is None:
        return None
    if isinstance(value, Path):
        if not value.is_file():
            raise SettingsError(
                f"TEMPORAL_PROFILE: the {what} file {str(value)!r} (profile or TEMPORAL_TLS_*_PATH) does not exist"
            )
        return value.read_bytes()
    return value.encode() if isinstance(value, str) else value


@lru_cache(maxsize=4)
def metrics_runtime(bind: str) -> Runtime:
    """One SDK runtime per process serving Prometheus metrics (SDK and business) at `bind`."""
    return Runtime(
        telemetry=TelemetryConfig(
            metrics=PrometheusConfig(
                bind_address=bind, histogram_bucket_overrides={"job_duration": JOB_DURATION_BUCKETS_MS}
            )
        )
    )


# Jobs run from under a second (a payment) to hours (a nightly sweep, a 24-hour order clock).
JOB_DURATION_BUCKETS_MS = [
    ms * 1000.0 for ms in (1, 5, 30, 60, 300, 900, 3600, 3 * 3600, 24 * 3600, 7 * 86400, 30 * 86400)
]


class TemporalUnreachable(RuntimeError):
    """`connect` failed: the message names the address and the first line of the reason."""


async def connect(settings: Settings, *, lazy: bool = False) -> Client:
    """Pydantic payloads (Decimal amounts stay exact) for every client and worker. `lazy`: connect
    at the first call, so a command refused before it needs Temporal never needs it reachable."""
    options = client_options(settings)
    try:
        return await Client.connect(
            options.target_host,
            lazy=lazy,
            namespace=options.namespace,
            api_key=options.api_key,
            tls=options.tls,
            rpc_metadata=options.rpc_metadata,
            data_converter=data_converter(
                settings.payload_encryption_key.get_secret_value() if settings.payload_encryption_key else None
            ),
            runtime=metrics_runtime(settings.metrics_bind) if settings.metrics_bind else None,
            interceptors=client_interceptors(),  # tracing, once the process started it (workers/tracing.py)
        )
    except RuntimeError as exc:  # the bridge's "Failed client connect: ..." (TLS, DNS, refused)
        raise TemporalUnreachable(f"Temporal at {describe_target(options)}: {_reason(exc)}") from exc


def describe_target(options: ClientOptions) -> str:
    """`host:port (namespace n, TLS with CA, server name x)` for messages; never a secret."""
    tls = options.tls
    if isinstance(tls, TLSConfig):
        parts = ["TLS"]
        if tls.server_root_ca_cert:
            parts.append("private CA")
        if tls.domain:
            parts.append(f"server name {tls.domain}")
        if tls.client_cert:
            parts.append("client certificate")
        how = ", ".join(parts)
    else:
        how = "TLS" if tls else "no TLS"
    return f"{options.target_host} (namespace {options.namespace}, {how})"


def _reason(exc: BaseException) -> str:
    """The bridge's one long line (a Rust error's debug form) as a sentence an operator can act on."""
    text = " ".join(str(exc).split())
    if match := re.search(r"NotValidForName\w*\s*\{\s*expected:\s*(\w+)\((.*?)\),\s*presented:\s*\[(.*?)\]", text):
        expected = match.group(2).strip('"')
        if match.group(1) == "IpAddress":
            octets = re.search(r"\[([\d,\s]+)\]", match.group(2))  # IpAddress(V4(Ipv4Addr([127, 0, 0, 1])))
            expected = ".".join(octets.group(1).replace(" ", "").split(",")) if octets else expected
        presented = ", ".join(re.findall(r'\w+\(\\?"([^"\\]+)\\?"\)', match.group(3))) or match.group(3)
        return (
            f"TLS: the server's certificate is not valid for {expected!r} (it names {presented}); "
            "set TEMPORAL_TLS_SERVER_NAME to a name it carries"
        )
    if "UnknownIssuer" in text:
        return (
            "TLS: the server's certificate is not signed by a trusted CA; "
            "set TEMPORAL_TLS_SERVER_CA to the CA that signed it"
        )
    if "Expired" in text and "InvalidCertificate" in text:
        return "TLS: the server's certificate has expired"
    if "Connection refused" in text:
        return "connection refused (nothing listens there)"
    if "dns error" in text:
        return "the host name does not resolve"
    return text
