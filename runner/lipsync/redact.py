"""Credentials out of text that other people read: status, Events, the termination message.

A LipSyncJob's status and Events are readable by anyone who may list jobs or events in its
namespace, and a termination message is copied into the pod's status. So every message that goes
there passes through :func:`redact` first (the runner's result file, the operator's status and
Event texts). Two nets:

* **known values**: the secrets this process holds (``AWS_SECRET_ACCESS_KEY``,
  ``AWS_SESSION_TOKEN``, ``AWS_ACCESS_KEY_ID`` from the environment) are replaced wherever they
  appear, whatever surrounds them;
* **shapes**: what looks like a credential: AWS access key ids (``AKIA…``/``ASIA…``), values
  after a secret-sounding name (``aws_secret_access_key=…``, ``"password": "…"``, ``token: …``),
  ``Authorization``/``Bearer`` headers, the user-info of a URL (``https://user:pass@host``), the
  signature and credential of a presigned URL, PEM private keys.

Both are replaced by ``[REDACTED]``. A false positive costs a few characters of a message; a miss
leaks a key, so the shapes are generous. Every repetition is bounded, so a long message costs
linear time (a message is whatever a failure produced: it may be long).
"""

from __future__ import annotations

import os
import re
from typing import Iterable, Mapping

MARK = "[REDACTED]"

# Environment names whose values are secrets (the S3 tools' names, and any *_SECRET*/*TOKEN*/*PASSWORD*).
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECURITY_TOKEN")
_SECRET_NAME = re.compile(r"(SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|PRIVATE_KEY|API_KEY|ACCESS_KEY)", re.I)
_MIN_SECRET_LEN = 6  # shorter values would redact ordinary words

_SHAPES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.S), MARK),
    (re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{12,}\b"), MARK),
    # name=value, name: value, "name": "value" where the name sounds secret
    (re.compile(r"""(?ix)
        ( (?<![\w.-])[\w.-]{0,40}?(?:secret|token|passw(?:or)?d|credential|api[_-]?key|access[_-]?key|private[_-]?key|signature)[\w.-]{0,40}
          ["']?\s{0,5}[:=]\s{0,5}["']? )
        ( [^\s"',;&}]+ )"""), r"\1" + MARK),
    (re.compile(r"(?i)\b(authorization\s*[:=]\s*)(\S+(?:\s+\S+)?)"), r"\1" + MARK),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1" + MARK),
    (re.compile(r"(?i)(?<![a-z0-9+.-])([a-z][a-z0-9+.-]{0,20}://)[^/\s:@]{0,256}:[^/\s@]{0,256}@"), r"\1" + MARK + "@"),
    (re.compile(r"(?i)([?&]X-Amz-(?:Signature|Credential|Security-Token)=)[^&\s\"']+"), r"\1" + MARK),
)


def is_secret_name(name: str) -> bool:
    """Whether an environment variable of this name holds a secret."""
    return name in SECRET_ENV or bool(_SECRET_NAME.search(name))


def secret_values(env: Mapping[str, str] | None = None) -> list[str]:
    """The values of this environment's secret-looking variables (and, by default, of those the
    runner took out of its environment: ``lipsync.credentials``), longest first."""
    if env is None:
        from . import credentials

        env = {**os.environ, **credentials.held()}
    found = {v for k, v in env.items() if is_secret_name(k) and len(v) >= _MIN_SECRET_LEN}
    return sorted(found, key=len, reverse=True)


def redact(text: str | None, secrets: Iterable[str] | None = None) -> str:
    """``text`` with known secret values and credential-shaped substrings replaced by ``[REDACTED]``.

    ``secrets``: exact values to remove (default: :func:`secret_values` of this process's
    environment). None gives "".
    """
    if not text:
        return ""
    for value in secret_values() if secrets is None else secrets:
        if value and len(value) >= _MIN_SECRET_LEN:
            text = text.replace(value, MARK)
    for pattern, repl in _SHAPES:
        text = pattern.sub(repl, text)
    return text
