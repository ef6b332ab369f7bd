"""Cluster deployment files: docker-compose.cluster.yml (consistency of its nodes, their settings
loaded as the server loads them, docker-compose config), configs/prometheus/prometheus.cluster.yml
(promtool), the Helm chart configs/helm/streamvsr (rendered, every manifest validated, its wiring
and the nodes' settings checked), yamllint on the hand-written YAML, and the dashboard's per-node
panels and the KEDA query on a real Prometheus that scrapes a real two-node cluster.

helm cannot be installed here: the chart is rendered by ``support.helm_subset``, a stand-in for
``helm template`` that knows exactly the template syntax the chart uses (and refuses any other).
Where ``helm`` is on PATH the chart is also rendered by it (and linted) and must give the same
objects; where ``kubeconform`` is, it validates the rendered manifests too. Built-in kinds are
validated with kubernetes-validate (strict: unknown fields fail) against Kubernetes versions it
ships; the KEDA ScaledObject and the PodMonitor (custom resources, no schema there) get a
structural check, and the HPA that KEDA derives from the ScaledObject is validated as a built-in.

Network rule: the nodes, Redis and Prometheus listen on 127.0.0.1; every ICE candidate is
127.0.0.1.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp
import kubernetes_validate
import pytest
import yaml
from support.cluster import cluster_nodes, redis_server
from support.helm_subset import (
    Context,
    Unsupported,
    go_number,
    manifests,
    render_chart,
    render_text,
)
from support.prometheus import prometheus, query
from support.webrtc import SyntheticVideo, open_browser_peer, parse_metrics, wait_until
from yamllint import linter
from yamllint.config import YamlLintConfig

from streamvsr.config import load_settings
from streamvsr.server.access import Action, policy
from streamvsr.server.origins import host_allowed

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.cluster.yml"
SINGLE_COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS_CONFIG = ROOT / "configs" / "prometheus" / "prometheus.cluster.yml"
DASHBOARD = ROOT / "configs" / "grafana" / "dashboards" / "streamvsr.json"
CHART = ROOT / "configs" / "helm" / "streamvsr"

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
DOCKER_COMPOSE = shutil.which("docker-compose")
HELM = shutil.which("helm")
KUBECONFORM = shutil.which("kubeconform")

PUBLIC_IP = "203.0.113.7"  # stands in for the required STREAMVSR_PUBLIC_IP (documentation range)
VARIABLE = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")
ELSEWHERE = ipaddress.ip_address("198.51.100.9")  # a client on the internet
KEDA_QUERY = (
    'sum(streamvsr_cluster_slots_used{pool="model"}) / sum(streamvsr_cluster_slots{pool="model"})'
)
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())
CUSTOM_KINDS = {("keda.sh/v1alpha1", "ScaledObject"), ("monitoring.coreos.com/v1", "PodMonitor")}
ALL_ON = {
    "keda": {"enabled": True, "prometheusAddress": "http://prometheus.monitoring:9090"},
    "prometheus": {"podMonitor": {"enabled": True, "labels": {"release": "kps"}}},
    "node": {"replicas": None, "extraEnv": [{"name": "HF_HUB_OFFLINE", "value": "1"}]},
}
RATE_WINDOW = "5s"  # stands in for Grafana's $__rate_interval (1 s scrapes), as in test_deploy.py
YAMLLINT = YamlLintConfig(
    "extends: default\n"
    "rules:\n"
    "  line-length: {max: 100}\n"  # the project's line length
    "  document-start: disable\n"  # no file here is a stream of documents
)

pytestmark = pytest.mark.usefixtures("loopback_ice")


# --- the compose file ----------------------------------------------------------------------------


def resolved_compose() -> dict[str, Any]:
    """The compose file with its variables at their defaults (the required public IP given)."""

    def value(match: re.Match) -> str:
        name, op, arg = match.groups()
        if op == "-":
            return arg
        assert op == "?" and name == "STREAMVSR_PUBLIC_IP", f"{match.group(0)}: no default"
        return PUBLIC_IP

    return yaml.safe_load(VARIABLE.sub(value, COMPOSE.read_text()))


def compose_nodes(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if "STREAMVSR_CLUSTER__NODE_ID" in service.get("environment", {})
    }


def udp_range(env: dict[str, Any]) -> range:
    low, high = (
        int(env["STREAMVSR_SERVER__UDP_PORT_MIN"]),
        int(env["STREAMVSR_SERVER__UDP_PORT_MAX"]),
    )
    return range(low, high + 1)


def test_compose_cluster_file_validates_and_its_nodes_are_consistent() -> None:
    if DOCKER_COMPOSE is not None:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAMVSR_")}
        run = [DOCKER_COMPOSE, "-f", str(COMPOSE), "config"]
        done = subprocess.run(
            run, capture_output=True, text=True, timeout=60, cwd=ROOT,
            env={**clean, "STREAMVSR_PUBLIC_IP": PUBLIC_IP},
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        resolved = yaml.safe_load(done.stdout)
        assert set(resolved["services"]) == {
            "redis", "streamvsr-a", "streamvsr-b", "prometheus", "grafana",
        }  # fmt: skip
        # The public IP is required: without it the file does not start at all.
        done = subprocess.run(run, capture_output=True, text=True, timeout=60, cwd=ROOT, env=clean)
        assert done.returncode != 0 and "STREAMVSR_PUBLIC_IP" in done.stdout + done.stderr

    compose = resolved_compose()
    services = compose["services"]
    nodes = compose_nodes(compose)
    assert len(nodes) >= 2, nodes
    # Every bind mount of a local path exists; the named volumes are declared.
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in compose["volumes"], f"{name}: volume {source} not declared"

    node_ids, urls, gpus, tcp_ports, udp_ranges, redis_urls = set(), set(), [], set(), [], set()
    for name, node in nodes.items():
        env = node["environment"]
        port = int(env["STREAMVSR_SERVER__PORT"])
        udp = udp_range(env)
        # Published ports: the TCP port and the UDP range, with the same numbers inside (what
        # the server binds and puts in its ICE candidates) and outside.
        assert sorted(node["ports"]) == sorted([
            f"{port}:{port}/tcp", f"{udp.start}-{udp.stop - 1}:{udp.start}-{udp.stop - 1}/udp"
        ]), name  # fmt: skip
        # Clients and the other nodes reach it at the host's address and its published port.
        assert env["STREAMVSR_CLUSTER__ADVERTISE_URL"] == f"http://{PUBLIC_IP}:{port}", name
        assert env["STREAMVSR_SERVER__PUBLIC_IP"] == PUBLIC_IP
        [device] = node["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"], name
        assert len(device["device_ids"]) == 1, f"{name}: one GPU per node"
        assert "redis" in node["depends_on"]
        # The healthcheck asks the node's own port (the Dockerfile's asks 8080).
        assert "STREAMVSR_SERVER__PORT" in " ".join(node["healthcheck"]["test"])
        assert name in env["STREAMVSR_SERVER__ALLOWED_HOSTS"].split(",")
        node_ids.add(env["STREAMVSR_CLUSTER__NODE_ID"])
        urls.add(env["STREAMVSR_CLUSTER__ADVERTISE_URL"])
        gpus += device["device_ids"]
        tcp_ports.add(port)
        udp_ranges.append(udp)
        redis_urls.add(env["STREAMVSR_CLUSTER__REDIS_URL"])
    count = len(nodes)
    assert len(node_ids) == len(urls) == len(set(gpus)) == len(tcp_ports) == count
    ports = [p for r in udp_ranges for p in r]
    assert len(ports) == len(set(ports)), "the nodes' UDP ranges overlap"
    # One Redis for all: the compose file's own.
    [redis_url] = redis_urls
    assert urlparse(redis_url).hostname == "redis" and urlparse(redis_url).port == 6379
    assert services["redis"]["image"].startswith("redis:7")
    # Prometheus runs with the cluster config, which scrapes every node at its service name.
    prometheus = services["prometheus"]
    assert "--config.file=/etc/prometheus/prometheus.cluster.yml" in prometheus["command"]
    assert "./configs/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    [job] = config["scrape_configs"]
    [static] = job["static_configs"]
    expected = {
        f"{name}:{node['environment']['STREAMVSR_SERVER__PORT']}" for name, node in nodes.items()
    }
    assert set(static["targets"]) == expected
    # Grafana and the network are docker-compose.yml's: same dashboard, same datasource.
    single = yaml.safe_load(SINGLE_COMPOSE.read_text())
    raw = yaml.safe_load(COMPOSE.read_text())
    assert raw["services"]["grafana"] == single["services"]["grafana"]
    assert compose["networks"] == single["networks"]


def test_compose_cluster_settings_load_and_let_prometheus_scrape() -> None:
    """Each node's environment, loaded as the server loads it (the image runs it with --host
    0.0.0.0): a cluster node; Prometheus (in the compose network, asking for the service name)
    may scrape it, a client elsewhere may stream only; the other nodes' proxied offers (from the
    compose network) are trusted to name the client."""
    compose = resolved_compose()
    [subnet] = [c["subnet"] for c in compose["networks"]["default"]["ipam"]["config"]]
    network = ipaddress.ip_network(subnet)
    prometheus = network[5]
    nodes = compose_nodes(compose)
    for name, node in nodes.items():
        env = {k: str(v) for k, v in node["environment"].items()}
        settings = load_settings(env=env, overrides={"server": {"host": "0.0.0.0"}})
        server, cluster = settings.server, settings.cluster
        assert cluster.redis_url == "redis://redis:6379/0"
        assert cluster.node_id == name
        assert cluster.advertise_url == env["STREAMVSR_CLUSTER__ADVERTISE_URL"]
        assert (server.udp_port_min, server.udp_port_max) == (
            udp_range(env).start, udp_range(env).stop - 1,
        )  # fmt: skip
        access = policy(server.users, server.whip_token)
        assert host_allowed(f"{name}:{server.port}", server.allowed_hosts)
        assert access.allows(Action.METRICS, None, None, prometheus)
        assert not access.allows(Action.METRICS, None, None, ELSEWHERE)
        assert not access.allows(Action.API, None, None, ELSEWHERE)
        assert access.allows(Action.PUBLISH, "live", None, ELSEWHERE)
        # Docker's proxy at the gateway and the other containers may forward; the internet not.
        for proxy in (network[1], network[2], network[3]):
            assert any(proxy in n for n in server.trusted_proxies), (name, proxy)
        assert not any(ELSEWHERE in n for n in server.trusted_proxies)


@pytest.mark.skipif(not Path(PROMTOOL).exists(), reason="promtool missing (Debian: prometheus)")
def test_promtool_checks_the_cluster_config_and_the_cluster_queries(tmp_path: Path) -> None:
    done = subprocess.run(
        [PROMTOOL, "check", "config", str(PROMETHEUS_CONFIG)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    # The KEDA query and the per-node panels' queries parse (as recording rules).
    exprs = [KEDA_QUERY, *(expr for _, _, expr in cluster_panel_targets())]
    rules = {"groups": [{"name": "parse", "rules": [
        {"record": f"streamvsr_parse_check_{i}", "expr": expr} for i, expr in enumerate(exprs)
    ]}]}  # fmt: skip
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    done = subprocess.run(
        [PROMTOOL, "check", "rules", str(tmp_path / "rules.yml")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_yaml_files_pass_yamllint() -> None:
    files = [
        COMPOSE, PROMETHEUS_CONFIG, CHART / "Chart.yaml", CHART / "values.yaml",
    ]  # fmt: skip
    problems = [
        f"{path.relative_to(ROOT)}:{p.line}:{p.column}: {p.level}: {p.desc} ({p.rule})"
        for path in files
        for p in linter.run(path.read_text(), YAMLLINT, str(path))
    ]
    assert not problems, "\n".join(problems)


# --- the Helm chart: the renderer ----------------------------------------------------------------


def test_the_helm_stand_in_renders_its_subset_like_go_templates() -> None:
    chart = {"name": "c", "version": "1.2.3", "appVersion": "4.5"}
    values = {"on": True, "off": False, "zero": 0, "empty": [], "port": 8080, "ratio": 0.7,
              "big": 1000000, "map": {"b": [1, 2], "a": "x"}, "name": "n"}  # fmt: skip
    ctx = Context(values, chart, "rel", "ns")
    text = (
        "a: {{ .Release.Name }}-{{ .Chart.Name }}-{{ .Chart.AppVersion }}\n"
        "  {{- if .Values.on }}\n"
        "b: {{ .Values.port }} {{ .Values.ratio }} {{ .Values.on }}\n"
        "  {{- if .Values.off }}\nnever: {{ .Values.nothing.at.all }}\n  {{- end }}\n"
        "  {{- end }}\n"
        "  {{- if .Values.missing }}\nnever\n{{- end }}\n"
        "{{- if .Values.zero }}\nnever\n{{- end }}{{- if .Values.empty }}never{{ end }}\n"
        "c:\n  {{- toYaml .Values.map | nindent 2 }}\n"
    )
    assert render_text(text, ctx) == (
        "a: rel-c-4.5\nb: 8080 0.7 true\nc:\n  a: x\n  b:\n  - 1\n  - 2\n"
    )
    for bad in (
        "{{ .Values.big }}",  # helm: 1e+06
        "{{ .Values.map }}",  # helm: map[a:x b:[1 2]]
        "{{ .Values.nope }}",  # helm: <no value>
        "{{ if .Values.nope.deeper }}{{ end }}",  # helm: nil pointer
        "{{ .Values.name | quote }}",  # outside the subset
        '{{ include "x" . }}',
        "{{ if .Values.on }}{{ else }}{{ end }}",
        "{{ if .Values.on }}",
        "{{ end }}",
    ):
        with pytest.raises(Unsupported):
            render_text(bad, ctx)
    assert [go_number(v) for v in (0, 8080, 0.7, 123456, 600.0)] == [
        "0", "8080", "0.7", "123456", "600",
    ]  # fmt: skip


# --- the Helm chart: its manifests ---------------------------------------------------------------


def chart_objects(values: dict[str, Any] | None = None) -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> object, as the chart renders with ``values``."""
    objects = {}
    for obj in manifests(render_chart(CHART, values, release="svr")):
        key = (obj["kind"], obj["metadata"]["name"])
        assert key not in objects, f"{key} rendered twice"
        objects[key] = obj
    return objects


