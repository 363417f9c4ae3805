"""Signed access tokens: a minimal JWT-HS256 lookalike, stdlib only.

A token is ``base64url(payload JSON) + "." + base64url(HMAC-SHA256(secret, payload part))``,
base64url without padding. The payload is a JSON object::

    {"sub": "alice", "grants": ["space:create", "space:join"], "space": null,
     "exp": 1700003600, "iat": 1700000000}

``space`` (optional) restricts the token to one space. There is no header and no algorithm
field, so there is no algorithm to confuse.

Two error classes, so the API can map them to two statuses:

* :class:`AuthError` (-> 401): the token itself is unusable; ``reason`` is one of
  :class:`AuthReason` (malformed, bad_signature, expired, not_yet_valid, missing).
* :class:`Forbidden` (-> 403): a valid token that does not allow this; ``reason`` is one of
  :class:`ForbiddenReason` (missing_grant, wrong_space).

:func:`verify_token` raises nothing but :class:`AuthError` for whatever string it is given
(the secret, however, must be a real secret: a bad one is a ValueError, a programming error).
The signature is checked before the payload is parsed, so unsigned input never reaches the
JSON parser; a structurally valid token with a wrong signature is ``bad_signature``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import math
import os
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

__all__ = [
    "ADMIN",
    "CLOCK_SKEW",
    "DEV_TOKEN_TTL",
    "MODERATE",
    "ORDINARY_GRANTS",
    "SECRET_BYTES",
    "SPACE_CREATE",
    "SPACE_JOIN",
    "AuthError",
    "AuthReason",
    "Claims",
    "DevIssuer",
    "Forbidden",
    "ForbiddenReason",
    "default_secret_path",
    "is_loopback_host",
    "issue_token",
    "load_or_create_secret",
    "require",
    "verify_token",
]

SPACE_CREATE = "space:create"
SPACE_JOIN = "space:join"
MODERATE = "moderate"  # platform moderators: resolve reports
ADMIN = "admin"  # implies every grant (see Claims.has)

#: What every signed-in user gets; DevIssuer mints these.
ORDINARY_GRANTS: frozenset[str] = frozenset({SPACE_CREATE, SPACE_JOIN})

#: Tolerated clock difference for ``iat`` in the future, in seconds. ``exp`` has no leeway.
CLOCK_SKEW = 60.0

#: Lifetime of dev-mode tokens (s). RoomClient mints a new one when a request is
#: refused as ``expired`` and reopens an event stream closed for expiry, so load runs
#: longer than this (up to a day) go on.
DEV_TOKEN_TTL = 3600.0

SECRET_BYTES = 32
_MIN_SECRET_BYTES = 16
_MAX_TOKEN_CHARS = 8192  # far above any real token; bounds the work done on garbage
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_SIG_BYTES = hashlib.sha256().digest_size


class AuthReason(StrEnum):
    """Why a token was rejected (HTTP 401)."""

    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    MISSING = "missing"  # for callers: no token was sent at all


class ForbiddenReason(StrEnum):
    """Why a valid token does not allow an action (HTTP 403)."""

    MISSING_GRANT = "missing_grant"
    WRONG_SPACE = "wrong_space"


class _Refusal(Exception):
    """A refusal with a machine-readable ``reason`` and a ``detail`` for humans."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


class AuthError(_Refusal):
    """The token is unusable (-> 401)."""


