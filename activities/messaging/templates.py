"""Message templates as configuration: `config/templates.toml` (issue #35).

A workflow names a template (a message kind) and version and passes parameters (ids, amounts,
links: never names or phone numbers); the activity renders the text at send time from the
database, in the recipient's locale, so message text never lands in a workflow history.

The catalogue maps each kind × locale to its text (SMS and in-session WhatsApp) and to the
Content SID Twilio issued for its approved WhatsApp template, whose variables are the text's
placeholders in order of appearance. The SIDs are a deployment's own: the repository's file
leaves them empty, and `TWILIO_CONTENT_SIDS_FILE` (same shape, `[kind] locale = "HX..."`)
supplies them; `Catalogue.missing_content_sids` names what a WhatsApp send would lack, and the
messaging worker refuses to start on it with real Twilio. Loaded once per process, validated
whole at load: a text with a placeholder another locale of its kind lacks, an unknown key or a
malformed SID stops the load naming the entry.
"""

from __future__ import annotations

import re
import string
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

from schemas.money import format_money, parse_amount

CATALOGUE_PATH = Path(__file__).resolve().parents[2] / "config" / "templates.toml"
DEFAULT_LOCALE = "en"
CONTENT_SID = re.compile(r"^HX[0-9a-fA-F]{32}$")
_KIND_KEYS = {"name", "version", "whatsapp", "money"}
_VARIANT_KEYS = {"text", "content_sid"}


class UnknownTemplate(LookupError):
    pass


class CatalogueError(ValueError):
    """The catalogue (or a SIDs file) is not usable; the message names the entry."""


def _fields(text: str) -> tuple[str, ...]:
    names: list[str] = []
    for _, name, spec, conversion in string.Formatter().parse(text):
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError(f"placeholder {{{name}}} must be a plain name")
        if name not in names:
            names.append(name)
    return tuple(names)


@dataclass(frozen=True)
class Variant:
    """One kind in one locale."""

    locale: str
    body: str
    """Python format string; `{first_name}` comes from the recipient row, the rest from params."""
    content_sid: str | None = None
    fields: tuple[str, ...] = ()
    """The placeholders in order of appearance: WhatsApp's variables "1", "2", ..."""

    def render(self, params: Mapping[str, Any]) -> str:
        missing = [f for f in self.fields if f not in params]
        if missing:
            raise ValueError(f"template {self.locale} text needs {', '.join(missing)}")
        return self.body.format(**{f: params[f] for f in self.fields})

    def content_variables(self, params: Mapping[str, Any]) -> dict[str, str]:
        """WhatsApp templates take positional variables "1", "2", ... in body order."""
        return {str(i): str(params[f]) for i, f in enumerate(self.fields, start=1)}


@dataclass(frozen=True)
class Template:
    name: str
    version: int
    variants: Mapping[str, Variant]
    whatsapp: bool = False
    """Has an approved WhatsApp template (sent outside the 24 h session); False: SMS out of session."""
    money: tuple[str, ...] = ()
    """Params that are amounts: formatted in the recipient's locale and currency at send time."""
    key: str = ""
    """The catalogue's table (`order_followup_v2`); the kind's `name` when it has one version."""

    def variant(self, locale: str | None) -> Variant:
        """The text for a BCP 47 `locale`: `es-ES` → `es` → `en`."""
        tag = (locale or DEFAULT_LOCALE).replace("_", "-")
        parts = tag.split("-")
        for n in range(len(parts), 0, -1):
            candidate = "-".join(parts[:n])
            for key in (candidate, candidate.lower()):
                if key in self.variants:
                    return self.variants[key]
        return self.variants[DEFAULT_LOCALE]

    def localise(self, params: Mapping[str, Any], currency: str, locale: str | None) -> dict[str, str]:
        """`params` as text, the money ones formatted (CLDR) for `locale` in `currency`."""
        out = {k: str(v) for k, v in params.items()}
        for name in self.money:
            amount = parse_amount(out[name]) if name in out else None
            if amount is not None:
                out[name] = format_money(amount, currency, locale)
        return out

    # The default locale's text, for callers that do not localise (tests, the HELP reply's checks).
    @property
    def body(self) -> str:
        return self.variants[DEFAULT_LOCALE].body

    @property
    def fields(self) -> list[str]:
        return list(self.variants[DEFAULT_LOCALE].fields)

    @property
    def whatsapp_content_sid(self) -> str | None:
        return self.variants[DEFAULT_LOCALE].content_sid

    def render(self, params: Mapping[str, Any]) -> str:
        return self.variants[DEFAULT_LOCALE].render(params)

    def content_variables(self, params: Mapping[str, Any]) -> dict[str, str]:
        return self.variants[DEFAULT_LOCALE].content_variables(params)