def node_container(objects) -> dict[str, Any]:
    [container] = objects["StatefulSet", "svr-node"]["spec"]["template"]["spec"]["containers"]
    return container


def config_path_of(container: dict[str, Any]) -> str:
    """The settings file that the node's server is started with."""
    [path] = re.findall(r"streamvsr serve .*--config (\S+)", " ".join(container["command"]))
    return path


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container["env"]}


@pytest.mark.parametrize("flags", ["defaults", "all_on", "no_redis"])
def test_chart_renders_valid_manifests(flags: str) -> None:
    values = {"defaults": None, "all_on": ALL_ON, "no_redis": {"redis": {"enabled": False}}}
    objects = chart_objects(values[flags])
    kinds = sorted(kind for kind, _ in objects)
    expected = ["ConfigMap", "Deployment", "Service", "Service", "Service", "StatefulSet"]
    if flags == "all_on":
        expected += ["PodMonitor", "ScaledObject"]
    if flags == "no_redis":
        expected.remove("Deployment")
        expected.remove("Service")
    assert kinds == sorted(expected)
    for (kind, name), obj in objects.items():
        if (obj["apiVersion"], kind) in CUSTOM_KINDS:
            continue  # checked below
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                pytest.fail(f"{kind}/{name} against Kubernetes {version}: {path}: {exc.message}")


