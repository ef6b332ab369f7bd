"""ICE settings for users behind NAT or in Docker: ICE servers, host addresses, public IP, ports.

The host-address filter and the port-range wrapper replace aioice internals; ``streamvsr.startup``
installs them.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer


def rtc_configuration(ice_servers: Sequence[dict[str, Any]]) -> RTCConfiguration:
    """Always explicit: aiortc's default contacts a public STUN server (5 s delay offline)."""
    return RTCConfiguration(
        iceServers=[
            RTCIceServer(
                urls=list(server["urls"]),
                username=server.get("username"),
                credential=server.get("credential"),
            )
            for server in ice_servers
        ]
    )


def host_address_filter(addresses: Sequence[str]) -> Callable[[bool, bool], list[str]]:
    """A stand-in for ``aioice.ice.get_host_addresses`` that offers only these addresses."""
    chosen = list(addresses)

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    return get_host_addresses


def port_range_endpoint(create_datagram_endpoint, low: int, high: int):
    """Wraps a loop's ``create_datagram_endpoint``: "any port" (0) becomes a free port in
    [low, high], tried in random order; explicit ports pass through."""

    async def endpoint_in_range(factory, local_addr=None, **kwargs):
        if local_addr is None or local_addr[1] != 0:
            return await create_datagram_endpoint(factory, local_addr=local_addr, **kwargs)
        ports = list(range(low, high + 1))
        random.shuffle(ports)
        for port in ports:
            try:
                return await create_datagram_endpoint(
                    factory, local_addr=(local_addr[0], port), **kwargs
                )
            except OSError:
                continue
        raise OSError(f"no free UDP port in {low}-{high} on {local_addr[0]}")

    return endpoint_in_range


_HOST_CANDIDATE = re.compile(r"^a=candidate:(\S+) (\d+) (\S+) (\d+) (\S+) (\d+) typ host(.*)$")


def advertise_public_ip(sdp: str, public_ip: str | None) -> str:
    """Add a copy of every host candidate with the public IP (1:1 NAT, Docker port mapping)."""
    if not public_ip:
        return sdp
    lines = []
    for line in sdp.splitlines():
        lines.append(line)
        match = _HOST_CANDIDATE.match(line)
        if match:
            foundation, component, transport, priority, _, port, rest = match.groups()
            lines.append(
                f"a=candidate:{foundation}p {component} {transport} {int(priority) - 1} "
                f"{public_ip} {port} typ host{rest}"
            )
    return "\r\n".join(lines) + "\r\n"


def link_headers(ice_servers: Sequence[dict[str, Any]]) -> list[str]:
    """``Link: <url>; rel="ice-server"`` values for a WHIP/WHEP answer (RFC 9725 section 4.6)."""
    links = []
    for server in ice_servers:
        for url in server["urls"]:
            link = f'<{url}>; rel="ice-server"'
            if server.get("username"):
                link += f'; username="{server["username"]}"; credential="{server["credential"]}"'
                link += '; credential-type="password"'
            links.append(link)
    return links
