"""wire.redact: credentials never kept; only which kind of credential a call used."""

from __future__ import annotations

import pytest

from opik_cipx.wire.redact import CREDENTIAL_HEADER, credential_kind, redact_headers


@pytest.mark.parametrize(
    ("headers", "kind"),
    [
        ([("x-api-key", "sk-ant-api03-abc")], "api_key"),
        ([("Authorization", "Bearer sk-ant-api03-abc")], "api_key"),  # ANTHROPIC_AUTH_TOKEN set to a key
        ([("authorization", "Bearer sk-ant-oat01-abc")], "oauth"),  # Claude Code's subscription login
        ([("authorization", "Bearer eyJhbGciOi"), ("anthropic-beta", "claude-code-20250219,oauth-2025-04-20")], "oauth"),
        ([("authorization", "Bearer eyJhbGciOi"), ("chatgpt-account-id", "acct")], "oauth"),  # Codex's ChatGPT login
        ([("authorization", "Bearer sk-proj-abc")], "api_key"),  # an OpenAI key
        ([("authorization", "Bearer gateway-token")], "bearer"),  # a token whose billing we cannot tell
        ([("anthropic-version", "2023-06-01")], "none"),
        ([(b"X-Api-Key", b"sk-ant-api03-abc")], "api_key"),  # names and values as read off the wire
    ],
)
def test_credential_kind_names_the_kind_only(headers: list[tuple[str, str]], kind: str) -> None:
    assert credential_kind(headers) == kind


def test_a_recorded_kind_is_trusted_only_when_no_credential_is_present() -> None:
    assert credential_kind([(CREDENTIAL_HEADER, "oauth")]) == "oauth"
    assert credential_kind([(CREDENTIAL_HEADER, "oauth"), ("x-api-key", "k")]) == "api_key"
    assert credential_kind([(CREDENTIAL_HEADER, "sk-ant-oat01-leaked")]) == "none"  # never echoes a value


def test_redacted_headers_drop_every_credential() -> None:
    out = redact_headers([("X-Api-Key", "k"), ("Authorization", "Bearer t"), ("anthropic-version", "1")])
    assert out == {"anthropic-version": "1"}
