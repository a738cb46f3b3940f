"""`jobctl import KIND FILE`: a file of rows (CSV or JSON lines) into jobctl, resumable, reported.

The file is streamed, never loaded whole: read once to take its SHA-256 (and to refuse a file that
is not UTF-8 before anything is written), then row by row in batches. Each row goes through the
kind's mapping (`services.import_mappings`) and the kind's model (the same validation as the API's
doors: `schemas.directory`, `schemas.imports`); a row that fails is a refusal with its line number
and field. The valid rows of a batch go to the kind's one writer (`services.directory` for the
directory rows, `services.import_ledgers` for debits, payments, cases and points), and in the SAME
transaction the batch's refusals go to `import_refusals` and the checkpoint `import_runs` moves
past the batch's last line. So a crash (Ctrl-C, kill -9, a lost database) loses at most the batch
in flight: re-running the same command finds the run by its id (kind, mapping, SHA-256 of the
bytes), skips the lines done and finishes the file, and the writers are idempotent by the rows'
own ids anyway. A run that finished is not read again: it prints its report and exits.

What a writer asks after its commit (a guardrail re-check, a started case) runs after the commit
(`apply_effects`). `dry_run` runs every batch in a transaction that is rolled back (so refusals
the database decides show too) and writes no checkpoint.
"""

from __future__ import annotations

import asyncio
import codecs
import csv
import hashlib
import io
import json
from collections.abc import Awaitable, Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ValidationError
from sqlalchemy import text

from schemas.tables import IMPORT_KINDS
from services.import_mappings import ImportMapping, UnknownMapping, mapping

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
    from temporalio.client import Client

    from config.settings import Settings

Format = Literal["csv", "jsonl"]


class BadImport(Exception):
    """The invocation or the file as a whole cannot be imported (exit 2): nothing was written."""


class ConcurrentImport(BadImport):
    """Another process imports the same file (the same run) at the same time: this one stops."""


# --------------------------------------------------------------------------- the kinds


@dataclass(frozen=True)
class WriteEnv:
    """What a writer may use beyond its batch's connection: `client` is connected at first use."""

    engine: AsyncEngine
    settings: Settings
    client: Callable[[], Awaitable[Client]]
    dry_run: bool


@dataclass(frozen=True)
class Kind:
    name: str
    model: Callable[[], type[BaseModel]]
    write: Callable[[AsyncConnection, Sequence[Any], str, WriteEnv], Awaitable[Any]]
    """(conn, rows, actor, env) -> a `services.directory.BatchResult` (upserted, refused, effects)."""


def _directory(kind: str, model: str, writer: str) -> Kind:
    def load_model() -> type[BaseModel]:
        from schemas import directory

        return getattr(directory, model)

    async def write(conn: AsyncConnection, rows: Sequence[Any], actor: str, env: WriteEnv) -> Any:
        from services import directory

        return await getattr(directory, writer)(conn, rows, actor=actor)

    return Kind(name=kind, model=load_model, write=write)


def _ledger(kind: str, model: str) -> Kind:
    def load_model() -> type[BaseModel]:
        from schemas import imports

        return getattr(imports, model)

    async def write(conn: AsyncConnection, rows: Sequence[Any], actor: str, env: WriteEnv) -> Any:
        from services import import_ledgers

        return await getattr(import_ledgers, f"write_{kind}")(conn, rows, actor=actor, env=env)

    return Kind(name=kind, model=load_model, write=write)


KINDS: dict[str, Kind] = {
    "retailers": _directory("retailers", "RetailerIn", "upsert_retailers"),
    "credit_accounts": _directory("credit_accounts", "CreditAccountIn", "upsert_credit_accounts"),
    "credit_transactions": _ledger("credit_transactions", "CreditTransactionIn"),
    "orders": _directory("orders", "OrderIn", "upsert_orders"),
    "companies": _directory("companies", "CompanyIn", "upsert_companies"),
    "memberships": _directory("memberships", "MemberIn", "upsert_members"),
    "recovery_cases": _ledger("recovery_cases", "RecoveryCaseIn"),
    "customers": _directory("customers", "CustomerIn", "upsert_customers"),
    "loyalty_balances": _ledger("loyalty_balances", "LoyaltyBalanceIn"),
}
assert tuple(KINDS) == IMPORT_KINDS, "every kind import_runs allows has its writer"


