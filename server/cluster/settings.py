"""The ``cluster`` section of the settings, each declared once (see ``setting``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streamvsr.engine.options import non_empty_str, optional_str, setting
from streamvsr.server.settings import positive_seconds


def optional_http_url(value: Any) -> str | None:
    value = optional_str(value)
    if value is not None and not value.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL (or null)")
    return value.rstrip("/") if value else value


def optional_redis_url(value: Any) -> str | None:
    value = optional_str(value)
    if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("must be a redis://, rediss:// or unix:// URL, or null (one node)")
    return value


@dataclass(frozen=True)
class ClusterSettings:
    redis_url: str | None = setting(
        None,
        "Redis that the nodes of a cluster share (redis://host:6379/0); null: a single node",
        optional_redis_url,
    )
    node_id: str | None = setting(
        None, "this node's name in the cluster (null: host name and port)", optional_str
    )
    advertise_url: str | None = setting(
        None,
        "the URL clients and the other nodes reach this node at (http://10.0.0.5:8080); needed "
        "with redis_url unless server.host is a reachable address",
        optional_http_url,
    )
    key_prefix: str = setting("streamvsr", "prefix of this cluster's Redis keys", non_empty_str)
    heartbeat_s: float = setting(
        1, "how often a node writes its slots and load to Redis", positive_seconds
    )
    node_timeout_s: float = setting(
        5,
        "a node whose heartbeat is older than this gets no new sessions, and its streams are "
        "forgotten",
        positive_seconds,
    )
    reservation_s: float = setting(
        10,
        "a slot chosen for a redirected or proxied client is held for it this long",
        positive_seconds,
    )
    drain_grace_s: float = setting(
        600,
        "a draining node (streamvsr drain) exits when its sessions have ended, or after this long",
        positive_seconds,
    )
