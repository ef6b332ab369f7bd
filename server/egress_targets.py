"""Where egresses may send a stream (``server.egress``): RTMP(S) push URLs, checked once for the
settings and the API alike, and shown in logs and answers without their stream key.

No heavy imports here: ``server/settings.py`` uses these checks.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from streamvsr.engine.options import yaml_value

RTMP_SCHEMES = ("rtmp", "rtmps")
DEFAULT_PORTS = {"rtmp": 1935, "rtmps": 443}
Forwards = tuple[tuple[str, tuple[str, ...]], ...]


def rtmp_url(value: Any) -> str:
    """An RTMP push URL: ``rtmp://host[:port]/app/key`` or ``rtmps://...``."""
    if not isinstance(value, str) or not value:
        raise ValueError("must be an rtmp:// or rtmps:// URL")
    if any(c.isspace() or ord(c) < 32 for c in value):
        raise ValueError("an RTMP URL must not hold spaces or control characters")
    parts = urlsplit(value)
    if parts.scheme.lower() not in RTMP_SCHEMES:
        scheme = f"{parts.scheme}://" if parts.scheme else "no scheme"
        raise ValueError(f"must be an rtmp:// or rtmps:// URL, not {scheme[:20]}")
    try:
        parts.port  # noqa: B018 - raises for a port that is not a number 0-65535
    except ValueError:
        raise ValueError("an RTMP URL's port must be a number 1-65535") from None
    if not parts.hostname:
        raise ValueError("an RTMP URL needs a host (rtmp://host/app/key)")
    if not parts.path.strip("/"):
        raise ValueError("an RTMP URL needs an application path (rtmp://host/app/key)")
    return value


def host_and_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or DEFAULT_PORTS[parts.scheme.lower()]


def redact(url: str) -> str:
    """``url`` for logs and answers: scheme, host, port and application, not the stream key (nor
    user:password or a query), which are as good as a password at most services."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    app, _, rest = parts.path.strip("/").partition("/")
    hidden = "/***" if rest or parts.query else ""
    return f"{parts.scheme}://{host}{port}/{app}{hidden}"


def forward_map(value: Any) -> Forwards:
    """The ``forward`` setting: {stream: [rtmp://..., ...]} (YAML text on the command line)."""
    value = yaml_value(value)
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise ValueError("must be a mapping {stream: [rtmp://host/app/key, ...]}")
    result = []
    for stream, urls in value.items():
        if not isinstance(stream, str) or not stream:
            raise ValueError(f"stream names must be strings, got {stream!r}")
        if isinstance(urls, str):
            urls = [urls]
        if not isinstance(urls, list):
            raise ValueError(f"stream {stream!r}: must be a list of rtmp:// or rtmps:// URLs")
        checked = []
        for url in urls:
            try:
                checked.append(rtmp_url(url))
            except ValueError as exc:
                raise ValueError(f"stream {stream!r}: {exc}") from None
        result.append((stream, tuple(dict.fromkeys(checked))))
    return tuple(result)
