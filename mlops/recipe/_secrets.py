"""Credentials written into a recipe, recognised by their key name or by the shape of their value.

A recipe is committed and printed (`mlops plan` shows the resolved config), so a credential in it leaks.
The key name alone misses most leaks: a Prefect API key pasted into `prefect_api_key_ref`, a database URL
with `user:password@`, an AWS key pair in a description. So every string leaf of the composed config
(overrides included) is also matched against the shapes of common credentials. A finding names the shape,
never the value: the value is what must not be shown.

    >>> [s for s, _ in credential_shapes("AKIA" + "Z" * 16)]
    ['an AWS access key id']
"""

from __future__ import annotations

import math
import re
from collections import Counter

# (what it is, pattern). Lengths follow each issuer's documented format, so a short placeholder such as
# `sk-123` or `ghp_xxx` in an example is not taken for a real token.
_SHAPES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("an AWS access key id", re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])")),
    ("a GitHub token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})")),
    ("a Slack token", re.compile(r"\bxox[bap]-[A-Za-z0-9-]{10,}")),
    ("an API secret key (sk-...)", re.compile(r"\bsk-[A-Za-z0-9_-]{20,}")),
    ("a Prefect API key", re.compile(r"\bpnu_[A-Za-z0-9]{30,}")),
    ("a GitLab token", re.compile(r"\bglpat-[A-Za-z0-9_-]{20,}")),
    ("a Google API key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}")),
    ("a private key", re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY( BLOCK)?-----")),
    # scheme://user:password@host; a password that is itself an interpolation (${oc.env:PW}) is a reference.
    ("a password in a URL", re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]+:(?!\$\{)[^/\s@]+@")),
)
_AWS_KEY_ID = _SHAPES[0][1]
# An AWS secret access key: 40 base64 characters. Alone that is any hash, so it counts only beside a key id.
_AWS_SECRET = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])")
# Keys that hold a reference to a secret (a secret's name, an environment variable's name), never the secret.
_REFERENCE_KEY = re.compile(r"_(ref|env)$")


def _entropy(text: str) -> float:
    """Shannon entropy in bits per character."""
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def _random_looking(value: str) -> bool:
    """A long high-entropy run (letters mixed with digits): a key or token, not a name, path or ARN."""
    # Names and paths split at their separators into words; a token is one unbroken run.
    for piece in re.split(r"[/:@=,;.\s_-]+", value):
        if len(piece) >= 20 and _entropy(piece) >= 3.5 and re.search(r"\d", piece) and re.search(r"[A-Za-z]", piece):
            return True
    return False


def credential_shapes(value: str, key: str = "", siblings: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(what it looks like, the matched text) for each credential shape in `value`, the string at `key`;
    `siblings` are the other string values of the same mapping (an AWS secret key is recognised beside its
    key id)."""
    found = [(what, m.group(0)) for what, pattern in _SHAPES if (m := pattern.search(value))]
    if _AWS_KEY_ID.search(value) or any(_AWS_KEY_ID.search(s) for s in siblings):
        rest = _AWS_KEY_ID.sub(" ", value)
        if (m := _AWS_SECRET.search(rest)) is not None:
            found.append(("an AWS secret access key", m.group(0)))
    if not found and _REFERENCE_KEY.search(key.rpartition(".")[2]) and _random_looking(value):
        found.append(("a long random string (a key or token) where a reference belongs", value))
    return found
