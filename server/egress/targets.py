"""Where forwards may send a stream: RTMP(S) push URLs and WHIP endpoints (http, https), checked
once for the settings and the API alike, and shown in logs and answers without their secrets.

No heavy imports here: ``server/settings.py`` uses these checks.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from streamvsr.engine.options import yaml_value

RTMP_SCHEMES = ("rtmp", "rtmps")
WHIP_SCHEMES = ("http", "https")
DEFAULT_PORTS = {"rtmp": 1935, "rtmps": 443, "http": 80, "https": 443}
KINDS_TEXT = "an rtmp:// or rtmps:// (RTMP push) or http:// or https:// (WHIP) URL"
Forwards = tuple[tuple[str, tuple[str, ...]], ...]


def forward_url(value: Any) -> str:
    """A forward's target: ``rtmp[s]://host[:port]/app/key`` or a WHIP endpoint,
    ``http[s]://[user:password@]host[:port]/path``."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be {KINDS_TEXT}")
    if any(c.isspace() or ord(c) < 32 for c in value):
        raise ValueError("a forward URL must not hold spaces or control characters")
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        shown = f"{parts.scheme}://" if parts.scheme else "no scheme"
        raise ValueError(f"must be {KINDS_TEXT}, not {shown[:20]}")
    try:
        parts.port  # noqa: B018 - raises for a port that is not a number 0-65535
    except ValueError:
        raise ValueError("a forward URL's port must be a number 1-65535") from None
    if not parts.hostname:
        raise ValueError(f"a forward URL needs a host ({scheme}://host/...)")
    if scheme in RTMP_SCHEMES and not parts.path.strip("/"):
        raise ValueError("an RTMP URL needs an application path (rtmp://host/app/key)")
    return value


def is_whip(url: str) -> bool:
    return urlsplit(url).scheme.lower() in WHIP_SCHEMES


def host_and_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or DEFAULT_PORTS[parts.scheme.lower()]


def redact(url: str) -> str:
    """``url`` for logs and answers, without what is as good as a password at most services:
    RTMP: scheme, host, port and application, not the stream key; WHIP: scheme, host and port,
    not the path (some services put the key there), a query or user:password."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    if parts.scheme.lower() in WHIP_SCHEMES:
        hidden = "***" if parts.path.strip("/") or parts.query or "@" in parts.netloc else ""
        return f"{parts.scheme}://{host}{port}/{hidden}"
    app, _, rest = parts.path.strip("/").partition("/")
    hidden = "/***" if rest or parts.query else ""
    return f"{parts.scheme}://{host}{port}/{app}{hidden}"


def forward_map(value: Any) -> Forwards:
    """The ``forward`` setting: {stream: [URL, ...]} (YAML text on the command line)."""
    value = yaml_value(value)
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise ValueError("must be a mapping {stream: [rtmp://host/app/key, https://host/whip]}")
    result = []
    for stream, urls in value.items():
        if not isinstance(stream, str) or not stream:
            raise ValueError(f"stream names must be strings, got {stream!r}")
        if isinstance(urls, str):
            urls = [urls]
        if not isinstance(urls, list):
            raise ValueError(f"stream {stream!r}: must be a list of URLs ({KINDS_TEXT})")
        checked = []
        for url in urls:
            try:
                checked.append(forward_url(url))
            except ValueError as exc:
                raise ValueError(f"stream {stream!r}: {exc}") from None
        result.append((stream, tuple(dict.fromkeys(checked))))
    return tuple(result)