# --------------------------------------------------------------------------- reading the file


@dataclass(frozen=True)
class Record:
    """One row of the file: where it starts, its values by source column, or why it cannot be read."""

    line: int
    end_line: int
    values: dict[str, Any] | None
    problem: str | None = None


def file_format(path: Path, given: str | None) -> Format:
    if given is not None:
        if given not in ("csv", "jsonl"):
            raise BadImport(f"unknown format {given!r} (known: csv, jsonl)")
        return given  # type: ignore[return-value]
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    raise BadImport(f"{path.name}: cannot tell the format from {suffix or 'no extension'!r}; say --format csv|jsonl")


def digest(path: Path) -> str:
    """SHA-256 of the file's bytes, read in chunks; a file that is not UTF-8 is refused whole here,
    before anything is written (`BadImport` naming the byte)."""
    sha = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = newlines = 0
    try:
        with path.open("rb") as stream:
            while chunk := stream.read(1 << 20):
                sha.update(chunk)
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as error:
                    # (the decoder may hold up to 3 bytes of the chunk before: the position is near enough)
                    line = newlines + chunk[: max(error.start, 0)].count(b"\n") + 1
                    raise BadImport(
                        f"{path.name}: not UTF-8 (line {line}, byte {offset + error.start + 1}); save it as UTF-8"
                    ) from None
                offset += len(chunk)
                newlines += chunk.count(b"\n")
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise BadImport(f"{path.name}: not UTF-8 (the file ends inside a character)") from None
    except OSError as error:
        raise BadImport(f"cannot read {path}: {error.strerror or error}") from None
    return sha.hexdigest()


def _csv_records(stream: io.TextIOBase, name: str, mapping_: ImportMapping, known: frozenset[str]) -> Iterator[Record]:
    reader = csv.reader(stream)
    try:
        header = next(reader)
    except StopIteration:
        raise BadImport(f"{name}: empty file (a CSV needs a header line)") from None
    except csv.Error as error:
        raise BadImport(f"{name}: line 1: {error}") from None
    header = [h.strip() for h in header]
    problems = _header_problems(header, known)
    if problems:
        raise BadImport(f"{name}: bad header: {problems} (mapping {mapping_.name} knows: {', '.join(sorted(known))})")
    last = reader.line_num
    while True:
        start = last + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            last = reader.line_num
            yield Record(start, last, None, f"unreadable CSV: {error}")
            continue
        last = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            yield Record(start, last, None, f"{len(row)} values for {len(header)} columns")
            continue
        # An empty cell is an absent value: the model's default applies (or it is required).
        yield Record(start, last, {h: v for h, v in zip(header, row, strict=True) if v.strip() != ""})


def _header_problems(header: list[str], known: frozenset[str]) -> str:
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated:
        return f"column {duplicated[0]!r} twice"
    unknown = [h for h in header if h not in known]
    if unknown:
        return f"unknown column {unknown[0]!r}" + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
    return ""


