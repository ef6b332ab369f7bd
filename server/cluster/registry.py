"""The cluster's state in Redis: nodes, their slots and load, reservations, and which node hosts
which stream.

Keys (``P`` is ``cluster.key_prefix``):

- ``P:nodes``: the set of node ids;
- ``P:node:ID``: a hash of the node's advertised URL, slots and load, and ``seen``, the Redis time
  (ms) of its last heartbeat; it expires when heartbeats stop;
- ``P:reserved:ID``: a sorted set of slot reservations for clients on their way to the node
  (scored by when they lapse);
- ``P:stream:NAME``: the id of the node that hosts the stream (expires with its heartbeats);
- ``P:drain:ID``: present while the node drains (its value: the deadline, ms).

Placement is one Lua script, so choosing a node and reserving its slot is atomic: two front
doors never fill the same last slot. Times are Redis's own (``TIME``), so nodes' clocks may differ.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# ARGV: prefix, id, key ttl ms, stream ttl ms, field count n, n field/value pairs, streams...
# Returns the drain deadline (ms) or false.
HEARTBEAT = (
    NOW
    + """
local p, id = ARGV[1], ARGV[2]
local key = p .. ':node:' .. id
local n = tonumber(ARGV[5])
redis.call('HSET', key, 'seen', now, unpack(ARGV, 6, 5 + 2 * n))
redis.call('PEXPIRE', key, ARGV[3])
redis.call('SADD', p .. ':nodes', id)
for i = 6 + 2 * n, #ARGV do
  redis.call('SET', p .. ':stream:' .. ARGV[i], id, 'PX', ARGV[4])
end
return redis.call('GET', p .. ':drain:' .. id)
"""
)

# ARGV: prefix, timeout ms, preferred id, token, reservation ms. The node with the most free model
# slots (slots - used - live reservations) among fresh, non-draining ones; the preferred node
# whenever it has one free. Returns {id, url} or false.
PLACE = (
    NOW
    + """
local p, timeout, preferred = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local best, best_free, best_url = nil, 0, nil
for _, id in ipairs(redis.call('SMEMBERS', p .. ':nodes')) do
  local h = redis.call('HMGET', p .. ':node:' .. id, 'seen', 'url', 'model_slots', 'model_used')
  if not h[1] then
    redis.call('SREM', p .. ':nodes', id)
  elseif now - tonumber(h[1]) <= timeout and redis.call('EXISTS', p .. ':drain:' .. id) == 0 then
    local reserved = p .. ':reserved:' .. id
    redis.call('ZREMRANGEBYSCORE', reserved, '-inf', now)
    local free = tonumber(h[3]) - tonumber(h[4]) - redis.call('ZCARD', reserved)
    if free > 0 and (id == preferred or (best ~= preferred and free > best_free)) then
      best, best_free, best_url = id, free, h[2]
    end
  end
end
if not best then return false end
local reserved = p .. ':reserved:' .. best
redis.call('ZADD', reserved, now + tonumber(ARGV[5]), ARGV[4])
redis.call('PEXPIRE', reserved, 2 * tonumber(ARGV[5]))
return {best, best_url}
"""
)

# ARGV: prefix, stream, timeout ms. The URL of the live node hosting the stream, or false.
STREAM_NODE = (
    NOW
    + """