class Forbidden(_Refusal):
    """A valid token that does not allow the action (-> 403); not an AuthError subclass."""


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified token says."""

    sub: str
    grants: frozenset[str]
    space: str | None
    exp: float
    iat: float

    def has(self, grant: str) -> bool:
        """True if the token carries ``grant``; ``admin`` carries every grant."""
        return grant in self.grants or ADMIN in self.grants


# --------------------------------------------------------------------------- encoding


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(part: str) -> bytes:
    """Strict base64url without padding; AuthError(malformed) on anything else."""
    if not _B64URL.fullmatch(part) or len(part) % 4 == 1:
        raise AuthError(AuthReason.MALFORMED, "not base64url")
    try:
        data = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise AuthError(AuthReason.MALFORMED, "not base64url") from None
    if _b64encode(data) != part:  # non-canonical: stray bits in the last character
        raise AuthError(AuthReason.MALFORMED, "not canonical base64url")
    return data


def _check_secret(secret: object) -> bytes:
    if not isinstance(secret, bytes | bytearray) or len(secret) < _MIN_SECRET_BYTES:
        raise ValueError(f"the secret must be at least {_MIN_SECRET_BYTES} bytes")
    return bytes(secret)


def _sign(secret: bytes, payload_part: str) -> bytes:
    return hmac.new(secret, payload_part.encode("ascii"), hashlib.sha256).digest()


def _finite(value: float | None, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return number


# --------------------------------------------------------------------------- issue / verify


def issue_token(
    secret: bytes,
    sub: str,
    grants: Iterable[str],
    ttl: float,
    space: str | None = None,
    now: float | None = None,
) -> str:
    """Mint a token for ``sub`` valid ``ttl`` seconds from ``now`` (default: time.time())."""
    key = _check_secret(secret)
    if not isinstance(sub, str) or not sub:
        raise ValueError("sub must be a non-empty string")
    if isinstance(grants, str):
        raise ValueError("grants must be an iterable of strings, not one string")
    grant_list = sorted(set(grants))
    if not all(isinstance(g, str) and g for g in grant_list):
        raise ValueError("every grant must be a non-empty string")
    if space is not None and (not isinstance(space, str) or not space):
        raise ValueError("space must be None or a non-empty string")
    if _finite(ttl, "ttl") <= 0:
        raise ValueError("ttl must be positive")
    iat = _finite(time.time() if now is None else now, "now")
    payload = {"sub": sub, "grants": grant_list, "space": space, "exp": iat + ttl, "iat": iat}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    payload_part = _b64encode(text.encode("utf-8"))
    return payload_part + "." + _b64encode(_sign(key, payload_part))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _number(payload: dict[str, Any], field: str) -> float:
    value = payload.get(field)
    if not isinstance(value, bool) and isinstance(value, int | float):
        try:
            number = float(value)  # OverflowError for ints beyond the float range
        except OverflowError:
            pass
        else:
            if math.isfinite(number):
                return number
    raise AuthError(AuthReason.MALFORMED, f"'{field}' must be a finite number")


def _claims(payload: Any) -> Claims:
    if not isinstance(payload, dict):
        raise AuthError(AuthReason.MALFORMED, "the payload is not a JSON object")
    sub = payload.get("sub")
    if not isinstance(sub, str) or not sub:
        raise AuthError(AuthReason.MALFORMED, "'sub' must be a non-empty string")
    grants = payload.get("grants")
    if not isinstance(grants, list) or not all(isinstance(g, str) and g for g in grants):
        raise AuthError(AuthReason.MALFORMED, "'grants' must be a list of strings")
    space = payload.get("space")
    if space is not None and (not isinstance(space, str) or not space):
        raise AuthError(AuthReason.MALFORMED, "'space' must be null or a non-empty string")
    return Claims(
        sub=sub,
        grants=frozenset(grants),
        space=space,
        exp=_number(payload, "exp"),
        iat=_number(payload, "iat"),
    )


def verify_token(secret: bytes, token: str, now: float | None = None) -> Claims:
    """The token's claims, or AuthError (malformed, bad_signature, expired, not_yet_valid).

    Checks, in order: shape, signature (constant-time), payload, ``exp`` (expired when
    ``now >= exp``), ``iat`` (not yet valid when more than CLOCK_SKEW in the future).
    """
    key = _check_secret(secret)
    moment = _finite(time.time() if now is None else now, "now")
    if not isinstance(token, str) or not token:
        raise AuthError(AuthReason.MALFORMED, "the token must be a non-empty string")
    if len(token) > _MAX_TOKEN_CHARS:
        raise AuthError(AuthReason.MALFORMED, "the token is too long")
    parts = token.split(".")
    if len(parts) != 2:
        raise AuthError(AuthReason.MALFORMED, "expected <payload>.<signature>")
    payload_part, sig_part = parts
    payload_bytes = _b64decode(payload_part)
    signature = _b64decode(sig_part)
    if len(signature) != _SIG_BYTES:
        raise AuthError(AuthReason.MALFORMED, "the signature has the wrong length")
    if not hmac.compare_digest(signature, _sign(key, payload_part)):
        raise AuthError(AuthReason.BAD_SIGNATURE, "the signature does not match")
    try:
        payload = json.loads(payload_bytes, parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError included
        raise AuthError(AuthReason.MALFORMED, "the payload is not JSON") from None
    claims = _claims(payload)
    if moment >= claims.exp:
        raise AuthError(AuthReason.EXPIRED, "the token has expired")
    if claims.iat > moment + CLOCK_SKEW:
        raise AuthError(AuthReason.NOT_YET_VALID, "the token was issued in the future")
    return claims


def require(claims: Claims, grant: str, space: str | None = None) -> None:
    """Raise Forbidden unless ``claims`` allow ``grant`` (on ``space``, if the action has one).

    A token restricted to a space is good for that space only: it is refused for other
    spaces and for actions on no particular space (``space`` None).
    """
    if not claims.has(grant):
        raise Forbidden(ForbiddenReason.MISSING_GRANT, f"the token lacks the {grant!r} grant")
    if claims.space is not None and claims.space != space:
        where = "actions outside it" if space is None else repr(space)
        raise Forbidden(
            ForbiddenReason.WRONG_SPACE, f"the token is for space {claims.space!r}, not {where}"
        )


# --------------------------------------------------------------------------- dev mode / secrets


class DevIssuer:
    """Mints tokens for local runs and tests: ordinary grants, plus moderate/admin on request."""

    def __init__(self, secret: bytes, *, ttl: float = DEV_TOKEN_TTL) -> None:
        self.secret = _check_secret(secret)
        self.ttl = ttl

    def token(
        self,
        sub: str,
        *,
        space: str | None = None,
        moderator: bool = False,
        admin: bool = False,
        extra: Iterable[str] = (),
        now: float | None = None,
    ) -> str:
        grants = set(ORDINARY_GRANTS) | set(extra)
        if moderator:
            grants.add(MODERATE)
        if admin:
            grants.add(ADMIN)
        return issue_token(self.secret, sub, grants, self.ttl, space=space, now=now)

    def verify(self, token: str, now: float | None = None) -> Claims:
        return verify_token(self.secret, token, now=now)


def is_loopback_host(name: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ::1 (IPv4-mapped too), with or without a
    port (``localhost:8080``, ``[::1]:8080``); the Host header or address of a request."""
    text = name.strip().lower()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    if text in ("localhost", "localhost."):
        return True
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


def default_secret_path(db_path: str | Path) -> Path:
    """Where the token secret lives for a database: ``<db>.secret`` next to it."""
    db = Path(db_path)
    return db.with_name(db.name + ".secret")


def load_or_create_secret(path: str | Path) -> bytes:
    """Read the secret at ``path``; if there is none, create 32 random bytes (mode 0600).

    Creation is atomic (written to a temporary file, then hard-linked into place), so two
    processes starting together end up with the same secret and never read a partial file.
    An existing file readable by group or others is refused (POSIX only).
    """
    target = Path(path)
    try:
        return _read_secret(target)
    except FileNotFoundError:
        pass
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(SECRET_BYTES))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, target)  # fails if another process won the race: use theirs
        except FileExistsError:
            pass
        else:
            _fsync_dir(target.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return _read_secret(target)


def _read_secret(path: Path) -> bytes:
    if os.name == "posix" and path.stat().st_mode & 0o077:
        raise PermissionError(f"{path} is readable by others; run: chmod 600 {path}")
    data = path.read_bytes()
    if len(data) < _MIN_SECRET_BYTES:
        raise ValueError(f"{path} holds {len(data)} bytes; a secret needs {_MIN_SECRET_BYTES}+")
    return data


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