def _jsonl_records(stream: io.TextIOBase) -> Iterator[Record]:
    for number, raw in enumerate(stream, start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as error:
            yield Record(number, number, None, f"not JSON: {error.msg} (column {error.colno})")
            continue
        if not isinstance(value, dict):
            yield Record(number, number, None, f"not a JSON object but {type(value).__name__}")
            continue
        yield Record(number, number, value)


@dataclass(frozen=True)
class Refusal:
    line: int
    field: str | None
    reason: str


@dataclass(frozen=True)
class Skipped:
    line: int
    reason: str


def shape(record: Record, mapping_: ImportMapping, model: type[BaseModel]) -> BaseModel | Refusal | Skipped:
    """A record through its mapping and its kind's model: the validated row, or why not."""
    if record.values is None:
        return Refusal(record.line, None, record.problem or "unreadable")
    values = record.values
    if mapping_.native:
        fields = dict(values)
        unknown = [k for k in fields if k not in model.model_fields]
        if unknown:
            return Refusal(record.line, unknown[0], "unknown field")
    else:
        unknown = [k for k in values if k not in mapping_.known]
        if unknown:  # JSON lines have no header: each row is checked against the mapping
            return Refusal(record.line, unknown[0], "unknown field")
        if mapping_.skip is not None and (why := mapping_.skip(values)) is not None:
            return Skipped(record.line, why)
        fields = {}
        for column, spec in mapping_.columns.items():
            if column not in values or values[column] is None:
                continue
            try:
                fields[spec.field] = spec.convert(values[column]) if spec.convert else values[column]
            except ValueError as error:
                return Refusal(record.line, column, str(error))
        if mapping_.derive is not None:
            fields.update(mapping_.derive(values))
    try:
        return model.model_validate(fields)
    except ValidationError as error:
        return _refusal(record.line, error, mapping_)


def _refusal(line: int, error: ValidationError, mapping_: ImportMapping) -> Refusal:
    problems = error.errors(include_url=False, include_input=False)
    first = problems[0]
    loc = [str(part) for part in first["loc"]]
    column = mapping_.source_column(loc[0]) if loc else None
    reason = first["msg"].removeprefix("Value error, ")
    if first["type"] == "missing":
        reason = "required"
    if len(problems) > 1:
        reason += f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})"
    return Refusal(line, column, reason)


# --------------------------------------------------------------------------- the run


@dataclass
class Summary:
    run_id: str
    kind: str
    mapping: str
    source: str
    dry_run: bool
    resumed_from: int = 0
    already_finished: bool = False
    interrupted: bool = False
    lines_done: int = 0
    created: int = 0
    changed: int = 0
    unchanged: int = 0
    refused: int = 0
    skipped: int = 0
    total_imported: int = 0
    total_refused: int = 0
    refusals: list[Refusal] = field(default_factory=list)
    skips: dict[str, int] = field(default_factory=dict)

    @property
    def imported(self) -> int:
        return self.created + self.changed + self.unchanged


@dataclass(frozen=True)
class ImportRequest:
    kind: str
    path: Path
    format: str | None = None
    mapping: str = "jobctl"
    batch_size: int = 1000
    dry_run: bool = False
    actor: str = "import"


START_RUN = text(
    "INSERT INTO import_runs (id, kind, source) VALUES (:id, :kind, :source)"
    " ON CONFLICT (id) DO UPDATE SET source = EXCLUDED.source"
    " RETURNING lines_done, imported, refused, finished_at"
)
ADVANCE_RUN = text(
    "UPDATE import_runs SET lines_done = :lines, imported = imported + :imported, refused = refused + :refused,"
    " updated_at = now() WHERE id = :id"
)
LOCK_RUN = text("SELECT lines_done FROM import_runs WHERE id = :id FOR UPDATE")
FINISH_RUN = text("UPDATE import_runs SET finished_at = now(), updated_at = now() WHERE id = :id")
INSERT_REFUSALS = text(
    "INSERT INTO import_refusals (run_id, line, field, reason)"
    " SELECT :id, l, f, r FROM unnest(CAST(:lines AS integer[]), CAST(:fields AS text[]), CAST(:reasons AS text[]))"
    " AS x(l, f, r) ON CONFLICT DO NOTHING"
)
RUN_REFUSALS = text("SELECT line, field, reason FROM import_refusals WHERE run_id = :id ORDER BY line")


