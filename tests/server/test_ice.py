"""ICE helpers (server/ice.py): configuration, Link headers, public-IP candidates, host addresses
and the UDP port range, on loopback only."""

from __future__ import annotations

import asyncio
import socket

import aioice
import pytest

from streamvsr import startup
from streamvsr.server.ice import (
    advertise_public_ip,
    host_address_filter,
    link_headers,
    port_range_endpoint,
    rtc_configuration,
)

TURN = {
    "urls": ["turn:turn.example:3478", "turns:turn.example:5349"],
    "username": "u",
    "credential": "p",
}
STUN = {"urls": ["stun:stun.example:3478"]}
SRFLX = "a=candidate:def 1 udp 1694498815 198.51.100.1 40000 typ srflx raddr 172.17.0.2 rport 9"

ANSWER = "\r\n".join(
    [
        "v=0",
        "m=video 40000 UDP/TLS/RTP/SAVPF 96",
        "a=candidate:abc 1 udp 2130706431 172.17.0.2 40000 typ host",
        SRFLX,
        "a=candidate:ghi 1 tcp 1518280447 172.17.0.2 9 typ host tcptype active",
        "a=end-of-candidates",
        "",
    ]
)


def test_rtc_configuration_lists_exactly_the_configured_servers() -> None:
    assert rtc_configuration([]).iceServers == []
    turn, stun = rtc_configuration([TURN, STUN]).iceServers
    assert (turn.urls, turn.username, turn.credential) == (TURN["urls"], "u", "p")
    assert (stun.urls, stun.username, stun.credential) == (STUN["urls"], None, None)


def test_link_headers_give_one_link_per_url_with_credentials() -> None:
    assert link_headers([]) == []
    assert link_headers([STUN, TURN]) == [
        '<stun:stun.example:3478>; rel="ice-server"',
        '<turn:turn.example:3478>; rel="ice-server"; username="u"; credential="p"; '
        'credential-type="password"',
        '<turns:turn.example:5349>; rel="ice-server"; username="u"; credential="p"; '
        'credential-type="password"',
    ]


@pytest.mark.parametrize("public_ip", [None, ""])
def test_without_a_public_ip_the_sdp_is_unchanged(public_ip: str | None) -> None:
    assert advertise_public_ip(ANSWER, public_ip) is ANSWER


def test_each_host_candidate_gets_a_public_twin_just_below_it() -> None:
    lines = advertise_public_ip(ANSWER, "203.0.113.7").split("\r\n")
    assert lines == [
        "v=0",
        "m=video 40000 UDP/TLS/RTP/SAVPF 96",
        "a=candidate:abc 1 udp 2130706431 172.17.0.2 40000 typ host",
        "a=candidate:abcp 1 udp 2130706430 203.0.113.7 40000 typ host",
        SRFLX,
        "a=candidate:ghi 1 tcp 1518280447 172.17.0.2 9 typ host tcptype active",
        "a=candidate:ghip 1 tcp 1518280446 203.0.113.7 9 typ host tcptype active",
        "a=end-of-candidates",
        "",
    ]


def test_the_host_address_filter_offers_only_the_chosen_addresses_per_family() -> None:
    get_host_addresses = host_address_filter(["10.0.0.5", "fd00::5", "127.0.0.1"])
    assert get_host_addresses(True, True) == ["10.0.0.5", "fd00::5", "127.0.0.1"]
    assert get_host_addresses(True, False) == ["10.0.0.5", "127.0.0.1"]
    assert get_host_addresses(False, True) == ["fd00::5"]
    assert get_host_addresses(False, False) == []
    assert host_address_filter([])(True, True) == []


def free_udp_ports(count: int) -> list[int]:
    """Ports that were free a moment ago (the OS hands out fresh ones)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


async def test_any_port_becomes_a_port_of_the_range_and_explicit_ports_pass() -> None:
    loop = asyncio.get_running_loop()
    [port, other] = free_udp_ports(2)
    endpoint = port_range_endpoint(loop.create_datagram_endpoint, port, port)
    transport, _ = await endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    explicit, _ = await endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", other))
    try:
        assert transport.get_extra_info("sockname")[1] == port
        assert explicit.get_extra_info("sockname")[1] == other
    finally:
        transport.close()
        explicit.close()


async def test_a_full_port_range_is_an_error_that_names_it() -> None:
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        endpoint = port_range_endpoint(loop.create_datagram_endpoint, port, port)
        with pytest.raises(OSError, match=f"no free UDP port in {port}-{port} on 127.0.0.1"):
            await endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))


async def test_installed_ice_patches_shape_the_candidates_aioice_gathers() -> None:
    """The loopback_ice fixture is active: the only host address is 127.0.0.1."""
    ports = free_udp_ports(3)
    low, high = min(ports), max(ports)
    loop = asyncio.get_running_loop()  # a fresh loop per test: the patch goes with it
    original = loop.create_datagram_endpoint
    for _ in range(2):  # a second install replaces the first instead of wrapping it
        startup.install(host_addresses=["127.0.0.1"], udp_ports=(low, high))
    assert loop.create_datagram_endpoint.unpatched == original
    connection = aioice.Connection(ice_controlling=True)
    try:
        await connection.gather_candidates()
        candidates = connection.local_candidates
        assert [c.host for c in candidates] == ["127.0.0.1"]
        assert low <= candidates[0].port <= high
    finally:
        await connection.close()
