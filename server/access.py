"""Who may do what: users, their tokens and addresses, and per-action permissions.

The model follows MediaMTX's internal users. A request asks for an *action* (publish a stream by
WHIP, read one by WHEP, upscale the page's camera, read the API or the metrics), on a stream name
for publish and read. It is allowed when some user grants that action on that stream to a request
like this one: the user ``any`` matches every request, another user one that carries its token
(``Authorization: Bearer <token>``, or Basic with the user's name and the token as password), and
a user with ``ips`` only requests from those address ranges.

Tokens are stored as SHA-256 digests: they are long random secrets (``streamvsr token`` makes
them), so a fast hash is as safe as a slow one here and costs the event loop nothing.

A session's own URL (``/whip/{stream}/{id}``) is a capability: its id is 122 random bits that only
the client that created the session is told, so DELETE and PATCH on it need nothing more.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from fnmatch import fnmatchcase
from typing import Any

from streamvsr.engine.options import yaml_value

ANYONE = "any"
HASH_PREFIX = "sha256:"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Action(str, Enum):
    PUBLISH = "publish"  # WHIP ingest of a stream
    READ = "read"  # WHEP playback of a stream
    UPSCALE = "upscale"  # the page: send a camera, get it back upscaled (POST /offer)
    API = "api"  # /api/stats, the details of /readyz
    METRICS = "metrics"  # /metrics

    @property
    def on_streams(self) -> bool:
        return self in (Action.PUBLISH, Action.READ)


@dataclass(frozen=True)
class Permission:
    action: Action
    streams: str = "*"  # a glob of stream names (publish and read only)

    def covers(self, action: Action, stream: str | None) -> bool:
        return action is self.action and (stream is None or fnmatchcase(stream, self.streams))


@dataclass(frozen=True)
class User:
    name: str
    token_digest: bytes | None = None  # None: the user ``any``, who needs no token
    networks: tuple[Network, ...] = ()  # empty: every address
    permissions: tuple[Permission, ...] = ()

    def grants(self, action: Action, stream: str | None, address: Address | None) -> bool:
        if self.networks and not (address and any(address in n for n in self.networks)):
            return False
        return any(p.covers(action, stream) for p in self.permissions)


@dataclass(frozen=True)
class Credentials:
    token: bytes
    name: str | None = None  # Basic authentication names its user


def hash_token(token: str) -> str:
    """What the settings store for ``token``."""
    return HASH_PREFIX + hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def matches(user: User, credentials: Credentials | None) -> bool:
    """Whether a request with these credentials is this user's."""
    if user.token_digest is None:
        return True
    if credentials is None or credentials.name not in (None, user.name):
        return False
    return hmac.compare_digest(hashlib.sha256(credentials.token).digest(), user.token_digest)


def credentials_of(authorization: str | None) -> Credentials | None:
    """The token of an ``Authorization`` header (Bearer, or Basic name:token); None without one.
    A header that is neither gives credentials that match no user."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    # As bytes: a header may hold non-ASCII text (or surrogates for undecodable bytes).
    raw = value.strip().encode("utf-8", "surrogatepass")
    if scheme.lower() == "basic":
        try:
            name, _, token = base64.b64decode(raw, validate=True).partition(b":")
            return Credentials(token, name.decode())
        except (binascii.Error, UnicodeDecodeError):
            return Credentials(b"", "\0")
    return Credentials(raw if scheme.lower() == "bearer" else b"", None)


# --- settings -------------------------------------------------------------------------------

DEFAULT_USERS = [
    {"name": ANYONE, "permissions": ["publish", "read", "upscale"]},
    {"name": ANYONE, "ips": ["127.0.0.1", "::1"], "permissions": ["api", "metrics"]},
]
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_USER_KEYS = {"name", "token", "ips", "permissions"}


def user_list(value: Any) -> tuple[User, ...]:
    """The ``users`` setting; a flag's or variable's value is YAML text."""
    value = yaml_value(value)
    if not isinstance(value, list):
        raise ValueError("must be a list of users: {name, token, ips, permissions}")
    return tuple(_user(entry, n) for n, entry in enumerate(value))


def _user(entry: Any, n: int) -> User:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ValueError(f"user {n} must be a mapping with a name (any: everyone)")
    name = entry["name"]
    unknown = set(entry) - _USER_KEYS
    if unknown:
        raise ValueError(f"user {name!r} has unknown fields {sorted(unknown)}")
    return User(
        name,
        token_digest(entry.get("token"), name),
        networks(_list(entry.get("ips"), name, "ips")),
        tuple(_permission(p, name) for p in _list(entry.get("permissions"), name, "permissions")),
    )


def token_digest(token: Any, name: str) -> bytes | None:
    """A user's stored token: ``sha256:<64 hex digits>`` (``streamvsr token`` prints it)."""
    if name == ANYONE:
        if token is not None:
            raise ValueError("the user 'any' is everyone and has no token")
        return None
    if not isinstance(token, str) or not _DIGEST.fullmatch(token):
        raise ValueError(
            f"user {name!r} needs a token stored as sha256:<64 hex digits>; run "
            "`streamvsr token` for a new token and its digest"
        )
    return bytes.fromhex(token.removeprefix(HASH_PREFIX))