def test_chart_wires_nodes_services_redis_and_scraping() -> None:
    for values in (None, ALL_ON):
        objects = chart_objects(values)
        sts = objects["StatefulSet", "svr-node"]
        pod = sts["spec"]["template"]
        labels = pod["metadata"]["labels"]
        assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert sts["spec"]["serviceName"] == "svr-nodes"
        spec = pod["spec"]
        # The host's network (media straight to the node), cluster DNS still working on it.
        assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
        [anti] = spec["affinity"]["podAntiAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]
        assert anti["topologyKey"] == "kubernetes.io/hostname"
        assert anti["labelSelector"]["matchLabels"].items() <= labels.items()
        container = node_container(objects)
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        env = env_of(container)
        assert len(env) == len(container["env"]), "an environment variable set twice"
        # Kubernetes expands $(VAR) only for variables defined before: check the order.
        defined: list[str] = []
        for entry in container["env"]:
            for ref in re.findall(r"\$\((\w+)\)", entry.get("value", "")):
                assert ref in defined, f"{entry['name']} uses $({ref}) before it is defined"
            defined.append(entry["name"])
        assert env["HOST_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
        node_id = env["STREAMVSR_CLUSTER__NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
        assert node_id == "metadata.name"
        port = int(env["STREAMVSR_SERVER__PORT"]["value"])
        advertise = env["STREAMVSR_CLUSTER__ADVERTISE_URL"]["value"]
        assert advertise == f"http://$(HOST_IP):{port}"
        [http] = container["ports"]
        assert http["name"] == "http" and http["containerPort"] == http["hostPort"] == port
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        # It starts the image's server (after taking back a drain mark left by an earlier pod of
        # its name) with the settings file: the ConfigMap, mounted where --config says.
        start = " ".join(container["command"])
        assert "args" not in container
        assert re.search(r'drain --undo .*"\$STREAMVSR_CLUSTER__NODE_ID" \|\| true;', start)
        config_path = config_path_of(container)
        assert start.endswith(f"exec streamvsr serve --host 0.0.0.0 --config {config_path}")
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        settings_volume = next(n for n, p in mounts.items() if config_path.startswith(p + "/"))
        config_map = objects["ConfigMap", volumes[settings_volume]["configMap"]["name"]]
        assert Path(config_path).name in config_map["data"]
        assert mounts["cache"] == "/cache"
        # A stopping node drains first, and is given the time to.
        stop = " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
        assert f"streamvsr drain --config {config_path}" in stop
        assert "$STREAMVSR_CLUSTER__NODE_ID" in stop
        drain_grace = node_settings(objects).cluster.drain_grace_s
        assert spec["terminationGracePeriodSeconds"] > drain_grace
        # Redis: the URL names the chart's Redis Service, which selects the Redis pods only.
        redis_url = urlparse(env["STREAMVSR_CLUSTER__REDIS_URL"]["value"])
        redis_service = objects["Service", redis_url.hostname]
        assert [p["port"] for p in redis_service["spec"]["ports"]] == [redis_url.port]
        redis = objects["Deployment", "svr-redis"]["spec"]["template"]
        assert redis_service["spec"]["selector"].items() <= redis["metadata"]["labels"].items()
        assert not redis_service["spec"]["selector"].items() <= labels.items()
        # The front door and the headless Service select the node pods, on their http port.
        for name in ("svr", "svr-nodes"):
            service = objects["Service", name]
            assert service["spec"]["selector"].items() <= labels.items(), name
            assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
        # Prometheus: the annotations name the node's port; the PodMonitor selects the nodes.
        annotations = pod["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(port)
        assert annotations["prometheus.io/path"] == "/metrics"
        if values is None:
            assert ("PodMonitor", "svr-node") not in objects
            assert ("ScaledObject", "svr-node") not in objects
            assert sts["spec"]["replicas"] == 2
        else:
            check_pod_monitor(objects["PodMonitor", "svr-node"], pod, container)
            check_scaled_object(objects["ScaledObject", "svr-node"], sts)
            assert "replicas" not in sts["spec"]  # the autoscaler owns it
            assert env["HF_HUB_OFFLINE"] == {"name": "HF_HUB_OFFLINE", "value": "1"}
    # Without the chart's Redis: no Redis objects, and the nodes get no URL from the chart.
    objects = chart_objects({"redis": {"enabled": False}})
    assert "STREAMVSR_CLUSTER__REDIS_URL" not in env_of(node_container(objects))
    assert not [key for key in objects if key[1] == "svr-redis"]


def node_settings(objects, host_ip: str = "10.1.2.3", pod: str = "svr-node-0"):
    """A node's settings as the server loads them: the ConfigMap's file, the container's
    environment (downward API values filled in), and the image's --host 0.0.0.0."""
    container = node_container(objects)
    config_path = config_path_of(container)
    [config_map] = [obj for (kind, _), obj in objects.items() if kind == "ConfigMap"]
    text = config_map["data"][Path(config_path).name]
    fields = {"status.hostIP": host_ip, "metadata.name": pod, "spec.nodeName": "gpu-1"}
    env: dict[str, str] = {}
    for entry in container["env"]:
        if "valueFrom" in entry:
            env[entry["name"]] = fields[entry["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            env[entry["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], entry["value"])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / Path(config_path).name
        path.write_text(text)
        return load_settings(path, env=env, overrides={"server": {"host": "0.0.0.0"}})


def test_chart_node_settings_load_and_let_prometheus_scrape() -> None:
    objects = chart_objects()
    settings = node_settings(objects, host_ip="10.1.2.3", pod="svr-node-0")
    server, cluster = settings.server, settings.cluster
    assert cluster.redis_url == "redis://svr-redis:6379/0"
    assert cluster.node_id == "svr-node-0"
    assert cluster.advertise_url == "http://10.1.2.3:8080"
    assert (server.port, server.udp_port_min, server.udp_port_max) == (8080, 40000, 40099)
    access = policy(server.users, server.whip_token)
    prometheus_pod = ipaddress.ip_address("10.244.1.9")
    assert access.allows(Action.METRICS, None, None, prometheus_pod)
    assert not access.allows(Action.METRICS, None, None, ELSEWHERE)
    assert not access.allows(Action.API, None, None, ELSEWHERE)
    assert access.allows(Action.PUBLISH, "live", None, ELSEWHERE)
    # Another node's proxied offer comes from its host's address: trusted; the internet not.
    assert any(ipaddress.ip_address("10.1.2.4") in n for n in server.trusted_proxies)
    assert not any(ELSEWHERE in n for n in server.trusted_proxies)


def check_pod_monitor(monitor: dict[str, Any], pod: dict[str, Any], container) -> None:
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) <= {"selector", "podMetricsEndpoints", "namespaceSelector",
                                    "jobLabel", "podTargetLabels", "sampleLimit"}  # fmt: skip
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert monitor["metadata"]["labels"]["release"] == "kps"
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in {p["name"] for p in container["ports"]}
    assert endpoint["path"] == "/metrics"
    assert re.fullmatch(r"\d+(ms|s|m|h)", endpoint["interval"])


# KEDA v2 ScaledObject (keda.sh/v1alpha1): the fields of its spec, and of a prometheus trigger.
SCALED_OBJECT_SPEC = {
    "scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod",
    "idleReplicaCount", "minReplicaCount", "maxReplicaCount", "advanced", "triggers", "fallback",
}  # fmt: skip
PROMETHEUS_TRIGGER = {
    "serverAddress", "query", "threshold", "activationThreshold", "namespace", "customHeaders",
    "ignoreNullValues", "queryParameters", "unsafeSsl", "authModes",
}  # fmt: skip


def check_scaled_object(scaled: dict[str, Any], sts: dict[str, Any]) -> None:
    assert scaled["apiVersion"] == "keda.sh/v1alpha1" and scaled["metadata"]["name"]
    spec = scaled["spec"]
    assert set(spec) <= SCALED_OBJECT_SPEC, set(spec) - SCALED_OBJECT_SPEC
    ref = spec["scaleTargetRef"]
    assert ref == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": sts["metadata"]["name"]}
    low, high = spec["minReplicaCount"], spec["maxReplicaCount"]
    assert isinstance(low, int) and isinstance(high, int) and 1 <= low <= high
    for key in ("pollingInterval", "cooldownPeriod"):
        assert isinstance(spec[key], int) and spec[key] > 0, key
    assert set(spec["advanced"]) <= {
        "horizontalPodAutoscalerConfig",
        "restoreToOriginalReplicaCount",
    }
    [trigger] = spec["triggers"]
    assert set(trigger) <= {"type", "metadata", "metricType", "name", "authenticationRef"}
    assert trigger["type"] == "prometheus"
    # A ratio: Value (replicas * value / threshold), not AverageValue (value / threshold).
    assert trigger["metricType"] == "Value"
    metadata = trigger["metadata"]
    assert set(metadata) <= PROMETHEUS_TRIGGER and {"serverAddress", "query", "threshold"} <= set(
        metadata
    )
    assert all(isinstance(v, str) for v in metadata.values()), "KEDA metadata are strings"
    assert urlparse(metadata["serverAddress"]).scheme in ("http", "https")
    assert " ".join(metadata["query"].split()) == KEDA_QUERY
    threshold = float(metadata["threshold"])
    assert 0 < threshold <= 1
    # The HPA that KEDA creates from it: a valid autoscaling/v2 object with this behaviour.
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": f"keda-hpa-{scaled['metadata']['name']}"},
        "spec": {
            "scaleTargetRef": {k: ref[k] for k in ("apiVersion", "kind", "name")},
            "minReplicas": low,
            "maxReplicas": high,
            "behavior": spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"],
            "metrics": [{"type": "External", "external": {
                "metric": {"name": "s0-prometheus", "selector": {"matchLabels": {
                    "scaledobject.keda.sh/name": scaled["metadata"]["name"]}}},
                "target": {"type": "Value", "value": f"{round(threshold * 1000)}m"},
            }}],
        },
    }  # fmt: skip
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(hpa, version, strict=True)


@pytest.mark.skipif(HELM is None, reason="helm missing (not in the package registries used here)")
def test_real_helm_renders_the_same_objects(tmp_path: Path) -> None:
    done = subprocess.run([HELM, "lint", str(CHART)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    for values in (None, ALL_ON):
        args = [HELM, "template", "svr", str(CHART)]
        if values is not None:
            (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
            args += ["-f", str(tmp_path / "values.yaml")]
        done = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        helm = {
            (obj["kind"], obj["metadata"]["name"]): obj
            for obj in yaml.safe_load_all(done.stdout)
            if obj
        }
        assert comparable(helm) == comparable(chart_objects(values))


def comparable(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[tuple[str, str], Any]:
    """Objects with the YAML files in ConfigMaps parsed (helm's toYaml formats YAML a little
    differently from PyYAML: quoting, line breaks)."""
    out = {}
    for key, obj in objects.items():
        obj = json.loads(json.dumps(obj))
        if key[0] == "ConfigMap":
            obj["data"] = {
                name: yaml.safe_load(text) if name.endswith((".yaml", ".yml")) else text
                for name, text in obj["data"].items()
            }
        out[key] = obj
    return out


@pytest.mark.skipif(KUBECONFORM is None, reason="kubeconform missing")
def test_kubeconform_accepts_the_rendered_manifests(tmp_path: Path) -> None:
    for flags, values in (("defaults", None), ("all_on", ALL_ON)):
        path = tmp_path / f"{flags}.yaml"
        path.write_text(yaml.safe_dump_all(list(chart_objects(values).values())))
        done = subprocess.run(
            [KUBECONFORM, "-strict", "-summary", "-ignore-missing-schemas", str(path)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr


# --- the per-node panels on a real Prometheus scraping a real cluster ---------------------------


def cluster_panel_targets() -> list[tuple[str, str, str]]:
    """(panel, legend, expr) of the dashboard's per-node and cluster panels."""
    dash = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target.get("legendFormat", ""),
         target["expr"].replace("$__rate_interval", RATE_WINDOW))
        for panel in dash["panels"]
        if "per node" in panel["title"]
        for target in panel["targets"]
    ]  # fmt: skip


@pytest.mark.skipif(not Path(PROMETHEUS).exists(), reason="prometheus missing (Debian package)")
async def test_per_node_panels_and_the_keda_query_on_a_real_cluster(tmp_path: Path) -> None:
    """Two nodes of one model slot each: a page at node a is served there, a second one is
    proxied to node b. Every per-node panel shows both nodes, and the KEDA query reads 1 (two of
    two slots in use)."""
    peers = []
    with redis_server() as redis, cluster_nodes(redis.url, tmp_path, 2, "--max-sessions", "1") as (
        a, b,
    ):  # fmt: skip
        instances = {a.url.removeprefix("http://"), b.url.removeprefix("http://")}
        with prometheus(tmp_path, sorted(instances)) as (prom_url, proc):
            async with (
                aiohttp.ClientSession(base_url=prom_url) as prom,
                aiohttp.ClientSession(base_url=a.url) as door,
            ):
                try:
                    for _ in range(2):  # the first stays at a, the second goes to b
                        peer = await open_browser_peer(door, SyntheticVideo(), keep_images=False)
                        peers.append(peer)
                        await peer.collector.wait_video(1)

                    async def scraped() -> bool:
                        assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
                        with contextlib.suppress(aiohttp.ClientError, AssertionError):
                            sent = await query(
                                prom, f"increase(streamvsr_frames_sent_total[{RATE_WINDOW}]) > 0"
                            )
                            used = await query(prom, KEDA_QUERY)
                            return (
                                {r["metric"]["instance"] for r in sent} == instances
                                and bool(used) and float(used[0]["value"][1]) == 1.0
                            )  # fmt: skip
                        return False

                    await wait_until(scraped, 20, "Prometheus to scrape both nodes streaming", 0.25)
                    results = {
                        (title, legend): await query(prom, expr)
                        for title, legend, expr in cluster_panel_targets()
                    }
                    exported = {
                        name
                        for node in (a, b)
                        for name, _, _ in parse_metrics(await _metrics(door, node.url))
                    }
                finally:
                    for peer in peers:
                        await peer.close()

    assert len(results) >= 4, results
    for (title, legend), result in results.items():
        assert result, f"{title} [{legend}] returned no data"
        if "{{instance}}" in legend:
            assert {r["metric"]["instance"] for r in result} == instances, (title, legend)

    def values(title_part: str, legend: str) -> dict[tuple[str, ...], float]:
        [result] = [r for k, r in results.items() if title_part in k[0] and k[1] == legend]
        labels = re.findall(r"\{\{(\w+)\}\}", legend)
        return {tuple(r["metric"][n] for n in labels): float(r["value"][1]) for r in result}

    a_id, b_id = a.url.removeprefix("http://"), b.url.removeprefix("http://")
    assert values("slots", "{{instance}} used") == {(a_id,): 1, (b_id,): 1}
    assert values("slots", "{{instance}} total") == {(a_id,): 1, (b_id,): 1}
    assert values("slots", "cluster used / total") == {(): 1.0}
    assert values("Redis", "{{instance}}") == {(a_id,): 1, (b_id,): 1}
    placements = values("Placements", "{{instance}} {{placement}}/s")
    assert {p for (_, p) in placements} == {"local", "redirect", "proxy", "full"}
    latency = values("latency", "{{instance}}")
    assert all(0 < latency[(i,)] < 5 for i in (a_id, b_id)), latency
    # Every cluster metric a node exports is on the dashboard (but prometheus_client's _created
    # timestamps: see NOT_SHOWN_SUFFIXES in test_deploy.py).
    shown = {
        m for _, _, expr in cluster_panel_targets() for m in re.findall(r"streamvsr_\w+", expr)
    }
    cluster = {n for n in exported if "_cluster_" in n and not n.endswith("_created")}
    assert cluster - shown == set(), "cluster metrics not on the dashboard"


async def _metrics(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(f"{url}/metrics") as response:
        assert response.status == 200
        return await response.text()
