"""The console's session: one signed cookie (itsdangerous, keyed by CONSOLE_SECRET), HttpOnly,
SameSite=Lax, Secure when the request came over https, expiring after CONSOLE_SESSION_HOURS.

It holds a random session id, the signed-in user's id once signed in, and a one-shot flash (the
result of the last action). Signing in replaces the session id (no fixation). Every form carries
a CSRF token, the HMAC of the session id: a page of another site can neither read it nor make it,
and a POST without the right one changes nothing (403).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from config.settings import Settings

COOKIE = "jobctl_console"
_DEV_SECRET = "jobctl-console-dev-only-secret"  # a dev-only default: production sets a key


def secret_of(settings: Settings) -> str:
    """CONSOLE_SECRET, else ACTOR_HASH_KEY (required in production), else the dev-only key."""
    for value in (settings.console_secret, settings.actor_hash_key):
        if value is not None and value.get_secret_value():
            return value.get_secret_value()
    return _DEV_SECRET


class Session:
    def __init__(self, settings: Settings, request: Request) -> None:
        self._secret = secret_of(settings)
        self._serializer = URLSafeTimedSerializer(self._secret, salt="jobctl-console-session")
        self._max_age = settings.console_session_hours * 3600
        self._https = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
        self.data: dict[str, Any] = {}
        raw = request.cookies.get(COOKIE)
        if raw:
            try:
                self.data = self._serializer.loads(raw, max_age=self._max_age)
            except BadSignature:
                self.data = {}
        self.changed = False
        if not isinstance(self.data.get("sid"), str):
            self.data = {"sid": secrets.token_urlsafe(24)}
            self.changed = True

    @property
    def user_id(self) -> int | None:
        uid = self.data.get("uid")
        return uid if isinstance(uid, int) else None

    def sign_in(self, user_id: int) -> None:
        self.data = {"sid": secrets.token_urlsafe(24), "uid": user_id}
        self.changed = True

    def sign_out(self) -> None:
        self.data = {"sid": secrets.token_urlsafe(24)}
        self.changed = True

    def flash(self, message: str) -> None:
        self.data["flash"] = message
        self.changed = True

    def pop_flash(self) -> str | None:
        message = self.data.pop("flash", None)
        if message is not None:
            self.changed = True
        return message if isinstance(message, str) else None

    @property
    def csrf_token(self) -> str:
        return hmac.new(self._secret.encode(), f"csrf:{self.data['sid']}".encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, token: object) -> bool:
        return isinstance(token, str) and hmac.compare_digest(token, self.csrf_token)

    def save(self, response: Response) -> Response:
        if self.changed:
            response.set_cookie(
                COOKIE,
                self._serializer.dumps(self.data),
                max_age=self._max_age,
                path="/console",
                httponly=True,
                samesite="lax",
                secure=self._https,
            )
        return response
