"""Dynamic batching: concurrent requests' items joined into one pipeline call.

Requests put their (already validated) items on a queue with their call options; worker threads
take what has arrived within `max_wait_ms` of the first item, up to `max_batch_size` items, group
them by options, and run the SafeRoute pipeline once per group (one student forward per
`batch_size` items; the routed ones go to the large guard together). The pipeline is thread-safe,
so several workers overlap one batch's large-guard call with the next batch's student forward.
"""

import concurrent.futures
import queue
import threading
import time
from dataclasses import dataclass, field


@dataclass
class _Job:
    items: list
    options: tuple
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


class DynamicBatcher:
    """`submit(items, options) -> Future` of the results, batched across callers."""

    def __init__(self, pipe, max_batch_size=64, max_wait_ms=5.0, workers=2, on_batch=None):
        self.pipe, self.max_batch_size, self.max_wait = pipe, max_batch_size, max_wait_ms / 1000.0
        self.on_batch = on_batch  # called with (number of items, seconds) after every pipeline call
        self.jobs = queue.Queue()
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self._work, name=f"saferoute-batcher-{k}", daemon=True) for k in range(workers)]
        for thread in self.threads:
            thread.start()

    def submit(self, items, options=None):
        job = _Job(list(items), tuple(sorted((options or {}).items())))
        self.jobs.put(job)
        return job.future

    def close(self):
        self.stopped.set()
        for _ in self.threads:
            self.jobs.put(None)

    def _collect(self):
        first = self.jobs.get()
        if first is None:
            return []
        jobs, size = [first], len(first.items)
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
            jobs.append(job)
            size += len(job.items)
        return jobs

    def _work(self):
        while not self.stopped.is_set():
            jobs = self._collect()
            if not jobs:
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
            results = self.pipe(items, **options)
        except Exception as err:  # handed to every request of the batch; the worker keeps going
            for job in jobs:
                job.future.set_exception(err)
            return
        if self.on_batch:
            self.on_batch(len(items), time.perf_counter() - start)
        offset = 0
        for job in jobs:
            job.future.set_result(results[offset : offset + len(job.items)])
            offset += len(job.items)
