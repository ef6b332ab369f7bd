"""Several GPUs in one process: one engine copy and one GPU worker (``FrameScheduler``) per
device. A new session goes to the device with the most free capacity and stays there (its state
lives on that device); the pool answers the scheduler's calls by routing each session's to its
device's worker."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence

from .scheduler import FrameScheduler, Pending, Processed


def device_labels(devices: Sequence[str]) -> list[str]:
    """Metric labels: the device names, numbered where one repeats (two CPU workers)."""
    counts = Counter(devices)
    return [d if counts[d] == 1 else f"{d}#{n}" for n, d in enumerate(devices)]


class DevicePool:
    def __init__(self, workers: Sequence[FrameScheduler], labels: Sequence[str]):
        if len(workers) != len(labels) or not workers:
            raise ValueError("one label per worker, and at least one worker")
        self.workers = list(workers)
        self.labels = list(labels)
        self._home: dict[str, int] = {}  # session key -> its device's index
        self._lock = threading.Lock()

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    def stop(self, timeout: float = 10.0) -> None:
        for worker in self.workers:
            worker.stop(timeout)

    def sessions(self) -> dict[str, int]:
        """Sessions per device label."""
        counts = Counter(self._home.values())
        return {label: counts[n] for n, label in enumerate(self.labels)}

    def device_of(self, key: str) -> str | None:
        n = self._home.get(key)
        return None if n is None else self.labels[n]

    def _choose(self) -> int:
        """The device with the fewest sessions: the most free capacity, as the devices are
        alike (the first such device on a tie)."""
        counts = Counter(self._home.values())
        return min(range(len(self.workers)), key=lambda n: (counts[n], n))

    def add_source(
        self, key: str, deliver: Callable[[Processed], Callable[[], None] | None], seed: int | None
    ) -> None:
        with self._lock:
            n = self._choose()
            self._home[key] = n
        self.workers[n].add_source(key, deliver, seed)

    def remove_source(self, key: str) -> None:
        with self._lock:
            n = self._home.pop(key, None)
        if n is not None:
            self.workers[n].remove_source(key)

    def submit(self, key: str, pending: Pending) -> None:
        n = self._home.get(key)
        if n is not None:
            self.workers[n].submit(key, pending)

    def in_flight(self, key: str) -> bool:
        n = self._home.get(key)
        return n is not None and self.workers[n].in_flight(key)
