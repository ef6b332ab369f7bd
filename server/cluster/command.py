"""``streamvsr drain`` and ``streamvsr cluster status``: a cluster seen from its Redis."""

from __future__ import annotations

import argparse
import asyncio
import sys

from redis.exceptions import RedisError

from streamvsr.config import ConfigError
from streamvsr.flags import settings_from_args

from .registry import ClusterRegistry, NodeInfo


def register(sub: argparse._SubParsersAction) -> None:
    drain = sub.add_parser(
        "drain",
        help="stop a cluster node taking new sessions; it exits when its sessions end",
        description="Mark a node of the cluster as draining: placement sends new sessions "
        "elsewhere, its /readyz answers 503, and it exits once its last session has ended (or "
        "after --grace seconds, default cluster.drain_grace_s). --undo takes it back.",
    )
    drain.add_argument("node", help="the node's id (streamvsr cluster status lists them)")
    drain.add_argument("--grace", type=float, metavar="S", help="exit after this long at most")
    drain.add_argument("--undo", action="store_true", help="stop draining the node")
    _add_connection_flags(drain)
    drain.set_defaults(func=cmd_drain)

    cluster = sub.add_parser(
        "cluster", help="the cluster's nodes, slots, load and streams",
        description="Print what the cluster's Redis holds: each node's URL, heartbeat age, "
        "model and viewer slots (used/total, reserved), load and state, and which node "
        "publishes which stream.",
    )  # fmt: skip
    actions = cluster.add_subparsers(dest="action", metavar="ACTION", required=True)
    status = actions.add_parser("status", help="print nodes, slots, load and streams")
    _add_connection_flags(status)
    status.set_defaults(func=cmd_status)


def _add_connection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="YAML", help="settings file layered over the defaults")
    parser.add_argument(
        "--redis-url", dest="cluster_redis_url", metavar="URL", help="the cluster's Redis"
    )
    parser.add_argument(
        "--key-prefix", dest="cluster_key_prefix", metavar="PREFIX", help="its keys' prefix"
    )


def _registry(args: argparse.Namespace) -> ClusterRegistry:
    cluster = settings_from_args(args).cluster
    if not cluster.redis_url:
        raise ConfigError("no cluster: set cluster.redis_url (or --redis-url)")
    return ClusterRegistry.from_url(cluster.redis_url, cluster.key_prefix)


def cmd_drain(args: argparse.Namespace) -> int:
    grace = args.grace or settings_from_args(args).cluster.drain_grace_s
    return _run(_drain(_registry(args), args.node, grace, args.undo))


def _run(command) -> int:
    """Run a command against Redis; one line, not a traceback, when Redis cannot be reached."""
    try:
        return asyncio.run(command)
    except (RedisError, OSError) as exc:
        print(f"error: the cluster's Redis cannot be reached: {exc}", file=sys.stderr)
        return 1


async def _drain(registry: ClusterRegistry, node: str, grace: float, undo: bool) -> int:
    try:
        if undo:
            await registry.undrain(node)
            print(f"{node}: takes new sessions again")
            return 0
        if not await registry.drain(node, grace):
            print(f"error: no node {node!r} in the cluster", file=sys.stderr)
            return 1
        print(f"{node}: draining; it exits when its sessions end (at most {grace:g} s)")
        return 0
    finally:
        await registry.close()


def cmd_status(args: argparse.Namespace) -> int:
    timeout = settings_from_args(args).cluster.node_timeout_s
    return _run(_status(_registry(args), timeout))


async def _status(registry: ClusterRegistry, timeout_s: float) -> int:
    try:
        nodes, streams = await registry.nodes(), await registry.streams()
    finally:
        await registry.close()
    print(format_status(nodes, streams, timeout_s))
    return 0


def format_status(nodes: list[NodeInfo], streams: dict[str, str], timeout_s: float) -> str:
    rows = [("node", "url", "seen", "model", "viewers", "reserved", "step", "queue", "state")]
    for n in nodes:
        state = "draining" if n.draining else "up" if n.age_s <= timeout_s else "silent"
        rows.append((
            n.id, n.url, f"{n.age_s:.1f} s ago",
            "{}/{}".format(*n.slots("model")), "{}/{}".format(*n.slots("viewer")),
            str(n.reserved), f"{n.fields.get('step_ms', '0')} ms",
            f"{n.fields.get('queue_ms', '0')} ms", state,
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    if not nodes:
        lines.append("(no nodes)")
    lines.append("")
    lines.append("streams:" if streams else "streams: none")
    lines += [f"  {name} -> {node}" for name, node in sorted(streams.items())]
    return "\n".join(lines)
