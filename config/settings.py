"""Process settings, read once from the environment (the README's Configuration table).

Every setting is validated at start so a typo fails fast with one line naming it,
instead of surfacing as a connection error deep inside a worker.
"""

from __future__ import annotations

import base64
import binascii
import re
import string
from datetime import timedelta
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_HOST_PORT = re.compile(r"^[A-Za-z0-9.\-_\[\]:]+:\d{1,5}$")
# Twilio's magic test numbers (+15005550001..9): they only work with test credentials.
_TWILIO_TEST_NUMBER = re.compile(r"^(whatsapp:)?\+1500555000\d$")


SEND_RATE_HEADROOM = 0.99
"""Sends run 1 % under the provider's rate: each message's slot is reserved on the database's clock
(`messaging_pace`), evenly spaced for the whole cluster, so there is no burst to leave room for;
the 1 % covers the network's jitter between a slot and the provider's bucket."""


def parse_encryption_keys(value: str) -> dict[str, bytes]:
    """PAYLOAD_ENCRYPTION_KEY (`id:base64,id:base64`, the first encrypts) as {key id: key}; a
    ValueError names what is wrong, never the key. The codec (`workers/codec.py`) uses the same."""
    keys: dict[str, bytes] = {}
    for part in (p.strip() for p in value.split(",") if p.strip()):
        key_id, sep, encoded = part.partition(":")
        if not sep or not key_id:
            raise ValueError("entries must be key-id:base64-key")
        try:
            key = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"key {key_id!r} is not base64") from None
        if len(key) not in (16, 24, 32):
            raise ValueError(f"key {key_id!r} must be 16, 24 or 32 bytes")
        keys[key_id] = key
    if not keys:
        raise ValueError("no key given")
    return keys


def parse_sender_pool(value: str) -> list[tuple[str, float]]:
    """TWILIO_SMS_SENDERS / TWILIO_WHATSAPP_SENDERS (`+15557770001:80,+15557770002:80`): each sender
    number (E.164, an optional `whatsapp:` prefix) with its own messages per second. A ValueError
    names the entry by its position, never quotes it."""
    import phonenumbers

    pool: list[tuple[str, float]] = []
    for position, part in enumerate((p.strip() for p in value.split(",")), start=1):
        number, sep, rate_text = part.removeprefix("whatsapp:").rpartition(":")
        if not sep or not number:
            raise ValueError(f"entry {position} must be an E.164 number and its messages/s, as +14155550100:80")
        try:
            rate = float(rate_text)
        except ValueError:
            raise ValueError(f"entry {position}: the messages per second is not a number") from None
        if not (rate > 0 and rate < float("inf")):
            raise ValueError(f"entry {position}: the messages per second must be > 0")
        try:
            parsed = phonenumbers.parse(number, None)
        except phonenumbers.NumberParseException:
            parsed = None
        if (
            parsed is None
            or phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164) != number
            or not phonenumbers.is_possible_number(parsed)
        ):
            raise ValueError(f"entry {position}: not an E.164 phone number (+ country code and number, no spaces)")
        if any(number == seen for seen, _ in pool):
            raise ValueError(f"entry {position}: the same number twice")
        pool.append((number, rate))
    return pool


CONSOLE_ROLES = ("finance", "support", "company_admin", "operator", "read_only")
"""The console's roles (`workers/console/users.py` says what each may do)."""
_GROUP = re.compile(r"^[^\s=,]{1,200}$")
_COMPANY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def parse_role_map(text: str) -> dict[str, tuple[str, str | None]]:
    """CONSOLE_OIDC_ROLE_MAP (`group=role` or `group=company_admin:company`, comma-separated) as
    {group: (role, company or None)}, in the order given. A ValueError names the entry at fault."""
    mapping: dict[str, tuple[str, str | None]] = {}
    for position, entry in enumerate((e.strip() for e in text.split(",")), start=1):
        group, equals, target = entry.partition("=")
        group, target = group.strip(), target.strip()
        if not equals or not _GROUP.match(group):
            raise ValueError(f"entry {position} must be group=role (e.g. jobctl-finance=finance)")
        role, colon, company = target.partition(":")
        if role not in CONSOLE_ROLES:
            raise ValueError(f"entry {position}: the role must be one of {', '.join(CONSOLE_ROLES)}")
        if (role == "company_admin") != bool(colon):
            raise ValueError(f"entry {position}: company_admin:<company id> names a company, and only it does")
        if colon and not _COMPANY.match(company):
            raise ValueError(f"entry {position}: {company!r} is not a company id")
        if group in mapping:
            raise ValueError(f"entry {position}: the group {group!r} twice")
        mapping[group] = (role, company or None)
    return mapping


