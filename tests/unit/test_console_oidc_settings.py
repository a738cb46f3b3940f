"""The console's OIDC settings are checked at start, each mistake as one line naming the setting;
the role map gives each group its role (and a company admin's company), the first listed winning."""

from __future__ import annotations

import pytest

from config.settings import SettingsError, load_settings

ISSUER = "https://login.example.com/realms/acme"
OIDC = {"console_oidc_issuer": ISSUER, "console_oidc_client_id": "jobctl-console"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"console_oidc_issuer": ISSUER}, "CONSOLE_OIDC_CLIENT_ID: not set (required with CONSOLE_OIDC_ISSUER)"),
        (OIDC, "CONSOLE_OIDC_ROLE_MAP: not set (required with CONSOLE_OIDC_ISSUER)"),
        ({**OIDC, "console_oidc_issuer": "login.example.com"}, "CONSOLE_OIDC_ISSUER: must be an http(s):// URL"),
        ({**OIDC, "console_oidc_role_map": "jobctl-finance"}, "CONSOLE_OIDC_ROLE_MAP: entry 1 must be group=role"),
        ({**OIDC, "console_oidc_role_map": "a=finance,b=admin"}, "CONSOLE_OIDC_ROLE_MAP: entry 2: the role must be"),
        ({**OIDC, "console_oidc_role_map": "a=company_admin"}, "CONSOLE_OIDC_ROLE_MAP: entry 1: company_admin:<co"),
        ({**OIDC, "console_oidc_role_map": "a=finance:acme"}, "CONSOLE_OIDC_ROLE_MAP: entry 1: company_admin:<co"),
        ({**OIDC, "console_oidc_role_map": "a=finance,a=support"}, "CONSOLE_OIDC_ROLE_MAP: entry 2: the group 'a'"),
        ({"console_local_login": False}, "CONSOLE_LOCAL_LOGIN: false needs CONSOLE_OIDC_ISSUER"),
    ],
)
def test_a_wrong_oidc_setting_is_one_line_naming_it(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(**overrides)
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)


def test_the_role_map_gives_each_group_its_role_and_the_first_listed_wins() -> None:
    from workers.console.oidc import role_of

    settings = load_settings(
        **OIDC, console_oidc_role_map="jobctl-finance=finance, jobctl-acme-admins=company_admin:acme,ops=operator"
    )
    assert role_of(settings, ["everyone", "jobctl-acme-admins"]) == ("company_admin", "acme")
    assert role_of(settings, ["ops", "jobctl-finance"]) == ("finance", None)  # the map's order, not the token's
    assert role_of(settings, "ops everyone") == ("operator", None)  # a space-separated claim (some providers)
    assert role_of(settings, ["everyone"]) is None and role_of(settings, None) is None
