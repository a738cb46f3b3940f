"""A cluster behind a private CA: the worker's client connects over mutual TLS with the CA and the
server name, and refuses a server whose certificate does not carry that name or is not the CA's.

`temporal server start-dev` has no TLS flags, so the dev server sits behind a TLS-terminating
proxy on loopback (as a load balancer or an ingress would be), with a CA and certificates made here.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import ssl
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from temporalio import workflow
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from config.settings import Settings, load_settings
from schemas.insights import InsightsRequest
from tests.conftest import UNUSED_STRIPE
from workers.temporal_client import TemporalUnreachable, connect
from workflows.insights import InsightsRegenerationWorkflow

JOBCTL = str(Path(sys.executable).parent / "jobctl")
SERVER_NAME = "temporal.test"


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], name: str, usage: x509.ObjectIdentifier
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert, ca_key = ca
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = _ca("jobctl test CA")
    server = _leaf(ca, SERVER_NAME, ExtendedKeyUsageOID.SERVER_AUTH)
    client = _leaf(ca, "jobctl-worker", ExtendedKeyUsageOID.CLIENT_AUTH)
    other_ca, _ = _ca("someone else's CA")
    files = {
        "ca": ca[0].public_bytes(serialization.Encoding.PEM),
        "server_cert": server[0].public_bytes(serialization.Encoding.PEM),
        "server_key": _pem_key(server[1]),
        "client_cert": client[0].public_bytes(serialization.Encoding.PEM),
        "client_key": _pem_key(client[1]),
        "other_ca": other_ca.public_bytes(serialization.Encoding.PEM),
    }
    for name, data in files.items():
        (root / f"{name}.pem").write_bytes(data)
    return Pki(**{name: root / f"{name}.pem" for name in files})


@pytest_asyncio.fixture(scope="module")
async def tls_address(pki: Pki, dev_env: WorkflowEnvironment) -> AsyncIterator[str]:
    """A TLS-terminating TCP proxy on loopback in front of the dev server, requiring a client
    certificate from the CA (mutual TLS, as a self-hosted cluster's frontend would)."""
    upstream_host, upstream_port = dev_env.client.service_client.config.target_host.rsplit(":", 1)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    context.load_cert_chain(pki.server_cert, pki.server_key)
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])  # gRPC is HTTP/2

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(ConnectionError, ssl.SSLError, RuntimeError):
            writer.close()

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(upstream_host, int(upstream_port))
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(pipe(client_reader, upstream_writer), pipe(upstream_reader, client_writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    yield f"127.0.0.1:{port}"
    server.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(server.wait_closed(), 5)


def tls_settings(address: str, pki: Pki, **overrides: object) -> Settings:
    given: dict[str, object] = {
        "temporal_address": address,
        "temporal_tls_server_ca": str(pki.ca),
        "temporal_tls_server_name": SERVER_NAME,
        "temporal_tls_cert": str(pki.client_cert),
        "temporal_tls_key": str(pki.client_key),
    }
    return load_settings(**{**given, **overrides})


@workflow.defn(sandboxed=False)
class Hello:
    @workflow.run
    async def run(self, name: str) -> str:
        return f"hello {name}"


async def test_the_client_connects_through_mutual_tls_with_the_private_ca_and_runs_a_workflow(
    tls_address: str, pki: Pki
) -> None:
    client = await connect(tls_settings(tls_address, pki))
    described = await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace="default"))
    assert described.namespace_info.name == "default"

    queue = f"tls-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=queue, workflows=[Hello]):
        result = await client.execute_workflow(Hello.run, "cluster", id=f"tls-{uuid.uuid4()}", task_queue=queue)
    assert result == "hello cluster"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        (
            {"temporal_tls_server_name": "wrong.test"},
            "TLS: the server's certificate is not valid for 'wrong.test' (it names temporal.test); "
            "set TEMPORAL_TLS_SERVER_NAME",
        ),
        ({"temporal_tls_server_name": None}, "not valid for '127.0.0.1' (it names temporal.test)"),
        ({"temporal_tls_server_ca": None}, "not signed by a trusted CA; set TEMPORAL_TLS_SERVER_CA"),
        ("other_ca", "not signed by a trusted CA"),
    ],
    ids=["wrong server name", "no server name", "no CA", "another CA"],
)
async def test_a_server_that_is_not_the_one_named_is_refused_with_a_clear_error(
    tls_address: str, pki: Pki, overrides: dict[str, object] | str, reason: str
) -> None:
    if overrides == "other_ca":
        overrides = {"temporal_tls_server_ca": str(pki.other_ca)}
    assert isinstance(overrides, dict)
    with pytest.raises(TemporalUnreachable) as refused:
        await asyncio.wait_for(connect(tls_settings(tls_address, pki, **overrides)), timeout=30)
    message = str(refused.value)
    assert message.startswith(f"Temporal at {tls_address} (namespace default, TLS"), message
    assert reason in message and "\n" not in message, message


