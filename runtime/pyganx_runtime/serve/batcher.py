"""Micro-batching of concurrent requests to one model.

Requests wait in one bounded queue per model. A single worker per model takes the oldest
request and gathers the queued requests of the same key (the image size) until they hold
``max_batch`` images (a request's ``weight``: 1 for an image upload, N for a v2 request
of N images) or ``max_wait`` seconds have passed since the oldest arrived, then
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
    weight: int = 1
    arrived: float = field(default_factory=time.monotonic)


class Batcher:
    """``await batcher.submit(key, payload)`` runs ``run_batch(key, [payload, ...])``
    (in a thread) with other payloads of the same key and answers this payload's result.

    ``on_batch(images)`` is called for every batch run with the weights' sum; ``queued()``
    is the number of requests waiting.
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

    def submit(self, key: Hashable, payload: Any, weight: int = 1) -> asyncio.Future:
        """Queues one payload of ``weight`` images (at most ``max_batch``); raises
        QueueFull when the queue is full."""
        if not 1 <= weight <= self.max_batch:
            raise ValueError(f"a request's weight must be 1 to {self.max_batch}, got {weight}")
        if self._task is None or self._wake is None:
            raise RuntimeError("Batcher.start() was not called (the app's lifespan did not run)")
        if len(self._items) >= self.max_queue:
            raise QueueFull()
        future = asyncio.get_running_loop().create_future()
        self._items.append(_Item(key, payload, future, weight))
        self._wake.set()
        return future

    def _same_key(self, key: Hashable) -> tuple[list[_Item], bool]:
        """The oldest waiting requests of ``key`` that fit in one batch, in order, and
        whether the batch is full (``max_batch`` images, or the next one does not fit)."""
        batch: list[_Item] = []
        total = 0
        for it in self._items:
            if it.key != key or it.future.cancelled():
                continue
            if total + it.weight > self.max_batch:
                return batch, True
            batch.append(it)
            total += it.weight
        return batch, total >= self.max_batch

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
                batch, full = self._same_key(head.key)
                left = head.arrived + self.max_wait - time.monotonic()
                if full or left <= 0:
                    break
                wake.clear()
                try:
                    await asyncio.wait_for(wake.wait(), left)
                except asyncio.TimeoutError:
                    batch, _ = self._same_key(head.key)
                    break
            if not batch:   # the oldest request was cancelled while it waited
                continue
            taken = {id(it) for it in batch}
            self._items = deque(it for it in self._items if id(it) not in taken)
            if self.on_batch is not None:
                self.on_batch(sum(it.weight for it in batch))
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