def resolve(request: ImportRequest) -> tuple[Kind, ImportMapping, Format]:
    """The kind, mapping and format of a request, or `BadImport` (nothing read or written)."""
    if request.kind not in KINDS:
        raise BadImport(f"unknown kind {request.kind!r} (known: {', '.join(KINDS)})")
    if request.batch_size < 1 or request.batch_size > 100_000:
        raise BadImport(f"--batch-size must be 1..100000, not {request.batch_size}")
    try:
        mapping_ = mapping(request.mapping, request.kind)
    except UnknownMapping as error:
        raise BadImport(str(error)) from None
    if not request.path.is_file():
        raise BadImport(f"cannot read {request.path}: no such file")
    return KINDS[request.kind], mapping_, file_format(request.path, request.format)


def _known_columns(kind: Kind, mapping_: ImportMapping) -> frozenset[str]:
    return frozenset(kind.model().model_fields) if mapping_.native else mapping_.known


def records(path: Path, fmt: Format, kind: Kind, mapping_: ImportMapping) -> Generator[Record, None, None]:
    """The file's records, streamed; the header is checked at the first `next` (`BadImport`)."""
    with path.open(encoding="utf-8-sig", newline="") as stream:
        if fmt == "csv":
            yield from _csv_records(stream, path.name, mapping_, _known_columns(kind, mapping_))
        else:
            yield from _jsonl_records(stream)


def _batches(items: Iterator[Record], size: int) -> Iterator[list[Record]]:
    batch: list[Record] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class _Rollback(Exception):
    """Leaves a dry run's transaction (rolled back, never committed)."""


async def import_file(
    request: ImportRequest,
    *,
    engine: AsyncEngine,
    settings: Settings,
    client: Callable[[], Awaitable[Client]],
    stop: Callable[[], bool] = lambda: False,
    progress: Callable[[Summary], None] = lambda _: None,
) -> Summary:
    """Import the request's file (see the module's docstring); `stop()` is asked after each
    committed batch (Ctrl-C: the run is left resumable). `BadImport` before anything is written."""
    kind, mapping_, fmt = resolve(request)
    model = kind.model()
    sha = digest(request.path)
    run_id = f"{kind.name}:{mapping_.name}:{sha}"
    summary = Summary(run_id, kind.name, mapping_.name, str(request.path), request.dry_run)
    stream = records(request.path, fmt, kind, mapping_)
    first = next(stream, None)  # reads (and checks) the header before the run is written
    env = WriteEnv(engine=engine, settings=settings, client=client, dry_run=request.dry_run)

    done = 0
    if not request.dry_run:
        async with engine.begin() as conn:
            run = (await conn.execute(START_RUN, {"id": run_id, "kind": kind.name, "source": str(request.path)})).one()
        done = summary.resumed_from = summary.lines_done = run.lines_done
        summary.total_imported, summary.total_refused = run.imported, run.refused
        if run.finished_at is not None:
            stream.close()  # the file is not read again
            summary.already_finished = True
            summary.refusals = await _run_refusals(engine, run_id)
            return summary

    def remaining() -> Iterator[Record]:
        if first is not None:
            yield first
        yield from stream

    pending = _batches((r for r in remaining() if r.line > done), request.batch_size)

    def prepare() -> Prepared | None:
        batch = next(pending, None)
        return None if batch is None else _prepare(batch, mapping_, model)

    # The next batch is read and validated (Python's CPU: parsing, phone numbers, pydantic) in a
    # thread while this one is written (the database's CPU): the two overlap on two cores. The
    # file is read by one `prepare` at a time, each awaited before the next starts.
    ahead = asyncio.ensure_future(asyncio.to_thread(prepare))
    while (prepared := await ahead) is not None:
        ahead = asyncio.ensure_future(asyncio.to_thread(prepare))
        try:
            effects = await _one_batch(prepared, kind, env, request, summary)
        except BaseException:
            await asyncio.gather(ahead, return_exceptions=True)
            raise
        summary.lines_done = prepared.batch[-1].end_line
        if effects and not request.dry_run:  # (`Effects` is falsy when it asks for nothing)
            from services import directory

            await directory.apply_effects(await client(), engine, settings, effects)
        progress(summary)
        if stop():
            await asyncio.gather(ahead, return_exceptions=True)  # read ahead, never written
            summary.interrupted = True
            summary.refusals = await _run_refusals(engine, run_id) if not request.dry_run else summary.refusals
            return summary

    summary.lines_done = max(summary.lines_done, done)
    if not request.dry_run:
        async with engine.begin() as conn:
            await conn.execute(FINISH_RUN, {"id": run_id})
        summary.refusals = await _run_refusals(engine, run_id)
    return summary


