"""Micro-batching of concurrent requests to one model.

Requests wait in one bounded queue per model. A single worker per model takes the oldest
request and gathers the queued requests of the same key (the image size) until it has
``max_batch`` of them or ``max_wait`` seconds have passed since the oldest arrived, then
runs them as one batch in a worker thread, so the event loop keeps accepting requests.
While a batch runs, new requests queue up; the next batch starts at once when its oldest
request has already waited ``max_wait``, so batches grow with load by themselves.
Requests of another key stay queued, in order, for a later batch. A full queue refuses
new requests (``QueueFull``) instead of growing.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any


class QueueFull(Exception):
    """The model's queue holds ``max_queue`` requests already."""


@dataclass
class _Item:
    key: Hashable
    payload: Any
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


class Batcher:
    """``await batcher.submit(key, payload)`` runs ``run_batch(key, [payload, ...])``
    (in a thread) with other payloads of the same key and answers this payload's result.

    ``on_batch(size)`` is called for every batch run; ``queued()`` is the number waiting.
    """

    def __init__(self, run_batch: Callable[[Hashable, Sequence[Any]], Sequence[Any]], max_batch: int = 8,
                 max_wait: float = 0.01, max_queue: int = 64,
                 on_batch: Callable[[int], None] | None = None) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait < 0:
            raise ValueError("max_batch and max_queue must be at least 1, max_wait not negative")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._items: deque[_Item] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    def queued(self) -> int:
        return len(self._items)

    def start(self) -> None:
        """Starts the worker on the running event loop."""
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._worker(self._wake))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for item in self._items:
            if not item.future.done():
                item.future.set_exception(RuntimeError("the service is shutting down"))
        self._items.clear()

    def submit(self, key: Hashable, payload: Any) -> asyncio.Future:
        """Queues one payload; raises QueueFull when the queue is full."""
        if self._task is None or self._wake is None:
            raise RuntimeError("Batcher.start() was not called (the app's lifespan did not run)")
        if len(self._items) >= self.max_queue:
            raise QueueFull()
        future = asyncio.get_running_loop().create_future()
        self._items.append(_Item(key, payload, future))
        self._wake.set()
        return future

    def _same_key(self, key: Hashable) -> list[_Item]:
        return [it for it in self._items if it.key == key and not it.future.cancelled()][:self.max_batch]

    async def _worker(self, wake: asyncio.Event) -> None:
        while True:
            while self._items and self._items[0].future.cancelled():   # the client went away
                self._items.popleft()
            if not self._items:
                wake.clear()
                await wake.wait()
                continue
            head = self._items[0]
            while True:
                batch = self._same_key(head.key)
                left = head.arrived + self.max_wait - time.monotonic()
                if len(batch) >= self.max_batch or left <= 0:
                    break
                wake.clear()
                try:
                    await asyncio.wait_for(wake.wait(), left)
                except asyncio.TimeoutError:
                    batch = self._same_key(head.key)
                    break
            if not batch:   # the oldest request was cancelled while it waited
                continue
            taken = {id(it) for it in batch}
            self._items = deque(it for it in self._items if id(it) not in taken)
            if self.on_batch is not None:
                self.on_batch(len(batch))
            try:
                results = await asyncio.to_thread(self.run_batch, head.key, [it.payload for it in batch])
            except Exception as e:  # noqa: BLE001 - handed to every request of the batch
                for it in batch:
                    if not it.future.done():
                        it.future.set_exception(e)
                continue
            for it, result in zip(batch, results):
                if not it.future.done():
                    it.future.set_result(result)
