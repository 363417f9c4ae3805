"""Tests for spacesim.server.auth: signed tokens, their failure reasons, grants, secrets."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import random
import stat
from pathlib import Path
from typing import Any

import pytest

from spacesim.server.auth import (
    ADMIN,
    CLOCK_SKEW,
    MODERATE,
    ORDINARY_GRANTS,
    SPACE_CREATE,
    SPACE_JOIN,
    AuthError,
    AuthReason,
    Claims,
    DevIssuer,
    Forbidden,
    ForbiddenReason,
    default_secret_path,
    issue_token,
    load_or_create_secret,
    require,
    verify_token,
)

SECRET = b"s" * 32
NOW = 1_700_000_000.0


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(payload: Any, secret: bytes = SECRET, *, raw: bytes | None = None) -> str:
    """A correctly signed token around any payload, to reach the payload checks."""
    body = b64(raw if raw is not None else json.dumps(payload).encode())
    return body + "." + b64(hmac.new(secret, body.encode(), hashlib.sha256).digest())


_DROP = object()  # good_payload(field=_DROP) leaves the field out


def good_payload(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "sub": "alice",
        "grants": ["space:join"],
        "space": None,
        "exp": NOW + 60,
        "iat": NOW,
    }
    payload.update(changes)
    return {k: v for k, v in payload.items() if v is not _DROP}


def reason_of(token: Any, now: float = NOW, secret: bytes = SECRET) -> str:
    with pytest.raises(AuthError) as info:
        verify_token(secret, token, now=now)
    return info.value.reason


# --------------------------------------------------------------------------- round trip


def test_round_trip() -> None:
    token = issue_token(SECRET, "alice", ["space:join", "space:create"], 600, now=NOW)
    claims = verify_token(SECRET, token, now=NOW + 1)
    assert claims == Claims(
        sub="alice",
        grants=frozenset({"space:join", "space:create"}),
        space=None,
        exp=NOW + 600,
        iat=NOW,
    )
    assert token.count(".") == 1 and "=" not in token
    assert all(c.isalnum() or c in "-_." for c in token)


def test_space_restricted_round_trip_and_grants_dedup() -> None:
    token = issue_token(SECRET, "bob", ("space:join", "space:join"), 60, space="sp1", now=NOW)
    claims = verify_token(SECRET, token, now=NOW)
    assert claims.space == "sp1" and claims.grants == frozenset({"space:join"})
    payload = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert payload["grants"] == ["space:join"]


def test_default_now_is_the_wall_clock() -> None:
    claims = verify_token(SECRET, issue_token(SECRET, "a", [], 60))
    assert claims.exp - claims.iat == 60


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sub": ""}, "sub"),
        ({"grants": "space:join"}, "grants"),
        ({"grants": ["ok", ""]}, "grant"),
        ({"ttl": 0}, "ttl"),
        ({"ttl": float("inf")}, "ttl"),
        ({"space": ""}, "space"),
        ({"secret": b"short"}, "secret"),
        ({"now": float("nan")}, "now"),
    ],
)
def test_issue_rejects_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"secret": SECRET, "sub": "a", "grants": [], "ttl": 60, "now": NOW}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        issue_token(**args)


# --------------------------------------------------------------------------- bad signatures


def test_tampered_payload_is_a_bad_signature() -> None:
    token = issue_token(SECRET, "alice", ["space:join"], 600, now=NOW)
    _, sig = token.split(".")
    forged = b64(json.dumps(good_payload(sub="mallory", grants=["admin"])).encode())
    assert reason_of(forged + "." + sig) == AuthReason.BAD_SIGNATURE


def test_tampered_signature_is_a_bad_signature() -> None:
    token = issue_token(SECRET, "alice", ["space:join"], 600, now=NOW)
    body, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "="))
    for i in (0, 15, 31):
        flipped = bytearray(raw)
        flipped[i] ^= 1
        assert reason_of(body + "." + b64(bytes(flipped))) == AuthReason.BAD_SIGNATURE


def test_wrong_secret_is_a_bad_signature() -> None:
    token = issue_token(SECRET, "alice", ["space:join"], 600, now=NOW)
    assert reason_of(token, secret=b"t" * 32) == AuthReason.BAD_SIGNATURE


def test_signature_is_checked_before_the_payload_is_parsed() -> None:
    unsigned = b64(b"not json at all") + "." + b64(b"x" * 32)
    assert reason_of(unsigned) == AuthReason.BAD_SIGNATURE


# --------------------------------------------------------------------------- malformed


def _valid() -> str:
    return issue_token(SECRET, "alice", ["space:join"], 600, now=NOW)


@pytest.mark.parametrize(
    "token",
    [
        "",
        ".",
        "abc",
        "a.b.c",
        "..",
        ".abc",
        "abc.",
        "a b.c",
        "abc=.def",
        "ab+c.def",
        "ab/c.def",
        "é.é",
        "\x00.\x00",
        "a.bcde",  # 'a' alone is not valid base64 (length % 4 == 1)
        "abc.YQ",  # signature of the wrong length
        "x" * 10_000 + "." + "y",
        None,
        123,
        b"abc.def",
        ["abc", "def"],
    ],
)
def test_malformed_shapes(token: Any) -> None:
    assert reason_of(token) == AuthReason.MALFORMED


def test_truncated_tokens_never_raise_anything_else() -> None:
    token = _valid()
    for cut in range(len(token)):
        with pytest.raises(AuthError) as info:
            verify_token(SECRET, token[:cut], now=NOW)
        assert info.value.reason in (AuthReason.MALFORMED, AuthReason.BAD_SIGNATURE)


def test_non_canonical_base64_is_malformed() -> None:
    body, sig = _valid().split(".")
    # Flip unused low bits of the last signature character: decodes to the same bytes.
    last = sig[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = alphabet[alphabet.index(last) ^ 1]
    assert reason_of(body + "." + sig[:-1] + twin) == AuthReason.MALFORMED


def test_random_garbage_only_ever_raises_auth_error() -> None:
    rng = random.Random(7)
    token = _valid()
    alphabet = "ABCxyz019-_.=+/ \t\n{}\"'é\x00"
    for _ in range(2_000):
        chars = list(token)
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            pos = rng.randrange(len(chars) + 1)
            if op < 0.4 and chars:
                chars[min(pos, len(chars) - 1)] = rng.choice(alphabet)
            elif op < 0.7:
                chars.insert(pos, rng.choice(alphabet))
            elif chars:
                del chars[min(pos, len(chars) - 1)]
        mutated = "".join(chars)
        if mutated == token:
            continue
        with pytest.raises(AuthError) as info:
            verify_token(SECRET, mutated, now=NOW)
        assert info.value.reason in (AuthReason.MALFORMED, AuthReason.BAD_SIGNATURE)


@pytest.mark.parametrize(
    "payload",
    [
        [],
        ["sub", "alice"],
        "alice",
        42,
        None,
        good_payload(sub=_DROP),
        good_payload(sub=""),
        good_payload(sub=7),
        good_payload(grants=_DROP),
        good_payload(grants="space:join"),
        good_payload(grants=[1]),
        good_payload(grants=[""]),
        good_payload(grants={"a": 1}),
        good_payload(space=3),
        good_payload(space=""),
        good_payload(exp=_DROP),
        good_payload(exp="2030-01-01"),
        good_payload(exp=True),
        good_payload(exp=None),
        good_payload(exp=10**400),
        good_payload(iat=_DROP),
        good_payload(iat=[NOW]),
    ],
)
def test_signed_but_malformed_payloads(payload: Any) -> None:
    assert reason_of(signed(payload)) == AuthReason.MALFORMED


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"{",
        b"\xff\xfe\x00garbage",
        b'{"sub": "a", "grants": [], "exp": NaN, "iat": 0}',
        b'{"sub": "a", "grants": [], "exp": Infinity, "iat": 0}',
        b'{"sub": "a", "grants": [], "exp": 1e999, "iat": 0}',
        b"",
    ],
)
def test_signed_non_json_payloads(raw: bytes) -> None:
    assert reason_of(signed(None, raw=raw)) == AuthReason.MALFORMED


def test_deeply_nested_json_within_the_size_limit_is_malformed() -> None:
    raw = b"[" * 3000 + b"]" * 3000  # 6000 bytes, 8000 base64 chars: under the limit
    token = signed(None, raw=raw)
    assert len(token) < 8192
    assert reason_of(token) == AuthReason.MALFORMED


def test_unknown_payload_fields_are_ignored() -> None:
    claims = verify_token(SECRET, signed(good_payload(extra={"x": 1}, nbf=0)), now=NOW)
    assert claims.sub == "alice"


# --------------------------------------------------------------------------- time


def test_expiry_is_strict_at_exp() -> None:
    token = issue_token(SECRET, "a", [], 100, now=NOW)
    assert verify_token(SECRET, token, now=NOW + 99.999).sub == "a"
    assert reason_of(token, now=NOW + 100) == AuthReason.EXPIRED
    assert reason_of(token, now=NOW + 10_000) == AuthReason.EXPIRED


def test_issued_in_the_future_within_skew_is_accepted() -> None:
    token = issue_token(SECRET, "a", [], 600, now=NOW + CLOCK_SKEW)
    assert verify_token(SECRET, token, now=NOW).sub == "a"


def test_issued_in_the_future_beyond_skew_is_not_yet_valid() -> None:
    token = issue_token(SECRET, "a", [], 600, now=NOW + CLOCK_SKEW + 1)
    assert reason_of(token, now=NOW) == AuthReason.NOT_YET_VALID


def test_expired_wins_over_not_yet_valid() -> None:
    token = signed(good_payload(iat=NOW + 1000, exp=NOW - 1))
    assert reason_of(token) == AuthReason.EXPIRED


# --------------------------------------------------------------------------- grants, spaces


def claims(grants: set[str], space: str | None = None) -> Claims:
    return Claims("alice", frozenset(grants), space, NOW + 60, NOW)


def forbidden_reason(c: Claims, grant: str, space: str | None = None) -> str:
    with pytest.raises(Forbidden) as info:
        require(c, grant, space)
    assert not isinstance(info.value, AuthError)
    return info.value.reason


def test_require_grants() -> None:
    c = claims({SPACE_JOIN})
    require(c, SPACE_JOIN)
    require(c, SPACE_JOIN, "any-space")
    assert forbidden_reason(c, SPACE_CREATE) == ForbiddenReason.MISSING_GRANT
    assert forbidden_reason(c, MODERATE) == ForbiddenReason.MISSING_GRANT
    assert c.has(SPACE_JOIN) and not c.has(MODERATE)


def test_admin_has_every_grant() -> None:
    c = claims({ADMIN})
    assert c.has(MODERATE) and c.has(SPACE_CREATE) and c.has("anything")
    require(c, MODERATE, "sp")


def test_space_restriction() -> None:
    c = claims({SPACE_JOIN}, space="sp1")
    require(c, SPACE_JOIN, "sp1")
    assert forbidden_reason(c, SPACE_JOIN, "sp2") == ForbiddenReason.WRONG_SPACE
    assert forbidden_reason(c, SPACE_JOIN) == ForbiddenReason.WRONG_SPACE  # no space: refused
    assert forbidden_reason(c, MODERATE, "sp1") == ForbiddenReason.MISSING_GRANT
    admin_for_one_space = claims({ADMIN}, space="sp1")
    assert forbidden_reason(admin_for_one_space, MODERATE, "sp2") == ForbiddenReason.WRONG_SPACE


def test_errors_carry_reason_and_readable_text() -> None:
    err = AuthError(AuthReason.EXPIRED, "the token has expired")
    assert err.reason == "expired" and str(err) == "expired: the token has expired"
    assert str(AuthError("missing token")) == "missing token"
    assert str(Forbidden(ForbiddenReason.WRONG_SPACE)) == "wrong_space"
    assert not issubclass(Forbidden, AuthError) and not issubclass(AuthError, Forbidden)


# --------------------------------------------------------------------------- dev mode, secrets


def test_dev_issuer_mints_ordinary_grants() -> None:
    dev = DevIssuer(SECRET)
    c = dev.verify(dev.token("alice", now=NOW), now=NOW)
    assert c.sub == "alice" and c.grants == ORDINARY_GRANTS and c.space is None
    mod = verify_token(SECRET, dev.token("m", moderator=True, space="sp", now=NOW), now=NOW)
    assert mod.grants == ORDINARY_GRANTS | {MODERATE} and mod.space == "sp"
    adm = dev.verify(dev.token("root", admin=True, extra=["x:y"], now=NOW), now=NOW)
    assert adm.grants == ORDINARY_GRANTS | {ADMIN, "x:y"}
    with pytest.raises(ValueError):
        DevIssuer(b"")


def test_secret_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = default_secret_path(tmp_path / "data" / "spaces.db")
    assert path == tmp_path / "data" / "spaces.db.secret"
    secret = load_or_create_secret(path)
    assert len(secret) == 32 and path.read_bytes() == secret
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(path) == secret  # reused, not replaced
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left
    assert load_or_create_secret(tmp_path / "other.secret") != secret


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_secret_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.secret"
    path.write_bytes(os.urandom(32))
    path.chmod(0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        load_or_create_secret(path)


def test_too_short_secret_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.secret"
    path.write_bytes(b"abc")
    path.chmod(0o600)
    with pytest.raises(ValueError, match="bytes"):
        load_or_create_secret(path)