@dataclass(frozen=True)
class Catalogue:
    templates: Mapping[tuple[str, int], Template]
    source: str = str(CATALOGUE_PATH)
    sids_source: str | None = field(default=None)

    def get(self, name: str, version: int | None = None) -> Template:
        """A specific version, or the newest one when `version` is None."""
        if version is not None:
            try:
                return self.templates[(name, version)]
            except KeyError:
                raise UnknownTemplate(f"no template {name} v{version}") from None
        versions = [t for (n, _), t in self.templates.items() if n == name]
        if not versions:
            raise UnknownTemplate(f"no template {name}")
        return max(versions, key=lambda t: t.version)

    def content_sids(self) -> dict[str, str]:
        """Every configured SID, by `table.locale`."""
        return {
            f"{t.key}.{v.locale}": v.content_sid
            for t in self.templates.values()
            for v in t.variants.values()
            if v.content_sid
        }

    def missing_content_sids(self) -> list[str]:
        """`table.locale` of every WhatsApp template without a Content SID (sorted): what a worker
        aimed at real Twilio must not start without."""
        return sorted(
            f"{t.key}.{v.locale}"
            for t in self.templates.values()
            if t.whatsapp
            for v in t.variants.values()
            if not v.content_sid
        )

    def in_locales(self, locales: Iterable[str]) -> Catalogue:
        """Only the texts of `locales` (and the default locale's, every kind's fallback): what a
        deployment that sends those languages sends, and so the SIDs it needs. A recipient in
        another locale falls back as `Template.variant` does."""
        keep = {DEFAULT_LOCALE, *(tag.strip() for tag in locales if tag.strip())}
        unknown = keep - {v.locale for t in self.templates.values() for v in t.variants.values()}
        if unknown:
            raise CatalogueError(f"no texts in the catalogue for locale(s) {', '.join(sorted(unknown))}")
        return replace(
            self,
            templates={
                k: replace(t, variants={loc: v for loc, v in t.variants.items() if loc in keep})
                for k, t in self.templates.items()
            },
        )

    def with_content_sids(self, sids: Mapping[str, Mapping[str, str]], source: str | None = None) -> Catalogue:
        """This catalogue with `sids` ({table: {locale: SID}}) over the file's; an unknown table or
        locale, or a malformed SID, is refused by name."""
        for kind, per_locale in sids.items():
            matching = [t for t in self.templates.values() if t.key == kind]
            if not matching or not isinstance(per_locale, Mapping):
                raise CatalogueError(f"{source or 'content SIDs'}: no message kind {kind}")
            for locale, sid in per_locale.items():
                if locale not in matching[0].variants:
                    raise CatalogueError(f"{source or 'content SIDs'}: {kind} has no locale {locale}")
                if not isinstance(sid, str) or (sid and not CONTENT_SID.match(sid)):
                    raise CatalogueError(f"{source or 'content SIDs'}: {kind}.{locale} is not a Content SID")
        templates = {}
        for key, t in self.templates.items():
            extra = sids.get(t.key, {})
            variants = {
                loc: Variant(v.locale, v.body, extra.get(loc) or v.content_sid, v.fields)
                for loc, v in t.variants.items()
            }
            templates[key] = Template(t.name, t.version, variants, t.whatsapp, t.money, t.key)
        return Catalogue(templates, self.source, source)