def networks(texts: Iterable[Any]) -> tuple[Network, ...]:
    """Address ranges: 10.0.0.0/8, 192.168.1.7, ::1."""
    result = []
    for text in texts:
        try:
            result.append(ipaddress.ip_network(str(text), strict=False))
        except ValueError:
            raise ValueError(f"{text!r} is not an IP address or range (10.0.0.0/8)") from None
    return tuple(result)


def _permission(entry: Any, user: str) -> Permission:
    if isinstance(entry, str):
        entry = {"action": entry}
    if not isinstance(entry, dict) or set(entry) - {"action", "streams"}:
        raise ValueError(f"user {user!r}: a permission is an action or {{action, streams}}")
    try:
        action = Action(entry.get("action"))
    except ValueError:
        raise ValueError(
            f"user {user!r}: unknown action {entry.get('action')!r}; actions: "
            + ", ".join(a.value for a in Action)
        ) from None
    streams = entry.get("streams", "*")
    if not isinstance(streams, str) or (streams != "*" and not action.on_streams):
        raise ValueError(
            f"user {user!r}: streams is a name pattern (studio-*), and only for publish and read"
        )
    return Permission(action, streams)


def _list(value: Any, user: str, key: str) -> Sequence[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"user {user!r}: {key} must be a list")
    return value


def policy(users: tuple[User, ...], whip_token: str | None) -> Policy:
    return Policy(with_publish_token(users, whip_token) if whip_token else users)


def with_publish_token(users: Iterable[User], token: str) -> tuple[User, ...]:
    """``whip_token``'s meaning: publishing needs that token (no one else may publish)."""
    digest = (
        bytes.fromhex(token.removeprefix(HASH_PREFIX))
        if _DIGEST.fullmatch(token)
        else hashlib.sha256(token.encode()).digest()
    )
    kept = tuple(
        User(u.name, u.token_digest, u.networks,
             tuple(p for p in u.permissions if p.action is not Action.PUBLISH))
        for u in users
    )  # fmt: skip
    return (*kept, User("whip_token", digest, (), (Permission(Action.PUBLISH),)))


# --- decisions ------------------------------------------------------------------------------


class Denied(Exception):
    """401: no user matches the request's credentials (or it has none); 403: its user may not."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass(frozen=True)
class Policy:
    users: tuple[User, ...]

    def allows(self, action: Action, stream: str | None, credentials, address) -> bool:
        return any(
            matches(u, credentials) and u.grants(action, stream, address) for u in self.users
        )

    def check(
        self, action: Action, stream: str | None, credentials: Credentials | None,
        address: Address | None,
    ) -> None:  # fmt: skip
        if self.allows(action, stream, credentials, address):
            return
        what = f"{action.value}" + (f" stream {stream!r}" if stream else "")
        known = [u for u in self.users if u.token_digest is not None and matches(u, credentials)]
        if credentials is None or not known:
            given = "no token" if credentials is None else "a token that matches no user"
            raise Denied(401, f"{what} needs a user's token; the request has {given}")
        names = ", ".join(sorted({u.name for u in known}))
        raise Denied(403, f"user {names} may not {what} from {address or 'this address'}")
