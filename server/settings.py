"""The server's settings, each declared once (see ``streamvsr.engine.options.setting``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streamvsr.engine.options import (
    choice,
    non_empty_str,
    non_negative,
    non_negative_int,
    optional_str,
    positive_int,
    setting,
    str_list,
    yaml_value,
)

from .access import DEFAULT_USERS, Network, User, networks, user_list
from .egress.targets import forward_map

X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow")


def port_number(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError("must be a port number 0-65535")
    return value


def positive_seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError("must be a number of seconds > 0")
    return value


def ice_server_list(value: Any) -> tuple[dict[str, Any], ...]:
    """[{urls: stun:host:3478}, {urls: [turn:...], username: u, credential: p}]; a flag's value
    is YAML text."""
    value = yaml_value(value)
    if isinstance(value, (str, dict)):
        value = [value]
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError("must be a list of {urls, username, credential} entries")
    return tuple(_ice_server(entry) for entry in value)


def address_ranges(value: Any) -> tuple[Network, ...]:
    return networks(str_list(value))


def _ice_server(entry: Any) -> dict[str, Any]:
    if isinstance(entry, str):
        entry = {"urls": entry}
    if not isinstance(entry, dict) or "urls" not in entry:
        raise ValueError("each entry needs urls (e.g. stun:stun.example.org:3478)")
    unknown = set(entry) - {"urls", "username", "credential"}
    if unknown:
        raise ValueError(f"unknown ICE server fields {sorted(unknown)}")
    urls = [entry["urls"]] if isinstance(entry["urls"], str) else list(entry["urls"])
    if not all(
        isinstance(u, str) and u.split(":", 1)[0] in ("stun", "turn", "turns") for u in urls
    ):
        raise ValueError(f"ICE server urls must start with stun:, turn: or turns:, got {urls}")
    return {**entry, "urls": urls}


@dataclass(frozen=True)
class ServerSettings:
    host: str = setting(
        "127.0.0.1",
        "address to listen on; 0.0.0.0 accepts other machines (then serve HTTPS: browsers allow "
        "the camera only on https:// or localhost)",
        non_empty_str,
    )
    port: int = setting(8080, "TCP port", port_number)
    tls_cert: str | None = setting(
        None, "PEM certificate: serve HTTPS (with tls_key)", optional_str
    )
    tls_key: str | None = setting(None, "PEM private key of tls_cert", optional_str)
    max_sessions: int = setting(
        8,
        "concurrent engine sessions (pages and WHIP publishers); beyond it: 503 + Retry-After",
        positive_int,
    )
    max_viewers: int = setting(
        32,
        "concurrent WHEP viewers in all, apart from max_sessions (a stream's viewers share its "
        "encoder: each costs its packets, ~1% of a core at 640x360); beyond it: 503 + Retry-After",
        positive_int,
    )
    max_viewers_per_stream: int = setting(
        32, "concurrent WHEP viewers of one stream; beyond it: 503 + Retry-After", positive_int
    )
    max_batch: int = setting(
        8,
        "frames of different sessions run as one batched engine step, at most this many",
        positive_int,
    )
    max_wait_ms: float = setting(
        0,
        "how long the GPU worker waits for more sessions' frames before a step (0: never)",
        non_negative,
    )
    max_input_width: int = setting(
        1280, "wider input frames are downscaled (keeping aspect) before the engine", positive_int
    )
    max_input_height: int = setting(
        720, "taller input frames are downscaled (keeping aspect) before the engine", positive_int
    )
    max_output_pixels: int = setting(
        2560 * 1440,
        "output pixels per frame of a session (2560x1440: 640x360 input at 4x); larger input is "
        "downscaled (keeping aspect) to fit before the engine",
        positive_int,
    )
    max_body_bytes: int = setting(
        65536, "largest accepted request body (SDP offers are a few KB)", positive_int
    )
    request_timeout_s: float = setting(
        10,
        "a request body not received within this long is refused (408), so that clients that "
        "trickle bytes hold no connection; aiohttp has no timeout for the headers",
        positive_seconds,
    )
    idle_timeout_s: float = setting(
        15,
        "a session whose media stops for this long (or whose ICE fails) is closed",
        non_negative,
    )
    handshake_timeout_s: float = setting(
        10,
        "a session whose ICE and DTLS have not connected this long after its offer is closed "
        "(like MediaMTX's webrtcHandshakeTimeout), so that offers that never connect free their "
        "place",
        positive_seconds,
    )
    viewer_timeout_s: float = setting(
        10,
        "a WHEP viewer from which nothing (RTCP receiver reports) arrives for this long is "
        "closed and its place freed (0: never, for players that send no RTCP)",
        non_negative,
    )
    users: tuple[User, ...] = setting(
        DEFAULT_USERS,
        "who may do what (README: Access): a list of {name, token, ips, permissions}; name any "
        "is everyone, another user needs its token (sha256:<digest>, from `streamvsr token`); "
        "ips limits a user to address ranges; permissions: publish and read (with streams: a "
        "name pattern), upscale (the page), api, metrics. The default: anyone may publish, "
        "read and upscale, and only this machine may read the api and metrics",
        user_list,
    )
    whip_token: str | None = setting(
        None,
        "shorthand: WHIP publishers must send this Bearer token (plain, or sha256:<digest>), and "
        "no user of users may publish without it; null: users alone decide",
        optional_str,
    )
    allowed_hosts: tuple[str, ...] = setting(
        [],
        "host names the server answers to besides localhost and IP addresses (a Host header "
        "naming another is refused with 421, against DNS rebinding); .example.org: it and its "
        "subdomains; *: any",
        str_list,
    )
    cors_origins: tuple[str, ...] = setting(
        [],
        "web origins (https://player.example.org) whose pages may call WHIP and WHEP from the "
        "browser; []: the server's own pages only; *: any",
        str_list,
    )
    trusted_proxies: tuple[Network, ...] = setting(
        [],
        "reverse proxies (addresses or ranges) whose X-Forwarded-For names the client: behind "
        "one, every request would else come from the proxy's address",
        address_ranges,
    )
    ice_servers: tuple[dict[str, Any], ...] = setting(
        [],
        "STUN/TURN servers for NAT traversal, e.g. [{urls: stun:stun.l.google.com:19302}, "
        "{urls: turn:turn.example.org:3478, username: user, credential: secret}]",
        ice_server_list,
    )
    ice_host_addresses: tuple[str, ...] = setting(
        [],
        "local addresses to offer as ICE host candidates, comma-separated on the command line "
        "([]: all but loopback)",
        str_list,
    )
    public_ip: str | None = setting(
        None,
        "public IP to advertise in ICE candidates (1:1 NAT, Docker port mapping)",
        optional_str,
    )
    udp_port_min: int = setting(
        0,
        "lowest UDP port for media (0 and 0: any port); open the range in the firewall or "
        "publish it from Docker",
        port_number,
    )
    udp_port_max: int = setting(0, "highest UDP port for media (0 and 0: any port)", port_number)
    video_codec: str = setting(
        "h264",
        "outgoing video codec, preferred when the peer offers it: h264 or vp8",
        choice("h264", "vp8"),
    )
    h264_encoder: str = setting(
        "auto",
        "auto (NVENC on the GPU if it opens, else x264), x264, or nvenc (refuse to start "
        "without it)",
        choice("auto", "x264", "nvenc"),
    )
    x264_preset: str = setting(
        "veryfast",
        "x264 preset: ultrafast, superfast, veryfast, faster, fast, medium or slow",
        choice(*X264_PRESETS),
    )
    min_bitrate: int = setting(1_000_000, "lowest outgoing video bitrate (bit/s)", positive_int)
    start_bitrate: int = setting(
        4_000_000, "outgoing video bitrate at the start (bit/s)", positive_int
    )
    max_bitrate: int = setting(12_000_000, "highest outgoing video bitrate (bit/s)", positive_int)
    viewer_bitrate: int = setting(
        0,
        "video bitrate for every viewer of a stream, who share one encoder per codec (bit/s); "
        "0: follow the most constrained viewer's receive estimate (REMB), within "
        "min_bitrate..max_bitrate",
        non_negative_int,
    )
    encoder_threads: int = setting(
        4,
        "most threads of each x264 encoder; it takes one per 960x540 of output, so that large "
        "frames encode in parallel slices (0: x264's choice, 1.5 per core, each encoder)",
        non_negative_int,
    )
    record_dir: str | None = setting(
        None,
        "folder of recordings (POST /api/streams/{stream}/record, record_streams): "
        "{stream}-{UTC time}.mp4, the upscaled video (H.264) with the audio (AAC) as fragmented "
        "MP4, playable up to its last fragment even if the server dies; null: no recording",
        optional_str,
    )
    record_streams: tuple[str, ...] = setting(
        [],
        "streams recorded (to record_dir) while they are published: name patterns (* and ?), "
        "comma-separated on the command line",
        str_list,
    )
    forward: tuple[tuple[str, tuple[str, ...]], ...] = setting(
        {},
        "streams forwarded, upscaled and with their audio, while they are published: {stream: "
        "[rtmp://host/app/key, https://host/whip/name, ...]} (YAML text on the command line): "
        "rtmp:// and rtmps:// by RTMP push, http:// and https:// to a WHIP endpoint "
        "(https://user:password@...: Basic, https://:token@...: Bearer); a target that refuses, "
        "drops or stalls is retried (1 s .. 30 s)",
        forward_map,
    )
    egress_bitrate: int = setting(
        6_000_000, "video bitrate of recordings and RTMP forwards (bit/s)", positive_int
    )
