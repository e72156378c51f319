from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from opik_cipx.ship.identity import (
    Identity,
    IdentitySource,
    identity_from_claude_json,
    render_project,
)

ACCOUNT = {
    "oauthAccount": {
        "accountUuid": "11111111-2222-3333-4444-555555555555",
        "emailAddress": "ada.lovelace@example.com",
        "organizationUuid": "99999999-8888-7777-6666-555555555555",
        "organizationName": "Analytical Engines",
        "displayName": "Ada",
    },
    "userID": "deadbeef",
}


def test_identity_from_the_signed_in_account() -> None:
    ident = identity_from_claude_json(ACCOUNT)
    assert ident.user_email == "ada.lovelace@example.com"
    assert ident.user_uuid == "11111111-2222-3333-4444-555555555555"
    assert ident.org_uuid == "99999999-8888-7777-6666-555555555555"
    assert ident.org_name == "Analytical Engines" and ident.display_name == "Ada"
    assert ident.username == "ada.lovelace"
    assert ident.tags() == ["user:ada.lovelace@example.com"]
    assert ident.metadata()["source"] == "claude.json"


def test_api_key_sign_in_falls_back_to_the_request_account_uuid() -> None:
    ident = identity_from_claude_json({"primaryApiKey": "x", "userID": "deadbeef"})
    assert ident == Identity()
    filled = ident.with_request("acct-from-request")
    assert filled.user_uuid == "acct-from-request" and filled.source == "request"
    assert filled.tags() == []  # no email, no user tag
    assert identity_from_claude_json(ACCOUNT).with_request("other").user_uuid == ACCOUNT["oauthAccount"]["accountUuid"]


def test_source_rereads_the_file_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / ".claude.json"
    source = IdentitySource(path, reload_every=0.0)
    assert source.get() == Identity()
    path.write_text(json.dumps(ACCOUNT))
    assert source.get().user_email == "ada.lovelace@example.com"
    changed = json.loads(json.dumps(ACCOUNT))
    changed["oauthAccount"]["emailAddress"] = "charles@example.com"
    path.write_text(json.dumps(changed))
    os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert source.get().user_email == "charles@example.com"
    path.write_text("{ half written")
    os.utime(path, ns=(time.time_ns() + 2 * 10**9, time.time_ns() + 2 * 10**9))
    assert source.get().user_email == "charles@example.com"  # a torn write keeps the last good identity


IDENT = identity_from_claude_json(ACCOUNT)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("cc-{username}", "cc-ada.lovelace"),
        ("{email}", "ada.lovelace@example.com"),
        ("{user_email}", "ada.lovelace@example.com"),
        ("{user_uuid}", "11111111-2222-3333-4444-555555555555"),
        ("{display_name}", "Ada"),
        ("{org_name}/cc", "Analytical Engines/cc"),
        ("{org_uuid}", "99999999-8888-7777-6666-555555555555"),
        ("{user}@{hostname}", "localada@box1"),
        ("cc-{nonsense}-{username}", "cc-{nonsense}-ada.lovelace"),
        ("plain", "plain"),
    ],
)
def test_project_templating_fills_each_token_and_passes_unknown_ones(template: str, expected: str) -> None:
    assert render_project(template, IDENT, user="localada", hostname="box1") == expected


def test_known_token_without_a_value_stays_visible() -> None:
    assert render_project("cc-{username}", Identity(), user="u", hostname="h") == "cc-{username}"
