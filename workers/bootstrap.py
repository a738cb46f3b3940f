"""`jobctl bootstrap`: make a Temporal namespace ready for the worker, idempotently.

One path for every cluster: `jobctl dev` runs the same steps against its dev server, an operator
runs `jobctl bootstrap` against a self-hosted cluster or Temporal Cloud before the first worker
(and after each deploy: a second run changes nothing). The steps, in order (a schedule's action
carries the `JobName` search attribute, so the attributes come first):

1. the custom search attributes (`schemas/search_attributes.py`, Keyword), added where missing;
2. the singleton workflows (`singletons()`: the `messaging-brake`), started where not running;
3. the codec key: PAYLOAD_ENCRYPTION_KEY encrypts and decrypts, the schedules' stored inputs open
   with it (a key dropped too early is caught here, before anything is written with the new one),
   and the codec server (when given) decodes what this key encodes and the other way round;
4. the schedules (`workers/schedules.apply`: created, updated in place, or left as they are).

Each step is one `Step` line: `created`, `updated`, `unchanged`, or `failed` with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from config.settings import Settings
from schemas import search_attributes
from workers import schedules


@dataclass(frozen=True)
class Step:
    name: str
    outcome: str
    """created | updated | unchanged | failed"""
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.outcome == "failed"

    def line(self) -> str:
        return f"{self.name}: {self.outcome}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class Singleton:
    """A workflow that must always run once, under a fixed id, on the jobs queue."""

    workflow_id: str
    run: Callable[..., Any]


def singletons() -> Sequence[Singleton]:
    from workflows.brake import BRAKE_WORKFLOW_ID, MessagingBrakeWorkflow

    return (Singleton(BRAKE_WORKFLOW_ID, MessagingBrakeWorkflow.run),)


KEYWORD = IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD


async def register_search_attributes(client: Client) -> list[Step]:
    """Add the missing custom search attributes (Keyword); one already there with another type fails."""
    try:
        existing = dict(
            (
                await client.operator_service.list_search_attributes(
                    ListSearchAttributesRequest(namespace=client.namespace)
                )
            ).custom_attributes
        )
    except RPCError as exc:
        return [Step("search attributes", "failed", f"cannot list them: {exc.message}")]
    steps, missing = [], []
    for key in search_attributes.ALL:
        name = f"search attribute {key.name}"
        if key.name not in existing:
            missing.append(key.name)
        elif existing[key.name] != KEYWORD:
            kind = IndexedValueType.Name(existing[key.name]).removeprefix("INDEXED_VALUE_TYPE_").title()
            steps.append(Step(name, "failed", f"exists as {kind}, jobctl needs Keyword"))
        else:
            steps.append(Step(name, "unchanged"))
    if missing:
        try:
            await client.operator_service.add_search_attributes(
                AddSearchAttributesRequest(
                    namespace=client.namespace, search_attributes=dict.fromkeys(missing, KEYWORD)
                )
            )
        except RPCError as exc:
            # Temporal Cloud adds them through its own API (tcld, the Cloud UI), not the operator service.
            detail = f"{exc.message}; create them as Keyword (Temporal Cloud: tcld or the Cloud UI)"
            steps += [Step(f"search attribute {n}", "failed", detail) for n in missing]
        else:
            steps += [Step(f"search attribute {n}", "created", "Keyword") for n in missing]
    order = [f"search attribute {key.name}" for key in search_attributes.ALL]
    return sorted(steps, key=lambda step: order.index(step.name))


async def start_singletons(client: Client, settings: Settings) -> list[Step]:
    """Start each singleton that is not running (one that ended is started again)."""
    steps = []
    for singleton in singletons():
        name = f"workflow {singleton.workflow_id}"
        try:
            await client.start_workflow(singleton.run, id=singleton.workflow_id, task_queue=settings.task_queue)
        except WorkflowAlreadyStartedError:
            steps.append(Step(name, "unchanged", "running"))
        except RPCError as exc:
            steps.append(Step(name, "failed", exc.message))
        else:
            steps.append(Step(name, "created", f"on task queue {settings.task_queue}"))
    return steps


async def apply_schedules(client: Client, settings: Settings) -> list[Step]:
    from workers import families

    try:
        applied = await schedules.apply(client, settings, families.all_schedules())
    except RPCError as exc:
        return [Step("schedules", "failed", exc.message)]
    return [Step(f"schedule {schedule_id}", outcome) for schedule_id, outcome in applied]


PROBE = b'"jobctl bootstrap codec probe"'


async def check_codec(client: Client, settings: Settings) -> Step:
    """The key round-trips and opens what the schedules hold (written with it by an earlier run)."""
    from workers import families
    from workers.codec import EncryptionCodec, UndecodablePayload

    if not settings.payload_encryption_key:
        return Step("codec key", "unchanged", "PAYLOAD_ENCRYPTION_KEY not set: payloads are not encrypted")
    codec = EncryptionCodec.from_setting(settings.payload_encryption_key.get_secret_value())
    probe = Payload(metadata={"encoding": b"json/plain"}, data=PROBE)
    encoded = await codec.encode([probe])
    try:
        if await codec.decode_strict(encoded) != [probe]:
            return Step("codec key", "failed", "the key does not decrypt what it encrypts")
        for definition in families.all_schedules():
            try:
                described = await client.get_schedule_handle(definition.schedule_id).describe()
            except RPCError as exc:
                if exc.status == RPCStatusCode.NOT_FOUND:
                    continue  # not applied yet: nothing stored to open
                raise
            args = getattr(described.schedule.action, "args", [])
            await codec.decode_strict([a for a in args if isinstance(a, Payload)])
    except UndecodablePayload as exc:
        return Step(
            "codec key",
            "failed",
            f"schedule {definition.schedule_id}'s stored input: {exc}; PAYLOAD_ENCRYPTION_KEY must keep every key "
            "histories still use (the new key first, the old ones after it)",
        )
    except RPCError as exc:
        return Step("codec key", "failed", exc.message)
    return Step("codec key", "unchanged", f"key {codec.current_key_id} encrypts; what the schedules hold decrypts")


async def check_codec_server(settings: Settings, url: str, token: str | None) -> Step:
    """The codec server decodes what this key encodes, and this key what the server encodes."""
    from workers.codec import EncryptionCodec

    name = f"codec server {url}"
    if not settings.payload_encryption_key:
        return Step(name, "failed", "PAYLOAD_ENCRYPTION_KEY is not set: nothing to compare the server with")
    codec = EncryptionCodec.from_setting(settings.payload_encryption_key.get_secret_value())
    problem = await _codec_server_problem(codec, url, token, Payload(metadata={"encoding": b"json/plain"}, data=PROBE))
    return Step(name, "failed", problem) if problem else Step(name, "unchanged", "decodes with the same key")


async def _codec_server_problem(codec: Any, url: str, token: str | None, probe: Payload) -> str | None:
    """The codec server decodes this key's ciphertext, and this key decodes the server's."""
    import aiohttp

    from workers.codec import UndecodablePayload

    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"

    async def call(http: aiohttp.ClientSession, path: str, payloads: list[Payload]) -> list[Payload] | str:
        body = json_format.MessageToJson(Payloads(payloads=payloads))
        async with http.post(f"{url.rstrip('/')}{path}", data=body, headers=headers) as response:
            if response.status == 400 and path == "/decode":
                return f"it does not decode this key's payloads (another key?): {(await response.text())[:200]}"
            if response.status != 200:
                return f"{path} answered {response.status}"
            return list(json_format.Parse(await response.text(), Payloads()).payloads)

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            decoded = await call(http, "/decode", await codec.encode([probe]))
            if isinstance(decoded, str):
                return decoded
            if decoded != [probe]:
                return "it does not decode this key's payloads (another key?)"
            encoded = await call(http, "/encode", [probe])
            if isinstance(encoded, str):
                return encoded
            if await codec.decode_strict(encoded) != [probe]:
                return "this key does not decode its payloads"
    except UndecodablePayload as exc:
        return f"its /encode: {exc}"
    except (aiohttp.ClientError, TimeoutError, json_format.ParseError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


async def bootstrap(
    client: Client, settings: Settings, *, codec_server: str | None = None, codec_token: str | None = None
) -> list[Step]:
    """Every step, in order. The codec key is checked before the schedules are written (their inputs
    are encrypted with it); they are skipped when a search attribute (`JobName`) or the key failed."""
    steps = await register_search_attributes(client)
    steps += await start_singletons(client, settings)
    steps.append(codec := await check_codec(client, settings))
    if any(step.failed for step in steps if step.name.startswith("search attribute")):
        steps.append(Step("schedules", "failed", "skipped: the search attributes are not all there"))
    elif codec.failed:
        steps.append(Step("schedules", "failed", "skipped: the codec key is not right"))
    else:
        steps += await apply_schedules(client, settings)
    if codec_server:
        steps.append(await check_codec_server(settings, codec_server, codec_token))
    return steps
