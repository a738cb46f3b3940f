"""Secrets stay secret and Twilio's test defaults never reach production."""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from activities.churn.cases import hash_actor
from config.settings import SettingsError, load_settings, read_dev_stack_file
from devtools.devstack import _print_banner, write_connection_file

REAL_TWILIO = {"twilio_account_sid": "AC" + "1" * 32, "twilio_auth_token": "f" * 32}
REAL_SENDERS = {"twilio_whatsapp_from": "whatsapp:+15557650000", "twilio_sms_from": "+15557650001"}


def test_the_dev_banner_never_prints_the_database_password(capsys: pytest.CaptureFixture[str]) -> None:
    _print_banner(load_settings(), "postgresql+psycopg://jobctl:hunter2@db.internal:5432/jobctl", [])
    shown = capsys.readouterr().out
    assert "hunter2" not in shown
    assert "jobctl@db.internal:5432/jobctl" in shown.replace("jobctl:***@", "jobctl@")


@pytest.mark.parametrize("setting", ["twilio_whatsapp_from", "twilio_sms_from"])
def test_real_twilio_credentials_with_a_test_sender_number_refuse_to_start(setting: str) -> None:
    test_number = "whatsapp:+15005550006" if setting == "twilio_whatsapp_from" else "+15005550006"
    senders = {**REAL_SENDERS, setting: test_number}
    with pytest.raises(SettingsError, match=f"^{setting.upper()}: "):
        load_settings(**REAL_TWILIO, **senders, actor_hash_key="k" * 32)


def test_test_sender_numbers_are_fine_against_the_emulator_or_without_credentials() -> None:
    assert load_settings(**REAL_TWILIO, twilio_api_base="http://127.0.0.1:8089").twilio_sms_from == "+15005550006"
    assert load_settings().twilio_whatsapp_from == "whatsapp:+15005550006"


def test_production_refuses_to_start_without_an_actor_hash_key() -> None:
    with pytest.raises(SettingsError, match="^ACTOR_HASH_KEY: "):
        load_settings(**REAL_TWILIO, **REAL_SENDERS)
    assert load_settings(**REAL_TWILIO, **REAL_SENDERS, actor_hash_key="k" * 32).actor_hash_key is not None


def test_actor_hashes_are_keyed_so_nobody_can_recompute_them_from_a_guess() -> None:
    key_a, key_b = SecretStr("a-secret-key-of-the-operator-a"), SecretStr("another-secret-key-entirely-b")
    hashed = hash_actor("operator-7", key=key_a)
    assert hashed == hash_actor("operator-7", key=key_a)  # the same operator hashes the same, for audits
    assert hashed != hash_actor("operator-7", key=key_b)
    assert hashed == hmac.new(key_a.get_secret_value().encode(), b"operator-7", hashlib.sha256).hexdigest()
    # the old scheme: a public salt anyone can apply to a guessed id
    assert hashed != hashlib.sha256(b"jobctl-recovery-actor:operator-7").hexdigest()
    assert hash_actor("operator-7") != hashlib.sha256(b"jobctl-recovery-actor:operator-7").hexdigest()


def test_the_dev_stack_writes_its_dev_keys_for_a_second_terminal_and_never_real_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue #36: `jobctl dev`'s settings file (0600) holds the emulator's and the sandbox's URLs and
    keys; a stack on real Twilio and Stripe writes neither secret. A process beside it reads the file,
    and what its environment sets wins."""
    dev = load_settings(
        twilio_api_base="http://127.0.0.1:8089",
        twilio_account_sid="AC" + "1" * 32,
        twilio_auth_token=SecretStr("emulator-token"),
        stripe_api_base="http://127.0.0.1:8420",
        stripe_secret_key=SecretStr("sk_test_jobctl_dev"),
        stripe_webhook_secret=SecretStr("whsec_jobctl_dev"),
        jobctl_home=str(tmp_path),
    )
    database = "postgresql+psycopg://postgres@127.0.0.1:5432/jobctl"
    path = write_connection_file(tmp_path, dev, database, "http://127.0.0.1:8000")
    assert path.stat().st_mode & 0o777 == 0o600
    written = dict(line.split("=", 1) for line in path.read_text().splitlines())
    assert written["STRIPE_SECRET_KEY"] == "sk_test_jobctl_dev" and written["TWILIO_AUTH_TOKEN"] == "emulator-token"
    assert written["PUBLIC_BASE_URL"] == "http://127.0.0.1:8000"

    for name in [n for n in os.environ if n.startswith(("TWILIO_", "STRIPE_", "DATABASE_", "TEMPORAL_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("JOBCTL_HOME", str(tmp_path))
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "from-the-environment")
    beside = load_settings()
    assert beside.stripe_secret_key and beside.stripe_secret_key.get_secret_value() == "sk_test_jobctl_dev"
    assert beside.database_url == database and beside.twilio_api_base == "http://127.0.0.1:8089"
    assert beside.twilio_auth_token and beside.twilio_auth_token.get_secret_value() == "from-the-environment"
    assert read_dev_stack_file() == str(path)

    real = dev.model_copy(
        update={"twilio_api_base": None, "stripe_api_base": None, "stripe_secret_key": SecretStr("sk_live_real")}
    )
    path = write_connection_file(tmp_path, real, database, "http://127.0.0.1:8000")
    written = dict(line.split("=", 1) for line in path.read_text().splitlines())
    assert not {"TWILIO_AUTH_TOKEN", "TWILIO_ACCOUNT_SID", "STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET"} & set(written)
