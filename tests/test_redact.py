"""lipsync.redact: what may reach status, Events and the termination message."""

from __future__ import annotations

import pytest

from lipsync.redact import MARK, redact, secret_values


@pytest.mark.parametrize("text,gone", [
    ("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    ("key id AKIAIOSFODNN7EXAMPLE used", "AKIAIOSFODNN7EXAMPLE"),
    ('{"password": "hunter2hunter2"}', "hunter2hunter2"),
    ("token: ghp_abcdefghijklmnop", "ghp_abcdefghijklmnop"),
    ("Authorization: Bearer eyJhbGciOi.payload.sig", "eyJhbGciOi.payload.sig"),
    ("fetch https://bob:pa55word@host/x failed", "pa55word"),
    ("https://b.s3/x?X-Amz-Credential=AKIA%2F2026&X-Amz-Signature=abcdef0123", "abcdef0123"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----", "MIIEow"),
])
def test_credential_shapes_are_redacted(text, gone):
    out = redact(text, ())
    assert gone not in out and MARK in out


def test_known_secret_values_are_redacted_wherever_they_appear(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "plain-words-secret")
    monkeypatch.setenv("MY_API_TOKEN", "zzzz-token-zzzz")
    assert set(secret_values()) >= {"plain-words-secret", "zzzz-token-zzzz"}
    out = redact("the program printed plain-words-secret and zzzz-token-zzzz inline")
    assert "plain-words-secret" not in out and "zzzz-token-zzzz" not in out


def test_ordinary_messages_are_left_alone():
    for text in ("[model] ModelFailed: command command exited with code 3; its output is in the runner's log",
                 "[fetch] InputNotFound: s3://media/in/face.mp4 does not exist",
                 "no face was found in the video"):
        assert redact(text, ()) == text

