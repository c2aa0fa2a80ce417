"""Dynamic micro-batching: concurrent requests are answered by one forward pass.

Each request puts its images and a future on an asyncio queue.  One worker task takes the first waiting request,
then collects more for up to ``window_s`` seconds or until ``max_batch`` images, runs ``fn`` on all of them in a
worker thread (one batch at a time: the model's hooks are not re-entrant, and torch already uses every core), and
resolves each request's future with its own slice of the answers.  While a batch runs, new requests queue up, so
under load the next batch is formed at once from everything that arrived meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

log = logging.getLogger("dnnpiracy.serve")

PredictFn = Callable[[torch.Tensor], torch.Tensor]


class MicroBatcher:
    """``await batcher.submit(x)`` -> ``fn(x)``, with concurrent submissions batched together.

    The queue and the worker belong to the event loop of the first ``submit``; a call from another loop (a test
    client that opens one loop per request) starts a fresh queue and worker there."""

    def __init__(self, fn: PredictFn, max_batch: int = 256, window_s: float = 0.005):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if window_s < 0:
            raise ValueError(f"the batch window must be >= 0, got {window_s}")
        self.fn, self.max_batch, self.window_s = fn, max_batch, window_s
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._carry: tuple[torch.Tensor, asyncio.Future] | None = None
        self.batches = 0          # statistics: forward passes run, images answered
        self.images = 0

    def _ensure_worker(self) -> asyncio.Queue:
        loop = asyncio.get_running_loop()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dnnpiracy-predict")
        if self._loop is not loop or self._worker is None or self._worker.done():
            self._loop, self._queue, self._carry = loop, asyncio.Queue(), None
            self._worker = loop.create_task(self._run(), name="dnnpiracy-batcher")
        assert self._queue is not None
        return self._queue

    async def submit(self, x: torch.Tensor) -> torch.Tensor:
        """Answer ``x`` (B images, 1 <= B <= max_batch) as part of a batch."""
        if not 1 <= len(x) <= self.max_batch:
            raise ValueError(f"a submission holds 1 to {self.max_batch} images, got {len(x)}")
        queue = self._ensure_worker()
        fut = asyncio.get_running_loop().create_future()
        await queue.put((x, fut))
        return await fut

    async def _next(self, queue: asyncio.Queue, timeout: float | None):
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        if timeout is None:
            return await queue.get()
        if timeout <= 0:
            return queue.get_nowait()           # raises QueueEmpty
        async with asyncio.timeout(timeout):    # the item stays queued if the wait is cancelled
            return await queue.get()

    async def _run(self) -> None:
        queue = self._queue
        loop = asyncio.get_running_loop()
        while True:
            items = [await self._next(queue, None)]
            n = len(items[0][0])
            deadline = loop.time() + self.window_s
            while n < self.max_batch:
                try:
                    item = await self._next(queue, deadline - loop.time())
                except (TimeoutError, asyncio.QueueEmpty):
                    break
                if n + len(item[0]) > self.max_batch:
                    self._carry = item           # starts the next batch
                    break
                items.append(item)
                n += len(item[0])
            live = [(x, f) for x, f in items if not f.done()]     # a client that gave up is not answered
            if not live:
                continue
            try:
                x = torch.cat([x for x, _ in live]) if len(live) > 1 else live[0][0]
                labels = await loop.run_in_executor(self._executor, self.fn, x)
                labels = torch.as_tensor(labels).flatten()
                if len(labels) != len(x):
                    raise RuntimeError(f"predict returned {len(labels)} labels for {len(x)} images")
            except Exception as exc:      # every request of the batch learns of it; the worker keeps serving
                log.exception("batch of %d images failed", n)
                for _, f in live:
                    if not f.done():
                        f.set_exception(exc)
                continue
            self.batches += 1
            self.images += len(x)
            start = 0
            for xi, f in live:
                part = labels[start:start + len(xi)]
                start += len(xi)
                if not f.done():
                    f.set_result(part)

    def close(self) -> None:
        """Stop the worker and its thread (a later ``submit`` starts them again)."""
        if self._worker is not None and not self._worker.done():
            try:
                self._worker.cancel()
            except RuntimeError:      # its loop is closed already
                pass
        self._worker = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


__all__ = ["MicroBatcher", "PredictFn"]
