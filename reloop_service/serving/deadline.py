"""Admin database work with a deadline, off the threadpool that predictions and health checks share.

A frozen database server (SIGSTOP, a stuck VM) answers nothing, not even a cancel request, so a thread that
talks to it can hang for as long as the server is frozen. Admin routes therefore run their registry work in
daemon threads of their own (at most ``ADMIN_THREADS`` at once, so a hung database ties up a bounded number
and never the anyio threadpool large predictions use) and wait for it until the request's deadline. The work
gets the same deadline: ``session_scope`` rolls a transaction back instead of committing it when the deadline
has passed, so an answer of 503 "not applied" stays true after the database comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from reloop_service.registry.errors import DeadlineExceededError

T = TypeVar("T")
ADMIN_THREADS = 8
# Past the deadline the work is refused at its next check; this much more waiting lets an answer that is
# already on its way (the COMMIT was sent just before the deadline) reach the client.
GRACE_S = 1.0


class AdminWorkers:
    """Runs blocking callables in daemon threads, at most ``size`` at a time, awaited with a deadline."""

    def __init__(self, size: int = ADMIN_THREADS) -> None:
        self._slots = asyncio.Semaphore(size)
        self._count_lock = threading.Lock()
        self.running = 0  # threads still working, including those whose request already gave up

    def _started(self, delta: int) -> None:
        with self._count_lock:
            self.running += delta

    async def run(self, fn: Callable[[float], T], *, timeout_s: float, what: str) -> T:
        """``fn(deadline)`` in a worker thread; ``DeadlineExceededError`` (503) if it has not answered by
        ``timeout_s`` (plus a short grace). ``deadline`` is a ``time.monotonic()`` value."""
        deadline = time.monotonic() + timeout_s
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout_s)
        except TimeoutError:
            raise _late(what, timeout_s) from None
        future: asyncio.Future[T] = loop.create_future()

        def deliver(result: T | None, error: BaseException | None) -> None:
            self._slots.release()
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)  # type: ignore[arg-type]

        def work() -> None:
            result: T | None = None
            error: BaseException | None = None
            try:
                result = fn(deadline)
            except BaseException as exc:  # delivered to the awaiting request
                error = exc
            finally:
                self._started(-1)
            with contextlib.suppress(RuntimeError):  # the loop is gone (shutdown): nobody waits any more
                loop.call_soon_threadsafe(deliver, result, error)

        self._started(+1)
        threading.Thread(target=work, name="admin-db", daemon=True).start()
        remaining = max(0.0, deadline - time.monotonic()) + GRACE_S
        try:
            return await asyncio.wait_for(asyncio.shield(future), remaining)
        except TimeoutError:
            raise _late(what, timeout_s) from None


def _late(what: str, timeout_s: float) -> DeadlineExceededError:
    return DeadlineExceededError(
        f"{what}: the registry database did not answer within {timeout_s:g} s; nothing was changed, and the "
        "change will not be applied later"
    )