async def test_the_worker_readiness_probe_through_tls_from_the_environment(
    tls_address: str, pki: Pki, database_url: str
) -> None:
    """`jobctl worker --check` as a deployment runs it: every TLS setting from the environment."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "DATABASE_"))}
    environ = {
        **clean,
        "TEMPORAL_CONFIG_FILE": os.devnull,
        "DATABASE_URL": database_url,
        "TEMPORAL_ADDRESS": tls_address,
        "TEMPORAL_TLS_SERVER_CA": pki.ca.read_text(),  # the PEM itself, as a secret in the environment
        "TEMPORAL_TLS_SERVER_NAME": SERVER_NAME,
        "TEMPORAL_TLS_CERT": str(pki.client_cert),
        "TEMPORAL_TLS_KEY": str(pki.client_key),
        **UNUSED_STRIPE,
    }

    async def check(**extra: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            JOBCTL,
            "worker",
            "--check",
            "--task-queue",
            "jobs",
            env={**environ, **extra},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
        assert process.returncode is not None
        return process.returncode, out.decode()

    code, out = await check()
    assert code == 0 and "ready" in out, out
    code, out = await check(TEMPORAL_TLS_SERVER_NAME="wrong.test")
    assert code == 1 and "not ready: Temporal at" in out and "not valid for 'wrong.test'" in out, out


async def test_a_real_jobctl_worker_runs_a_job_through_mutual_tls(
    tls_address: str, pki: Pki, database_url: str, dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    """The production entry point, `jobctl worker`, configured only by its environment, runs a job
    (tonight's insight regeneration, over an empty database) polling through the TLS proxy."""
    queue = f"tls-{uuid.uuid4().hex[:8]}"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "DATABASE_"))}
    environ = {
        **clean,
        "TEMPORAL_CONFIG_FILE": os.devnull,
        "DATABASE_URL": database_url,
        "TASK_QUEUE": queue,
        "TEMPORAL_ADDRESS": tls_address,
        "TEMPORAL_TLS_SERVER_CA": str(pki.ca),
        "TEMPORAL_TLS_SERVER_NAME": SERVER_NAME,
        "TEMPORAL_TLS_CERT": pki.client_cert.read_text(),
        "TEMPORAL_TLS_KEY": pki.client_key.read_text(),
        **UNUSED_STRIPE,
    }
    log = tmp_path / "worker.log"
    with open(log, "ab") as out:
        worker = subprocess.Popen(
            [JOBCTL, "worker", "--task-queue", "jobs"], env=environ, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        handle = await dev_env.client.start_workflow(
            InsightsRegenerationWorkflow.run,
            InsightsRequest(insight_date=date(2026, 11, 23)),
            id=f"insights/tls-{uuid.uuid4()}",
            task_queue=queue,
        )
        result = await asyncio.wait_for(handle.result(), timeout=90)
    finally:
        # The worker's shutdown goes through the proxy, which this test's event loop serves: wait
        # for it off the loop (a blocking wait starved the proxy and ran out its 30 s every time).
        worker.terminate()
        try:
            code = await asyncio.to_thread(worker.wait, 30)
        except subprocess.TimeoutExpired:
            worker.kill()
            code = None
    assert result.retailers_done == 0, log.read_text()[-2000:]  # only that worker polls `queue`
    assert code == 0 and "worker.stopped" in log.read_text(), log.read_text()[-2000:]  # drained on SIGTERM