URL_PLACEHOLDERS: dict[str, frozenset[str]] = {
    "order_checkout_url_template": frozenset({"order_id", "order_external_id"}),
    "churn_manage_url": frozenset({"company_id"}),
    "manage_return_url": frozenset({"company_id"}),
}
"""The placeholders each URL template setting may use; any other is refused at settings load."""


class SettingsError(Exception):
    """A setting is missing or malformed; the message names it."""

    prefix = "invalid setting "
    """What `jobctl` prints before the message (exit 2)."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    # Database: unset means "the embedded dev server" for `jobctl dev`, an error elsewhere.
    database_url: str | None = None
    database_pool_size: int = Field(default=20, ge=1, le=200)
    """DATABASE_POOL_SIZE: the connections each process keeps open (`activities.database.create_engine`).
    Pods x this must fit the server's `max_connections`, twice over for the workers during a
    rollout (docs/OPERATIONS.md, "Connection budget")."""

    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    temporal_api_key: SecretStr | None = None
    temporal_tls_cert: str | None = None
    temporal_tls_key: str | None = None
    task_queue: str = "jobs"
    messaging_task_queue: str = "messaging"

    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    twilio_whatsapp_from: str = "whatsapp:+15005550006"
    twilio_sms_from: str = "+15005550006"
    twilio_api_base: str | None = None
    twilio_content_sids_file: str | None = Field(
        default=None,
        description="TOML of the approved WhatsApp templates' Content SIDs, [kind] locale = SID "
        "(config/templates.toml names the kinds); over the catalogue's own",
    )
    twilio_require_content_sids: bool | None = Field(
        default=None,
        description="refuse to start a messaging worker while a WhatsApp template has no Content SID "
        "(default: with real Twilio)",
    )
    message_locales: str | None = Field(
        default=None,
        description="the catalogue's locales this deployment sends, comma-separated (e.g. 'en,es'); a "
        "recipient in another falls back to en, and only these need Content SIDs (default: every locale)",
    )
    messages_per_second: float = Field(default=50.0, gt=0)
    twilio_sms_senders: str | None = Field(
        default=None,
        description="the SMS sender pool: E.164 numbers, each with its own messages/s, comma-separated "
        "(+15557770001:80,+15557770002:80); each number is paced on its own, the pool sends their sum "
        "(default: TWILIO_SMS_FROM alone, at MESSAGES_PER_SECOND)",
    )
    twilio_whatsapp_senders: str | None = Field(
        default=None,
        description="the WhatsApp sender pool, as TWILIO_SMS_SENDERS (default: TWILIO_WHATSAPP_FROM alone, "
        "at MESSAGES_PER_SECOND)",
    )
    sender_sticky: bool = Field(
        default=False,
        description="a recipient's messages always go from the same pool number (chosen by its retailer "
        "or member id; adding a number moves about 1/n of recipients); otherwise each message takes "
        "the number whose next send slot is soonest",
    )
    messaging_paused_recheck_seconds: float = Field(
        default=60.0, gt=0, description="while the brake is on, how often a held message is tried again"
    )
    message_lease_seconds: float = Field(
        default=20.0,
        ge=10,
        description="how long a send attempt owns its message (`sending` in the outbox); a killed worker's "
        "messages wait this out before a retry asks Twilio what it accepted. At least twice the Twilio "
        "client's 5 s timeout (WhatsApp, then its SMS fallback)",
    )

    stripe_secret_key: SecretStr | None = None
    stripe_webhook_secret: SecretStr | None = None
    stripe_api_base: str | None = None
    pay_page_base_url: str | None = None
    """PAY_PAGE_BASE_URL (optional): where Stripe's Checkout sends the payer after paying (`success_url`)."""
    credit_currency: str = Field(default="usd", pattern=r"^[a-z]{3}$")
    """CREDIT_CURRENCY: the currency of retailers' credit; a Stripe payment, refund or dispute in
    another is logged and booked nowhere."""
    pause_on_dispute: bool = True
    """PAUSE_ON_DISPUTE: a dispute opened at Stripe on a retailer's payment pauses its credit
    (`paused_by` stripe-dispute; a person lifts it with `jobctl credit unpause`)."""
    public_base_url: str | None = None
    """PUBLIC_BASE_URL: where payers reach `jobctl api`; reminders link to {PUBLIC_BASE_URL}/pay/{token}.
    Required for reminders; `jobctl dev` sets it to its own API."""

    business_timezone: str = "UTC"
    payload_encryption_key: SecretStr | None = None
    codec_server_token: SecretStr | None = None
    codec_cors_origins: str = "http://127.0.0.1:8233,http://localhost:8233"
    # A real cluster (issue #35): the Temporal client's server CA and name, the codec server's OIDC.
    temporal_tls_server_ca: str | None = None
    """TEMPORAL_TLS_SERVER_CA: the CA (PEM or path) that signed the Temporal frontend's certificate,
    for a cluster behind a private CA (default: the system's roots)."""
    temporal_tls_server_name: str | None = None
    """TEMPORAL_TLS_SERVER_NAME: the name the frontend's certificate must carry (SNI and verification),
    when it is not the host of TEMPORAL_ADDRESS (the envconfig variable of the same name)."""
    codec_oidc_issuer: str | None = None
    """CODEC_OIDC_ISSUER: the UI's OIDC issuer; with it the codec server accepts the access token the
    UI forwards (signature from the issuer's JWKS, `iss`, `aud`, `exp`) beside CODEC_SERVER_TOKEN."""
    codec_oidc_audience: str | None = None
    """CODEC_OIDC_AUDIENCE: the `aud` the access token must carry (required with CODEC_OIDC_ISSUER)."""
    codec_oidc_jwks_url: str | None = None
    """CODEC_OIDC_JWKS_URL: where the issuer's keys are (default: the issuer's discovery document's
    `jwks_uri`, else {issuer}/.well-known/jwks.json)."""
    codec_oidc_jwks_ttl_seconds: float = Field(default=300.0, gt=0)
    """CODEC_OIDC_JWKS_TTL_SECONDS: how long fetched keys are reused (an unknown `kid` refetches sooner)."""
    log_format: Literal["json", "console"] = "console"
    log_level: str = "INFO"
    metrics_bind: str | None = None
    otel_exporter_otlp_endpoint: str | None = None
    """OTEL_EXPORTER_OTLP_ENDPOINT: the OTLP/HTTP collector (e.g. `http://otel-collector:4318`); traces go to
    its `/v1/traces`. Unset (and OTEL_EXPORTER_OTLP_TRACES_ENDPOINT unset): no traces (workers/tracing.py)."""
    otel_exporter_otlp_traces_endpoint: str | None = None
    """OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: the full traces URL, over OTEL_EXPORTER_OTLP_ENDPOINT's."""
    otel_service_name: str | None = None
    """OTEL_SERVICE_NAME: the traces' `service.name` (default: jobctl-worker, jobctl-api, jobctl-webhooks)."""

    worker_deployment_name: str | None = None
    """Worker versioning: with a deployment name, workers poll as deployment version name/build id."""
    worker_build_id: str | None = None

    order_followup_after: timedelta = Field(default=timedelta(hours=2), gt=timedelta(0))
    """ORDER_FOLLOWUP_AFTER: seconds or ISO 8601 duration (PT2H) after checkout start."""
    order_ttl: timedelta = Field(default=timedelta(hours=24), gt=timedelta(0))
    """ORDER_TTL: how long a checkout started through the API waits before it expires (seconds or ISO
    8601, PT24H). The scale-out drill (tests/e2e/test_scale_out.py) runs whole clocks in seconds."""
    order_checkout_url_template: str | None = None
    """ORDER_CHECKOUT_URL_TEMPLATE: the link back to a pending checkout in its follow-up, e.g.
    `https://shop.example.com/checkout/{order_external_id}` (placeholders `{order_id}`,
    `{order_external_id}`); unset, the follow-up goes without a link."""
    churn_manage_url: str | None = None
    """CHURN_MANAGE_URL: where a nudge's `/manage/{token}` link sends a member with no Stripe customer,
    and where Stripe's customer portal sends the others back (placeholder `{company_id}`); unset, a
    member with no Stripe customer gets no nudge (no link to give)."""
    manage_link_secret: SecretStr | None = None
    """MANAGE_LINK_SECRET: the HMAC key that signs a churn nudge's `{PUBLIC_BASE_URL}/manage/{token}`
    link (the messaging worker signs, `jobctl api` checks: both need the same). Unset: ACTOR_HASH_KEY
    (required in production), else a fixed dev-only key; see `activities/churn/managelinks.py`."""
    console_secret: SecretStr | None = None
    """CONSOLE_SECRET: the key that signs the business console's session cookies and CSRF tokens
    (`workers/console/session.py`). Unset: ACTOR_HASH_KEY (required in production), else a fixed
    dev-only key: every restart keeps sessions, and anyone with the source could forge one in dev."""
    console_session_hours: int = Field(default=12, ge=1, le=24 * 30)
    """CONSOLE_SESSION_HOURS: a console sign-in lasts this long; then the user signs in again."""
    console_oidc_issuer: str | None = None
    """CONSOLE_OIDC_ISSUER: the identity provider (OIDC issuer URL) the console offers sign-in with;
    set, the sign-in page shows "Sign in with {CONSOLE_OIDC_NAME}" (`workers/console/oidc.py`).
    Requires CONSOLE_OIDC_CLIENT_ID and CONSOLE_OIDC_ROLE_MAP."""
    console_oidc_name: str | None = Field(default=None, max_length=60)
    """CONSOLE_OIDC_NAME: the provider's name on the sign-in button (default: the issuer's host)."""
    console_oidc_client_id: str | None = None
    """CONSOLE_OIDC_CLIENT_ID: the console's client at the provider (the ID token's `aud`)."""
    console_oidc_client_secret: SecretStr | None = None
    """CONSOLE_OIDC_CLIENT_SECRET: the client's secret (a confidential client); unset, a public
    client (PKCE only)."""
    console_oidc_roles_claim: str = Field(default="groups", pattern=r"^[A-Za-z0-9_.:/-]{1,100}$")
    """CONSOLE_OIDC_ROLES_CLAIM: the ID token's claim listing the user's groups (or roles)."""
    console_oidc_role_map: str | None = None
    """CONSOLE_OIDC_ROLE_MAP: IdP group → console role, comma-separated, e.g.
    `jobctl-finance=finance,jobctl-acme-admins=company_admin:acme` (a company admin names its
    company). A user in none of the groups is refused; in several, the first listed wins."""
    console_local_login: bool = True
    """CONSOLE_LOCAL_LOGIN: `false` hides the username/password form (OIDC only; needs the issuer)."""
    temporal_ui_url: str | None = Field(default=None, pattern=r"^https?://[^\s/]+(/[^\s]*)?$")
    """TEMPORAL_UI_URL: the Temporal Web UI's base URL (e.g. https://temporal.example.com), where the
    console's Messaging and jobs page links each workflow. Unset: http://{TEMPORAL_ADDRESS's host}:
    {TEMPORAL_UI_PORT}, the dev server's UI."""
    manage_link_days: int = Field(default=30, ge=1, le=366)
    """MANAGE_LINK_DAYS: a nudge's manage link opens the customer portal this many days after it was
    sent; later it answers 410 (the member opens the link of a newer message)."""
    manage_return_url: str | None = None
    """MANAGE_RETURN_URL: where Stripe's customer portal sends the member back (placeholder
    `{company_id}`); unset, CHURN_MANAGE_URL."""

    message_daily_cap: int = Field(default=10, ge=0)
    quiet_hours_start: int = Field(default=21, ge=0, le=23)
    quiet_hours_end: int = Field(default=8, ge=0, le=23)
    webhook_base_url: str | None = None
    retention_webhook_days: int = Field(default=30, ge=1)
    """RETENTION_WEBHOOK_DAYS: processed webhook event ids are kept this long (Stripe retries for 3)."""
    retention_message_days: int = Field(default=90, ge=1)
    """RETENTION_MESSAGE_DAYS: message rows keep the provider's data (SID, error) this long."""
    api_max_body_bytes: int = Field(default=1_048_576, ge=1024)
    """API_MAX_BODY_BYTES: the largest request body the HTTP API reads (413 above it, before the
    body is parsed or the key looked up)."""
    idempotency_retention_hours: int = Field(default=24, ge=24)
    """IDEMPOTENCY_RETENTION_HOURS: an `Idempotency-Key` replays its first answer this long; then the
    key is new again and the retention job deletes its row (Stripe keeps keys 24 h: never less)."""
    idempotency_abandoned_seconds: float = Field(default=300.0, gt=0)
    """IDEMPOTENCY_ABANDONED_SECONDS: a key claimed by a request that never answered (its API process
    killed mid-request) is taken over by a retry after this long; until then a retry is 409. Re-running
    is safe (every POST is idempotent by its business key), so this bounds only how long a retry waits."""
    pay_link_token_per_minute: int = Field(default=12, ge=1)
    """PAY_LINK_TOKEN_PER_MINUTE: opens of one `/pay/{token}` link a minute (a burst of as many, then
    evenly); above it 429 with Retry-After."""
    pay_link_address_per_minute: int = Field(default=120, ge=1)
    """PAY_LINK_ADDRESS_PER_MINUTE: opens of any `/pay/{token}` link a minute from one client address."""
    pay_link_stripe_cache_seconds: float = Field(default=5.0, ge=0)
    """PAY_LINK_STRIPE_CACHE_SECONDS: a link's Checkout Session, as Stripe last said it, is reused this
    long (at most one Stripe retrieve per link that often, however often the link is opened)."""
    event_poll_seconds: float = Field(default=10.0, gt=0, le=3600)
    """EVENT_POLL_SECONDS: an idle subscription's delivery run looks for new events this often (a
    new subscription and a replay wake it at once)."""
    event_retry_initial_seconds: float = Field(default=30.0, gt=0)
    """EVENT_RETRY_INITIAL_SECONDS: the first back-off after a failed delivery; it doubles per attempt."""
    event_retry_max_seconds: float = Field(default=3600.0, gt=0)
    """EVENT_RETRY_MAX_SECONDS: the longest back-off between two attempts at one event (an hour)."""
    event_give_up_hours: float = Field(default=72.0, gt=0)
    """EVENT_GIVE_UP_HOURS: an event still undelivered this long after it happened (or was replayed)
    is marked failed and the next one is tried (Stripe's three days); `jobctl events replay` resends it."""
    event_http_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    """EVENT_HTTP_TIMEOUT_SECONDS: how long a receiver has to answer a delivery."""
    actor_hash_key: SecretStr | None = None
    """ACTOR_HASH_KEY: the HMAC key that turns operator ids into `recovery_actions.actor_id_hash`.
    Required in production; in dev a fixed dev-only key is used (with a warning), see `hash_actor`."""
    """Public base URL of `jobctl webhooks`, for Twilio status callbacks (None: no callbacks)."""

    # Dev stack (not used in production).
    jobctl_home: str = ".jobctl"
    temporal_ui_port: int = 8233
    twilio_emulator_port: int = 8089
    webhooks_port: int = 8090
    stripe_sandbox_port: int = 8420

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not re.match(r"^postgres(ql)?(\+psycopg)?://", value):
            raise ValueError("must be a postgresql+psycopg:// URL")
        from sqlalchemy.engine import make_url

        try:
            url = make_url(value)
        except Exception as exc:  # sqlalchemy raises ArgumentError with the URL in it
            raise ValueError("is not a parseable URL") from exc
        if not url.database:
            raise ValueError("must name a database")
        return url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)

    @field_validator("public_base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not re.match(r"^https?://[^\s/?#]+(/[^\s?#]*)?$", value):
            raise ValueError("must be an http(s):// URL without a query")
        return value.rstrip("/")

    @field_validator("order_checkout_url_template", "churn_manage_url", "manage_return_url")
    @classmethod
    def _url_template(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or value == "":
            return None
        allowed = URL_PLACEHOLDERS[info.field_name or ""]
        named = ", ".join("{" + n + "}" for n in sorted(allowed))
        try:
            fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(value) if name is not None]
        except ValueError:
            raise ValueError(f"is not a URL template (a lone brace?); placeholders: {named}") from None
        names = {name if not (spec or conv) else f"{name}!{conv or ''}:{spec}" for name, spec, conv in fields}
        if unknown := sorted(names - allowed):
            raise ValueError(f"unknown placeholder {', '.join('{' + n + '}' for n in unknown)} (allowed: {named})")
        if not re.match(r"^https?://[^\s/?#]+(/\S*)?$", value):
            raise ValueError("must be an http(s):// URL")
        return value

    @field_validator("codec_oidc_issuer", "codec_oidc_jwks_url", "console_oidc_issuer")
    @classmethod
    def _oidc_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not re.match(r"^https?://[^\s/?#]+(/[^\s?#]*)?$", value):
            raise ValueError("must be an http(s):// URL without a query")
        return value

    @field_validator("otel_exporter_otlp_endpoint", "otel_exporter_otlp_traces_endpoint")
    @classmethod
    def _otlp_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not re.match(r"^https?://[^\s/?#]+(/[^\s?#]*)?$", value):
            raise ValueError("must be an http(s):// URL without a query (OTLP over HTTP, e.g. http://collector:4318)")
        return value

    @field_validator("temporal_address", "metrics_bind")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not _HOST_PORT.match(value) or not 0 < int(value.rsplit(":", 1)[1]) < 65536:
            raise ValueError("must be host:port")
        return value

    @field_validator("console_oidc_role_map")
    @classmethod
    def _role_map(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parse_role_map(value)  # raises ValueError naming the entry at fault
        return value

    @field_validator("payload_encryption_key")
    @classmethod
    def _encryption_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value():
            parse_encryption_keys(value.get_secret_value())  # raises ValueError naming the problem
            return value
        return None

    @field_validator("twilio_sms_senders", "twilio_whatsapp_senders")
    @classmethod
    def _sender_pool(cls, value: str | None) -> str | None:
        if value is not None and value.strip():
            parse_sender_pool(value)
            return value
        return None

    @field_validator("business_timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError("is not an IANA time zone") from exc
        return value

    @model_validator(mode="after")
    def _production_defaults(self) -> Settings:
        """With real providers, dev defaults are mistakes: refuse them at start, naming the setting."""
        if self.real_twilio:
            for name, pool in (
                ("twilio_whatsapp_from", "twilio_whatsapp_senders"),
                ("twilio_sms_from", "twilio_sms_senders"),
            ):
                if getattr(self, pool):
                    if any(_TWILIO_TEST_NUMBER.match(n) for n, _ in parse_sender_pool(getattr(self, pool))):
                        raise ValueError(
                            f"{pool.upper()}: a number is one of Twilio's test numbers; "
                            "set your own senders with real Twilio credentials"
                        )
                elif _TWILIO_TEST_NUMBER.match(getattr(self, name)):
                    raise ValueError(
                        f"{name.upper()}: {getattr(self, name)} is one of Twilio's test numbers; "
                        "set your own sender with real Twilio credentials"
                    )
        if self.codec_oidc_issuer and not self.codec_oidc_audience:
            raise ValueError("CODEC_OIDC_AUDIENCE: not set (required with CODEC_OIDC_ISSUER)")
        if self.console_oidc_issuer:
            for name in ("console_oidc_client_id", "console_oidc_role_map"):
                if not getattr(self, name):
                    raise ValueError(f"{name.upper()}: not set (required with CONSOLE_OIDC_ISSUER)")
        elif not self.console_local_login:
            raise ValueError("CONSOLE_LOCAL_LOGIN: false needs CONSOLE_OIDC_ISSUER (else nobody can sign in)")
        if self.production and not (self.actor_hash_key and self.actor_hash_key.get_secret_value()):
            raise ValueError("ACTOR_HASH_KEY: not set (required with real Twilio or live Stripe credentials)")
        return self

    @property
    def content_sids_required(self) -> bool:
        """A messaging worker must know every WhatsApp template's Content SID before it starts."""
        return self.real_twilio if self.twilio_require_content_sids is None else self.twilio_require_content_sids

    @property
    def real_twilio(self) -> bool:
        """Real Twilio credentials aimed at api.twilio.com (not the emulator)."""
        return bool(self.twilio_account_sid and self.twilio_auth_token and not self.twilio_api_base)

    @property
    def production(self) -> bool:
        """Talking to real providers: real Twilio, or a live Stripe key aimed at api.stripe.com."""
        live_stripe = bool(
            self.stripe_secret_key
            and self.stripe_secret_key.get_secret_value().startswith(("sk_live_", "rk_live_"))
            and not self.stripe_api_base
        )
        return self.real_twilio or live_stripe

    @property
    def send_rate(self) -> float:
        """Messages per second the cluster sends, less the headroom: MESSAGES_PER_SECOND for the
        channels without a sender pool (they share that one pace), plus every pool number's own
        rate. The messaging queue's Temporal rate limit uses it."""
        pooled = [p for p in (self.twilio_sms_senders, self.twilio_whatsapp_senders) if p]
        shared = self.messages_per_second if len(pooled) < 2 else 0.0
        return (shared + sum(rate for p in pooled for _, rate in parse_sender_pool(p))) * SEND_RATE_HEADROOM

    @property
    def shared_send_rate(self) -> float:
        """The pace the senders outside a pool share (MESSAGES_PER_SECOND less the headroom)."""
        return self.messages_per_second * SEND_RATE_HEADROOM

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.business_timezone)

    def require_database_url(self) -> str:
        if not self.database_url:
            raise SettingsError("DATABASE_URL: not set")
        return self.database_url


DEV_STACK_FILE = "dev-stack.env"
"""Under JOBCTL_HOME: the running `jobctl dev` stack's connection settings (it writes and removes it)."""


def dev_stack_file() -> str | None:
    """The dev stack's settings file if its stack is running, so commands beside `make run` find it;
    variables set in the environment still win (pydantic-settings reads the file below them)."""
    import os
    from pathlib import Path

    path = Path(os.environ.get("JOBCTL_HOME") or ".jobctl") / DEV_STACK_FILE
    try:
        pid = int(dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)["JOBCTL_DEV_PID"])
        os.kill(pid, 0)  # a file left by a stack that died is ignored
    except (OSError, KeyError, ValueError):
        return None
    return str(path)


_read_dev_stack_file: list[str] = []


def read_dev_stack_file() -> str | None:
    """The dev stack's settings file the last `load_settings` read (None: none was running); the
    processes log it once (`workers.cli.runner.configure_logging`)."""
    return _read_dev_stack_file[-1] if _read_dev_stack_file else None


def load_settings(**overrides: object) -> Settings:
    """Build settings, turning pydantic's report into one line that names the setting."""
    env_file = dev_stack_file()
    _read_dev_stack_file[:] = [env_file] if env_file else []
    try:
        return Settings(_env_file=env_file, **overrides)  # type: ignore[arg-type, call-arg]
    except ValidationError as exc:
        first = exc.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        if not first["loc"]:  # a check across settings: its message starts with the setting's name
            raise SettingsError(message) from None
        raise SettingsError(f"{str(first['loc'][0]).upper()}: {message}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
