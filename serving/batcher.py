"""Dynamic batching with bounds: concurrent requests' items joined into one pipeline call, a bounded
queue, deadlines, per-request isolation, routed inputs waiting off the student's threads, and a
shutdown that answers or refuses every accepted request.

Requests put their (already validated) items on a queue with their call options and deadline;
`workers` threads take what has arrived within `max_wait_ms` of the first item, up to
`max_batch_size` items, group them by options, and run the student's part of the SafeRoute
pipeline once per group (`pipe.student_pass`). Requests the student decided are answered at once;
the routed remainder of a batch goes to `large_guard_workers` other threads that ask the large
guard, so a slow or failing large guard never holds the threads that serve student-only traffic.

Bounds, each refused with its own exception (the server turns them into HTTP statuses):
- `max_queue` items waiting for a student thread, or more queued work than the request's deadline
  leaves time for (at the measured rate of the student passes): `submit` raises `QueueFull` (503
  with `Retry-After`, from that rate) instead of queueing a request that would time out;
- `max_large_guard_queue` items waiting on the large guard: past it a batch's routed inputs get
  the call's `on_large_guard_error` policy at once (`LargeGuardBusy` under "raise");
- a job whose deadline passed before its batch ran, or before its large-guard turn came, is
  dropped with `DeadlineExceeded` (its client got its 504 already); a cancelled job is skipped.

Isolation: when a batch fails for any reason but the large guard's, each of its requests is run
again alone, so a request that still fails fails by itself and the others are answered. A large
guard failure under the policy "raise" fails the requests that waited on it, never the ones the
student decided. After `close()` every new `submit` raises `ShuttingDown`; accepted requests are
answered until `timeout`, and the rest refused with `ShuttingDown`: none is left unresolved.
"""

import concurrent.futures
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Optional


class QueueFull(RuntimeError):
    """The batcher holds `max_queue` items already: the request is shed (HTTP 503 + Retry-After)."""

    http_status = 503

    def __init__(self, message, retry_after):
        super().__init__(message)
        self.retry_after = retry_after


class ShuttingDown(RuntimeError):
    """The batcher is closing: the request is refused (HTTP 503)."""

    http_status = 503
    retry_after = 1


class DeadlineExceeded(TimeoutError):
    """The request's deadline passed before it was answered (HTTP 504)."""

    http_status = 504


class LargeGuardBusy(RuntimeError):
    """More routed inputs wait on the large guard than `max_large_guard_queue`: the policy applies."""

    http_status = 503
    retry_after = 1


ERROR_TYPES = {QueueFull: "overloaded", ShuttingDown: "shutting_down", DeadlineExceeded: "deadline_exceeded",
               LargeGuardBusy: "large_guard_unavailable"}


def failure(error):
    """(HTTP status, error type, Retry-After seconds or None) of a request that failed for the
    server's sake (shed, shutting down, past its deadline) or the large guard's (a `LargeGuardError`
    under the policy "raise", of whichever copy of the remote code: read from `http_status`); None
    for any other error."""
    status = getattr(error, "http_status", None)
    if status is None:
        return None
    kind = next((k for cls, k in ERROR_TYPES.items() if isinstance(error, cls)),
                "large_guard_unavailable" if status == 503 else "large_guard_bad_response")
    return status, kind, getattr(error, "retry_after", None) or (1 if status == 503 else None)


@dataclass(eq=False)
class _Job:
    items: list
    options: tuple
    deadline: Optional[float] = None  # time.monotonic() after which nobody waits for the answer
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)

    def expired(self, now):
        return self.deadline is not None and now > self.deadline


def _settle(job, result=None, error=None):
    """Answer a job once (a job answered or cancelled already is left as it is)."""
    try:
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)
    except concurrent.futures.InvalidStateError:
        pass