def parse_catalogue(data: Mapping[str, Any], source: str = "templates") -> Catalogue:
    """Validate the catalogue's TOML tables into templates; CatalogueError names what is wrong."""
    templates: dict[tuple[str, int], Template] = {}
    for table, spec in data.items():
        where = f"{source}: [{table}]"
        if not isinstance(spec, Mapping):
            raise CatalogueError(f"{where} is not a table")
        kind = spec.get("name", table)
        version = spec.get("version", 1)
        whatsapp = spec.get("whatsapp", False)
        money = spec.get("money", [])
        if not isinstance(version, int) or not isinstance(whatsapp, bool) or not isinstance(money, list):
            raise CatalogueError(f"{where}: version is an integer, whatsapp true or false, money a list")
        if not isinstance(kind, str) or (kind, version) in templates:
            raise CatalogueError(f"{where}: {kind} v{version} is in the catalogue twice")
        variants: dict[str, Variant] = {}
        for locale, entry in spec.items():
            if locale in _KIND_KEYS:
                continue
            if not isinstance(entry, Mapping):
                raise CatalogueError(f"{where}: unknown key {locale}")
            unknown = set(entry) - _VARIANT_KEYS
            if unknown or not isinstance(entry.get("text"), str) or not entry["text"].strip():
                raise CatalogueError(f"{where}.{locale}: needs `text` (and may have `content_sid`), nothing else")
            sid = entry.get("content_sid") or None
            if sid is not None and not CONTENT_SID.match(str(sid)):
                raise CatalogueError(f"{where}.{locale}: content_sid is not a Content SID (HX + 32 hex)")
            try:
                fields = _fields(entry["text"])
            except ValueError as exc:
                raise CatalogueError(f"{where}.{locale}: {exc}") from None
            variants[locale] = Variant(locale, entry["text"], sid, fields)
        if DEFAULT_LOCALE not in variants:
            raise CatalogueError(f"{where}: has no `{DEFAULT_LOCALE}` text (every locale falls back to it)")
        expected = set(variants[DEFAULT_LOCALE].fields)
        for locale, variant in variants.items():
            if set(variant.fields) != expected:
                raise CatalogueError(
                    f"{where}.{locale}: placeholders {sorted(variant.fields)} differ from"
                    f" {DEFAULT_LOCALE}'s {sorted(expected)}"
                )
        if not set(money) <= expected:
            raise CatalogueError(f"{where}: money names {sorted(set(money) - expected)}, not placeholders")
        templates[(kind, version)] = Template(kind, version, variants, whatsapp, tuple(money), table)
    return Catalogue(templates, source)


def read_content_sids(path: Path | str) -> dict[str, dict[str, str]]:
    """A SIDs file: TOML, `[kind]` tables of `locale = "HX..."`."""
    with open(path, "rb") as f:
        return tomllib.load(f)


def write_content_sids(path: Path | str, sids: Mapping[str, Mapping[str, str]]) -> None:
    lines = ["# Content SIDs of the approved WhatsApp templates: [kind] locale = SID (config/templates.toml)"]
    for kind in sorted(sids):
        lines.append(f"\n[{kind}]")
        lines.extend(f'{locale} = "{sid}"' for locale, sid in sorted(sids[kind].items()))
    Path(path).write_text("\n".join(lines) + "\n")


@cache
def _file_catalogue(path: str, sids_file: str | None) -> Catalogue:
    with open(path, "rb") as f:
        catalogue = parse_catalogue(tomllib.load(f), path)
    if sids_file:
        catalogue = catalogue.with_content_sids(read_content_sids(sids_file), sids_file)
    return catalogue


def load_catalogue(sids_file: Path | str | None = None, path: Path | str = CATALOGUE_PATH) -> Catalogue:
    """The catalogue file with a deployment's SIDs over it; read and validated once per process."""
    return _file_catalogue(str(path), str(sids_file) if sids_file else None)


def kinds(catalogue: Catalogue | None = None) -> Iterable[str]:
    return sorted({name for name, _ in (catalogue or load_catalogue()).templates})


def get_template(name: str, version: int | None = None) -> Template:
    """From the repository's catalogue (no deployment SIDs): the send path uses its worker's."""
    return load_catalogue().get(name, version)


TEMPLATES = load_catalogue().templates