local id = redis.call('GET', ARGV[1] .. ':stream:' .. ARGV[2])
if not id then return false end
local h = redis.call('HMGET', ARGV[1] .. ':node:' .. id, 'seen', 'url')
if not h[1] or now - tonumber(h[1]) > tonumber(ARGV[3]) then return false end
return {id, h[2]}
"""
)

# KEYS: the stream key; ARGV: id. Forget the stream if this node still hosts it.
UNHOST = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class NodeInfo:
    id: str
    url: str
    age_s: float  # since its last heartbeat
    draining: bool
    reserved: int
    fields: dict[str, str]

    def slots(self, kind: str) -> tuple[int, int]:
        """(used, total) of ``model`` or ``viewer`` slots."""
        return int(self.fields.get(f"{kind}_used", 0)), int(self.fields.get(f"{kind}_slots", 0))


class ClusterRegistry:
    """The Redis side of the cluster (``redis.asyncio``); every call may raise ``RedisError``."""

    def __init__(self, redis: Any, prefix: str):
        self.redis, self.prefix = redis, prefix
        self._heartbeat = redis.register_script(HEARTBEAT)
        self._place = redis.register_script(PLACE)
        self._stream_node = redis.register_script(STREAM_NODE)
        self._unhost = redis.register_script(UNHOST)

    @classmethod
    def from_url(cls, url: str, prefix: str, timeout_s: float = 2.0) -> ClusterRegistry:
        from redis import asyncio as aioredis  # only a cluster needs it

        redis = aioredis.from_url(
            url, decode_responses=True, socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s, health_check_interval=30,
        )  # fmt: skip
        return cls(redis, prefix)

    async def close(self) -> None:
        await self.redis.aclose()

    async def heartbeat(
        self, node_id: str, fields: dict[str, Any], streams: list[str], timeout_s: float
    ) -> float | None:
        """Write the node's state; returns its drain deadline (Redis ms) if it drains."""
        ttl_ms = int(timeout_s * 3000)  # kept a while after it stops, for `cluster status`
        pairs = [str(v) for item in fields.items() for v in item]
        args = [self.prefix, node_id, ttl_ms, int(timeout_s * 1000), len(fields), *pairs]
        deadline = await self._heartbeat(args=[*args, *streams])
        return float(deadline) if deadline is not None else None

    async def update(self, node_id: str, fields: dict[str, Any]) -> None:
        """Counts that changed between heartbeats (a session opened or closed)."""
        await self.redis.hset(f"{self.prefix}:node:{node_id}", mapping=fields)

    async def place(
        self, preferred: str, timeout_s: float, reservation_s: float
    ) -> tuple[str, str, str] | None:
        """Reserve a model slot: (node id, its URL, the reservation token), or None if full."""
        token = secrets.token_urlsafe(12)
        args = [self.prefix, int(timeout_s * 1000), preferred, token, int(reservation_s * 1000)]
        found = await self._place(args=args)
        return (found[0], found[1], token) if found else None

    async def release(self, node_id: str, token: str) -> bool:
        """Drop a reservation (its session opened here, or failed); False if it had lapsed."""
        return bool(await self.redis.zrem(f"{self.prefix}:reserved:{node_id}", token))

    async def stream_node(self, stream: str, timeout_s: float) -> tuple[str, str] | None:
        """(id, URL) of the live node that hosts ``stream``."""
        found = await self._stream_node(args=[self.prefix, stream, int(timeout_s * 1000)])
        return (found[0], found[1]) if found else None

    async def host(self, node_id: str, stream: str, timeout_s: float) -> bool:
        """Claim ``stream`` for this node at once; False if another node hosts it."""
        key = f"{self.prefix}:stream:{stream}"
        if await self.redis.set(key, node_id, px=int(timeout_s * 1000), nx=True):
            return True
        return await self.redis.get(key) == node_id

    async def unhost(self, node_id: str, stream: str) -> None:
        await self._unhost(keys=[f"{self.prefix}:stream:{stream}"], args=[node_id])

    async def drain(self, node_id: str, grace_s: float) -> bool:
        """Mark a node draining; False if no such node is registered."""
        if not await self.redis.exists(f"{self.prefix}:node:{node_id}"):
            return False
        seconds, micros = await self.redis.time()
        deadline = seconds * 1000 + micros // 1000 + int(grace_s * 1000)
        await self.redis.set(
            f"{self.prefix}:drain:{node_id}", deadline, px=int(grace_s * 1000) + 60_000
        )
        return True

    async def undrain(self, node_id: str) -> None:
        await self.redis.delete(f"{self.prefix}:drain:{node_id}")

    async def nodes(self) -> list[NodeInfo]:
        seconds, micros = await self.redis.time()
        now = seconds * 1000 + micros // 1000
        result = []
        for node_id in sorted(await self.redis.smembers(f"{self.prefix}:nodes")):
            fields = await self.redis.hgetall(f"{self.prefix}:node:{node_id}")
            if not fields:
                continue
            reserved_key = f"{self.prefix}:reserved:{node_id}"
            reserved = await self.redis.zcount(reserved_key, now, "+inf")
            draining = bool(await self.redis.exists(f"{self.prefix}:drain:{node_id}"))
            age = (now - int(fields.get("seen", 0))) / 1000
            result.append(NodeInfo(node_id, fields.get("url", ""), age, draining, reserved, fields))
        return result

    async def streams(self) -> dict[str, str]:
        """Stream name -> the id of the node that hosts it."""
        result = {}
        pattern = f"{self.prefix}:stream:*"
        async for key in self.redis.scan_iter(match=pattern, count=500):
            node_id = await self.redis.get(key)
            if node_id is not None:
                result[key.removeprefix(f"{self.prefix}:stream:")] = node_id
        return result
