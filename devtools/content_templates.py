"""The catalogue's WhatsApp templates as the emulator's approved Content templates (dev and tests).

Real Twilio issues a Content SID when a template is created (and Meta approves it); the dev stack
plays that part: each kind × locale with `whatsapp = true` gets a SID (stable: `HX` and the md5 of
kind, version and locale), the emulator registers it with the template's text (placeholders
numbered `{{1}}`, `{{2}}`, ... in order, as in the Content API), and the workers read the SIDs
from a file (`TWILIO_CONTENT_SIDS_FILE`), exactly as a deployment reads the SIDs Twilio issued.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from activities.messaging.templates import Catalogue, load_catalogue, write_content_sids


def dev_content_sids(catalogue: Catalogue | None = None) -> dict[str, dict[str, str]]:
    """{kind: {locale: SID}} for every WhatsApp template in the catalogue."""
    sids: dict[str, dict[str, str]] = {}
    for t in (catalogue or load_catalogue()).templates.values():
        if not t.whatsapp:
            continue
        for locale in t.variants:
            digest = hashlib.md5(f"{t.name}:{t.version}:{locale}".encode()).hexdigest()
            sids.setdefault(t.key, {})[locale] = "HX" + digest
    return sids


def content_body(text: str, fields: tuple[str, ...]) -> str:
    """The catalogue's text as a Content template body: `{amount_due}` → `{{2}}`."""
    for i, name in enumerate(fields, start=1):
        text = text.replace("{" + name + "}", "{{" + str(i) + "}}")
    return text


def emulator_templates(catalogue: Catalogue) -> dict[str, str]:
    """{SID: body} of every template with a SID: the emulator's `content_templates`."""
    return {
        v.content_sid: content_body(v.body, v.fields)
        for t in catalogue.templates.values()
        for v in t.variants.values()
        if v.content_sid
    }


def register(sids_file: Path) -> tuple[Catalogue, dict[str, str]]:
    """Write the dev SIDs to `sids_file`; the catalogue with them and the emulator's templates."""
    sids = dev_content_sids()
    write_content_sids(sids_file, sids)
    catalogue = load_catalogue().with_content_sids(sids, str(sids_file))
    return catalogue, emulator_templates(catalogue)