class DynamicBatcher:
    """`submit(items, options, deadline) -> Future` of the results, batched across callers."""

    def __init__(self, pipe, max_batch_size=64, max_wait_ms=5.0, workers=2, on_batch=None, max_queue=1024,
                 large_guard_workers=2, max_large_guard_queue=256):
        for name, value in (("max_batch_size", max_batch_size), ("workers", workers), ("max_queue", max_queue),
                            ("large_guard_workers", large_guard_workers), ("max_large_guard_queue", max_large_guard_queue)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
        self.pipe, self.max_batch_size, self.max_wait = pipe, max_batch_size, max_wait_ms / 1000.0
        self.max_queue, self.max_large_guard_queue = max_queue, max_large_guard_queue
        self.on_batch = on_batch  # called with (number of items, seconds) after every student pass
        self.jobs = queue.Queue()
        self.lock = threading.Lock()  # guards the counts below
        self.queued, self.large_waiting, self.live, self.closing = 0, 0, set(), False
        self.rate = None  # items per second of one student pass (a moving average): admission and Retry-After
        self.stopped = threading.Event()
        self.large_pool = concurrent.futures.ThreadPoolExecutor(large_guard_workers, thread_name_prefix="saferoute-large-guard")
        self.threads = [threading.Thread(target=self._work, name=f"saferoute-batcher-{k}", daemon=True) for k in range(workers)]
        for thread in self.threads:
            thread.start()

    # -- the callers' side --------------------------------------------------------------------------
    def submit(self, items, options=None, deadline=None):
        """Queue one request's items; `deadline` is a `time.monotonic()` time. Raises `QueueFull` or
        `ShuttingDown` at once instead of queueing what cannot be served."""
        job = _Job(list(items), tuple(sorted((options or {}).items())), deadline)
        with self.lock:
            if self.closing:
                raise ShuttingDown("The server is shutting down and takes no new requests.")
            if self.queued + len(job.items) > self.max_queue:
                raise QueueFull(f"The server is at capacity ({self.queued} inputs queued, max_queue={self.max_queue}); "
                                "retry later.", self._retry_after())
            wait = (self.queued + len(job.items)) / (self.rate * len(self.threads)) if self.rate else 0.0
            if deadline is not None and time.monotonic() + wait > deadline:
                raise QueueFull(f"The server is at capacity: about {wait:.1f} s of work is queued ({self.queued} inputs), "
                                "more than this request's deadline leaves; retry later.", self._retry_after())
            self.queued += len(job.items)
            self.live.add(job)
        job.future.add_done_callback(lambda _: self._forget(job))
        self.jobs.put(job)
        return job.future

    def _retry_after(self):
        """Seconds until the queue has drained at the measured rate (1 to 30)."""
        return min(30, max(1, math.ceil(self.queued / (self.rate * len(self.threads))))) if self.rate else 1

    def _forget(self, job):
        with self.lock:
            self.live.discard(job)

    def stats(self):
        with self.lock:
            return {"queued_inputs": self.queued, "large_guard_waiting_inputs": self.large_waiting, "open_requests": len(self.live),
                    "closing": self.closing}

    def close(self, timeout=30.0):
        """Take no new request; answer the accepted ones for up to `timeout` seconds; refuse the rest
        with `ShuttingDown`; stop the threads. Every accepted request is resolved on return."""
        with self.lock:
            self.closing = True
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                if not self.live:
                    break
            time.sleep(0.01)
        self.stopped.set()
        for _ in self.threads:
            self.jobs.put(None)
        with self.lock:
            left = list(self.live)
        for job in left:
            _settle(job, error=ShuttingDown(f"The server shut down before this request was answered (after {timeout:g} s)."))
        self.large_pool.shutdown(wait=False, cancel_futures=True)

    # -- the student threads --------------------------------------------------------------------------
    def _take(self, job):
        """Whether a job taken from the queue is still to be run (not cancelled, not expired)."""
        with self.lock:
            self.queued -= len(job.items)
        if not job.future.set_running_or_notify_cancel():
            return False  # its client gave up and cancelled it
        if job.expired(time.monotonic()):
            _settle(job, error=DeadlineExceeded("The request's deadline passed while it was queued."))
            return False
        return True

    def _collect(self):
        first = self.jobs.get()
        if first is None:
            return None
        jobs, size = ([first], len(first.items)) if self._take(first) else ([], 0)
        deadline = time.perf_counter() + self.max_wait
        while size < self.max_batch_size:
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            try:
                job = self.jobs.get(timeout=left)
            except queue.Empty:
                break
            if job is None:
                self.jobs.put(None)  # for another worker
                break
            if self._take(job):
                jobs.append(job)
                size += len(job.items)
        return jobs

    def _work(self):
        while not self.stopped.is_set():
            jobs = self._collect()
            if jobs is None:
                return
            groups = {}
            for job in jobs:
                groups.setdefault(job.options, []).append(job)
            for options, members in groups.items():
                self._run(dict(options), members)

    def _run(self, options, jobs):
        items = [item for job in jobs for item in job.items]
        start = time.perf_counter()
        try:
            call = self.pipe.student_pass(items, **options)
        except Exception as err:
            if len(jobs) == 1:
                _settle(jobs[0], error=err)
            else:  # one request's failure is its own: run each alone
                for job in jobs:
                    self._run(options, [job])
            return
        seconds = time.perf_counter() - start
        self.rate = len(items) / seconds if self.rate is None else 0.8 * self.rate + 0.2 * len(items) / max(seconds, 1e-6)
        if self.on_batch:
            self.on_batch(len(items), seconds)
        waiting, offset = [], 0
        for job in jobs:
            part = call.results[offset : offset + len(job.items)]
            if all(r is not None for r in part):
                _settle(job, part)
            else:
                waiting.append((job, offset, offset + len(job.items)))
            offset += len(job.items)
        if not waiting:
            return
        n = len(call.waiting)
        with self.lock:
            busy = self.large_waiting + n > self.max_large_guard_queue
            if not busy:
                self.large_waiting += n
        if busy:
            self._answer(call, waiting, options, lambda: call.fail(LargeGuardBusy(
                f"{self.large_waiting} routed inputs already wait on the large guard (max_large_guard_queue={self.max_large_guard_queue}).")))
            return
        try:
            self.large_pool.submit(self._large_guard_turn, call, waiting, options, n)
        except RuntimeError:  # closed meanwhile
            with self.lock:
                self.large_waiting -= n
            for job, _, _ in waiting:
                _settle(job, error=ShuttingDown("The server shut down before the large guard was asked."))

    # -- the large-guard threads ------------------------------------------------------------------------
    def _large_guard_turn(self, call, waiting, options, n):
        try:
            if all(job.expired(time.monotonic()) for job, _, _ in waiting):
                for job, _, _ in waiting:
                    _settle(job, error=DeadlineExceeded("The request's deadline passed while it waited on the large guard."))
                return
            self._answer(call, waiting, options, call.finish)
        finally:
            with self.lock:
                self.large_waiting -= n

    def _answer(self, call, waiting, options, finish):
        """Answer the routed requests of a batch with `finish()`'s results; on a failure, the large
        guard's (policy "raise") fails them all, any other one is isolated by running each alone."""
        try:
            results = finish()
        except Exception as err:
            if getattr(err, "http_status", None) or len(waiting) == 1:
                for job, _, _ in waiting:
                    _settle(job, error=err)
            else:
                for job, _, _ in waiting:
                    try:
                        _settle(job, self.pipe(job.items, **options))
                    except Exception as alone:
                        _settle(job, error=alone)
            return
        for job, lo, hi in waiting:
            _settle(job, results[lo:hi])