@dataclass(frozen=True)
class Prepared:
    """A batch read and validated: its valid rows (and their lines), refusals and skips."""

    batch: list[Record]
    rows: list[BaseModel]
    lines: list[int]
    refusals: list[Refusal]
    skipped: list[Skipped]


def _prepare(batch: list[Record], mapping_: ImportMapping, model: type[BaseModel]) -> Prepared:
    prepared = Prepared(batch, [], [], [], [])
    for record in batch:
        shaped = shape(record, mapping_, model)
        if isinstance(shaped, Refusal):
            prepared.refusals.append(shaped)
        elif isinstance(shaped, Skipped):
            prepared.skipped.append(shaped)
        else:
            prepared.rows.append(shaped)
            prepared.lines.append(record.line)
    return prepared


async def _one_batch(prepared: Prepared, kind: Kind, env: WriteEnv, request: ImportRequest, summary: Summary) -> Any:
    """Write, record refusals and move the checkpoint: one transaction. Returns the writer's
    effects (to apply after the commit)."""
    batch, rows, lines, skipped = prepared.batch, prepared.rows, prepared.lines, prepared.skipped
    refusals = list(prepared.refusals)
    created = changed = unchanged = 0
    effects = None
    try:
        async with env.engine.begin() as conn:
            if not request.dry_run:
                # The run's row, locked for the batch: a second import of the same file waits here,
                # then finds the checkpoint moved and stops (its batch rolled back).
                at = await conn.scalar(LOCK_RUN, {"id": summary.run_id})
                if at != summary.lines_done:
                    raise ConcurrentImport(
                        f"another jobctl import of this file moved its checkpoint to line {at}"
                        f" (this one was at {summary.lines_done}); this one stops, nothing of its batch written"
                    )
            if rows:
                result = await kind.write(conn, rows, request.actor, env)
                effects = getattr(result, "effects", None)
                for upserted in result.upserted:
                    if upserted.created:
                        created += 1
                    elif upserted.changed:
                        changed += 1
                    else:
                        unchanged += 1
                refusals += [Refusal(lines[r.index], r.field, r.reason) for r in result.refused]
            refusals.sort(key=lambda r: r.line)
            if request.dry_run:
                raise _Rollback
            if refusals:
                await conn.execute(
                    INSERT_REFUSALS,
                    {
                        "id": summary.run_id,
                        "lines": [r.line for r in refusals],
                        "fields": [r.field for r in refusals],
                        "reasons": [r.reason for r in refusals],
                    },
                )
            await conn.execute(
                ADVANCE_RUN,
                {
                    "id": summary.run_id,
                    "lines": batch[-1].end_line,
                    "imported": created + changed + unchanged,
                    "refused": len(refusals),
                },
            )
    except _Rollback:
        effects = None
    summary.created += created
    summary.changed += changed
    summary.unchanged += unchanged
    summary.refused += len(refusals)
    summary.skipped += len(skipped)
    summary.total_imported += created + changed + unchanged
    summary.total_refused += len(refusals)
    for skip in skipped:
        summary.skips[skip.reason] = summary.skips.get(skip.reason, 0) + 1
    if request.dry_run:
        summary.refusals += refusals
    return effects


async def _run_refusals(engine: AsyncEngine, run_id: str) -> list[Refusal]:
    async with engine.connect() as conn:
        return [Refusal(r.line, r.field, r.reason) for r in (await conn.execute(RUN_REFUSALS, {"id": run_id})).all()]
