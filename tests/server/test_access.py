"""Who may do what (README: Access): users with hashed tokens, per-action and per-stream
permissions, address ranges, the API and metrics local by default, allowed host names, CORS
origins, and session URLs as their own secret."""

from __future__ import annotations

import base64
import subprocess
import sys

import pytest
from support.webrtc import client_pc, make_offer, offer_json, problem_of, running_server

from streamvsr.config import ConfigError, load_settings
from streamvsr.engine import BicubicEngine
from streamvsr.server.access import (
    DEFAULT_USERS,
    Action,
    Credentials,
    Denied,
    hash_token,
    policy,
    user_list,
)

SDP = "application/sdp"
OBS_TOKEN, VIEWER_TOKEN = "obs-secret-token", "viewer-secret-token"
REMOTE = "203.0.113.7"  # a client elsewhere, as a trusted proxy on 127.0.0.1 names it
USERS = [
    {"name": "obs", "token": hash_token(OBS_TOKEN),
     "permissions": [{"action": "publish", "streams": "studio-*"}]},
    {"name": "viewer", "token": hash_token(VIEWER_TOKEN), "ips": ["203.0.113.0/24"],
     "permissions": ["read", "upscale"]},
    {"name": "any", "ips": ["127.0.0.1"], "permissions": ["api", "metrics"]},
]  # fmt: skip


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(name: str, token: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{token}".encode()).decode()}


def from_remote(address: str = REMOTE) -> dict[str, str]:
    return {"X-Forwarded-For": address}


# --- the policy ------------------------------------------------------------------------------


def decide(users, action, stream=None, credentials=None, address="127.0.0.1", whip_token=None):
    import ipaddress

    try:
        policy(user_list(users), whip_token).check(
            Action(action), stream, credentials, ipaddress.ip_address(address)
        )
        return 200
    except Denied as denied:
        return denied.status


def test_default_users_let_anyone_stream_and_only_this_machine_read_api_and_metrics() -> None:
    for action in ("publish", "read", "upscale"):
        assert decide(DEFAULT_USERS, action, "cam" if action != "upscale" else None,
                      address=REMOTE) == 200  # fmt: skip
    for action in ("api", "metrics"):
        assert decide(DEFAULT_USERS, action, address="127.0.0.1") == 200
        assert decide(DEFAULT_USERS, action, address="::1") == 200
        assert decide(DEFAULT_USERS, action, address=REMOTE) == 401


def test_tokens_streams_and_addresses() -> None:
    obs = Credentials(OBS_TOKEN.encode())
    assert decide(USERS, "publish", "studio-1", obs) == 200
    assert decide(USERS, "publish", "other", obs) == 403  # a known user, not this stream
    assert decide(USERS, "publish", "studio-1") == 401  # no token
    assert decide(USERS, "publish", "studio-1", Credentials(b"guess")) == 401
    assert decide(USERS, "read", "studio-1", obs) == 403
    viewer = Credentials(VIEWER_TOKEN.encode())
    assert decide(USERS, "read", "studio-1", viewer, address=REMOTE) == 200
    assert decide(USERS, "read", "studio-1", viewer, address="198.51.100.1") == 403
    # Basic authentication: the user's name and its token; another user's name does not match.
    assert decide(USERS, "upscale", None, Credentials(VIEWER_TOKEN.encode(), "viewer"),
                  address=REMOTE) == 200  # fmt: skip
    assert decide(USERS, "upscale", None, Credentials(VIEWER_TOKEN.encode(), "obs"),
                  address=REMOTE) == 401  # fmt: skip


def test_whip_token_is_shorthand_for_a_publisher_and_no_anonymous_publishing() -> None:
    assert decide(DEFAULT_USERS, "publish", "cam", whip_token="t0ken") == 401
    assert decide(DEFAULT_USERS, "publish", "cam", Credentials(b"t0ken"), whip_token="t0ken") == 200
    assert decide(DEFAULT_USERS, "read", "cam", whip_token="t0ken") == 200
    hashed = hash_token("t0ken")  # stored hashed works too
    assert decide(DEFAULT_USERS, "publish", "cam", Credentials(b"t0ken"), whip_token=hashed) == 200


@pytest.mark.parametrize(
    ("users", "message"),
    [
        ([{"name": "obs", "token": "plain-text", "permissions": ["publish"]}], "sha256:"),
        ([{"name": "any", "token": hash_token("x"), "permissions": ["read"]}], "no token"),
        ([{"name": "any", "permissions": ["delete"]}], "unknown action 'delete'"),
        ([{"name": "any", "permissions": [{"action": "api", "streams": "a*"}]}], "streams"),
        ([{"name": "any", "ips": ["10.0.0.0/33"], "permissions": ["read"]}], "10.0.0.0/33"),
        ([{"name": "any", "password": "x"}], "unknown fields ['password']"),
        ("[{name: any, permissions: [read]", "must be YAML"),
    ],
)
def test_bad_users_are_refused_at_start_naming_the_key(users, message) -> None:
    with pytest.raises(ConfigError, match=r"server\.users") as error:
        load_settings(overrides={"server": {"users": users}})
    assert message in str(error.value)


def test_users_from_the_environment_as_yaml() -> None:
    permission = "{action: publish, streams: 'a*'}"
    users = f"[{{name: obs, token: '{hash_token('x')}', permissions: [{permission}]}}]"
    env = {"STREAMVSR_SERVER__USERS": users}
    [user] = load_settings(env=env).server.users
    assert user.name == "obs" and user.permissions[0].streams == "a*"


def test_token_command_prints_a_token_and_the_digest_the_settings_take() -> None:
    run = [sys.executable, "-m", "streamvsr", "token"]
    out = subprocess.run(run, capture_output=True, text=True, check=True).stdout
    token = out.split("token:")[1].split()[0]
    digest = out.split("digest:")[1].split()[0]
    assert len(token) >= 40 and digest == hash_token(token)
    hashed = subprocess.run([*run, "--hash"], input=token + "\n", capture_output=True,
                            text=True, check=True).stdout.strip()  # fmt: skip
    assert hashed == digest
    users = [{"name": "obs", "token": digest, "permissions": ["publish"]}]
    assert load_settings(overrides={"server": {"users": users}}).server.users[0].name == "obs"


# --- over HTTP -------------------------------------------------------------------------------


async def post_whip(server, stream: str, headers: dict[str, str]) -> tuple[int, str]:
    offer = await make_offer(video="sendonly")
    async with server.http.post(
        f"/whip/{stream}", data=offer, headers={"Content-Type": SDP, **headers}
    ) as response:
        if response.status >= 400:
            await problem_of(response)
        return response.status, response.headers.get("Location", "")


async def status_of(server, method: str, path: str, headers=None, **kwargs) -> int:
    async with server.http.request(method, path, headers=headers or {}, **kwargs) as response:
        if response.status >= 400:
            problem = await problem_of(response)
            if response.status == 401:
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert problem["detail"]
        return response.status


async def test_each_action_needs_its_permission_over_http() -> None:
    settings = {"users": USERS, "trusted_proxies": ["127.0.0.1"]}
    async with running_server(BicubicEngine("cpu"), server=settings) as server:
        # publish: only obs's token, and only on studio-* streams
        assert (await post_whip(server, "studio-1", {}))[0] == 401
        assert (await post_whip(server, "other", bearer(OBS_TOKEN)))[0] == 403
        status, location = await post_whip(server, "studio-1", bearer(OBS_TOKEN))
        assert status == 201
        # read: the viewer's token, from its own range only (409: allowed, but no publisher)
        offer = await make_offer(video="recvonly")
        whep = {"Content-Type": SDP, **bearer(VIEWER_TOKEN)}
        assert await status_of(server, "POST", "/whep/nobody", {**whep, **from_remote()},
                               data=offer) == 409  # fmt: skip
        elsewhere = {**whep, **from_remote("198.51.100.1")}
        assert await status_of(server, "POST", "/whep/nobody", elsewhere, data=offer) == 403
        assert await status_of(server, "POST", "/whep/nobody", from_remote(), data=offer) == 401
        # upscale (the page): Basic authentication works as well as Bearer
        pc = client_pc()
        pc.addTransceiver("video", direction="sendrecv")
        body = await offer_json(pc)
        await pc.close()
        assert await status_of(server, "POST", "/offer", from_remote(), json=body) == 401
        assert await status_of(server, "POST", "/offer",
                               {**basic("viewer", VIEWER_TOKEN), **from_remote()},
                               json=body) == 200  # fmt: skip
        # api and metrics: this machine only; a forged X-Forwarded-For from here names REMOTE
        for path in ("/metrics", "/api/stats"):
            assert await status_of(server, "GET", path) == 200
            assert await status_of(server, "GET", path, from_remote()) == 401
        # the session URL is its own secret: no token needed, a guessed one is 404
        guessed = location.rsplit("/", 1)[0] + "/" + "f" * 32
        assert await status_of(server, "DELETE", guessed, from_remote()) == 404
        assert await status_of(server, "DELETE", location, from_remote()) == 200


async def test_readyz_details_and_stats_only_for_the_api_or_the_pages_own_session() -> None:
    async with running_server(
        BicubicEngine("cpu"), server={"trusted_proxies": ["127.0.0.1"]}
    ) as server:
        async with server.http.get("/readyz", headers=from_remote()) as response:
            assert response.status == 200 and await response.json() == {"ready": True}
        async with server.http.get("/readyz") as response:
            assert (await response.json())["engine"] == "bicubic"
        pc = client_pc()
        pc.addTransceiver("video", direction="sendrecv")
        try:
            async with server.http.post("/offer", json=await offer_json(pc),
                                        headers=from_remote()) as response:  # fmt: skip
                session = (await response.json())["session"]
            async with server.http.get(f"/api/stats?session={session}",
                                       headers=from_remote()) as response:  # fmt: skip
                assert response.status == 200
                assert (await response.json())["session_open"] is True
            fake = f"/api/stats?session={'0' * 32}"
            assert await status_of(server, "GET", fake, from_remote()) == 401
        finally:
            await pc.close()


async def test_forged_forwarded_for_is_ignored_without_a_trusted_proxy() -> None:
    async with running_server(BicubicEngine("cpu")) as server:
        assert await status_of(server, "GET", "/metrics", from_remote()) == 200  # it is local
    settings = {"trusted_proxies": ["127.0.0.1"]}
    async with running_server(BicubicEngine("cpu"), server=settings) as server:
        # The client's own entries come first; the proxy appends the address it saw.
        forged = {"X-Forwarded-For": f"127.0.0.1, {REMOTE}"}
        assert await status_of(server, "GET", "/metrics", forged) == 401


async def test_host_names_other_than_localhost_and_addresses_are_refused() -> None:
    async with running_server(
        BicubicEngine("cpu"), server={"allowed_hosts": [".example.org"]}
    ) as server:
        port = server.url.rsplit(":", 1)[1]
        for host, status in [
            (f"127.0.0.1:{port}", 200), (f"localhost:{port}", 200), ("[::1]", 200),
            (f"vsr.example.org:{port}", 200), ("example.org", 200),
            (f"rebind.attacker.test:{port}", 421), ("example.org.attacker.test", 421),
        ]:  # fmt: skip
            assert await status_of(server, "GET", "/healthz", {"Host": host}) == status, host


async def options_headers(server, headers: dict[str, str]):
    async with server.http.options("/whip/cam", headers=headers) as response:
        return response.headers


async def test_cors_only_for_the_configured_origins() -> None:
    preflight = {"Access-Control-Request-Method": "POST"}
    async with running_server(BicubicEngine("cpu")) as server:  # default: own pages only
        foreign = {"Origin": "https://player.example", **preflight}
        assert "Access-Control-Allow-Origin" not in (await options_headers(server, foreign))
    settings = {"cors_origins": ["https://player.example"]}
    async with running_server(BicubicEngine("cpu"), server=settings) as server:
        for origin, allowed in (("https://player.example", True), ("https://evil.test", False)):
            async with server.http.options(
                "/whep/cam", headers={"Origin": origin, **preflight}
            ) as response:
                assert response.headers.get("Access-Control-Allow-Origin") == (
                    origin if allowed else None
                )
        async with server.http.post("/whip/cam", data="x", headers={
            "Origin": "https://player.example", "Content-Type": SDP}) as response:  # fmt: skip
            assert response.status == 400  # refusals are readable by the allowed page too
            assert response.headers["Access-Control-Allow-Origin"] == "https://player.example"


async def test_turn_credentials_only_go_to_clients_that_may_post() -> None:
    turn = {"urls": "turn:127.0.0.1:3478", "username": "user", "credential": "secret"}
    settings = {"whip_token": OBS_TOKEN, "ice_servers": [turn]}
    async with running_server(BicubicEngine("cpu"), server=settings) as server:
        assert "Link" not in await options_headers(server, {})
        links = (await options_headers(server, bearer(OBS_TOKEN))).getall("Link")
        assert any('credential="secret"' in link for link in links)
