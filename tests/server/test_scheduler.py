"""The GPU worker outlives a session that closes while its frame waits for a batch to fill."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from streamvsr.engine import BicubicEngine
from streamvsr.server.scheduler import FrameScheduler, Pending


def frame() -> Pending:
    return Pending(np.zeros((16, 16, 3), np.uint8), time.monotonic())


async def test_a_source_that_closes_during_the_batch_wait_does_not_stop_the_worker() -> None:
    loop = asyncio.get_running_loop()
    delivered = asyncio.Event()
    scheduler = FrameScheduler(BicubicEngine("cpu"), loop, max_batch=4, max_wait_ms=300)
    scheduler.start()
    try:
        scheduler.add_source("gone", lambda result: None, seed=0)
        scheduler.submit("gone", frame())
        await asyncio.sleep(0.1)  # the worker waits for more sources to join the step
        scheduler.remove_source("gone")
        await asyncio.sleep(0.4)
        scheduler.add_source("next", lambda result: delivered.set, seed=0)
        scheduler.submit("next", frame())
        await asyncio.wait_for(delivered.wait(), 5)  # the worker still runs
    finally:
        await asyncio.to_thread(scheduler.stop)
