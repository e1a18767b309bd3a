"""A warm pool of optimizer worker processes.

Each worker is a fresh Python process (started like multiprocessing's spawn, without re-importing
the parent's __main__) that imports Riskfolio-Lib once (`solve.py`), lowers its own CPU priority
(nice) and limits BLAS to one thread, then answers jobs over its own socket. The API process
never imports Riskfolio. A job gets a time limit: a worker that outlives it is killed and replaced
(the other workers and their jobs are untouched), and the caller gets `OptimizerTimeout`.

Started in the background by the domain lifespan, so the server is up before the workers are warm;
a request that arrives early waits for a worker (within its time limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import os
import socket
import struct
import subprocess
import sys
import time
from collections import deque
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import Any

log = logging.getLogger("app.optimizer.pool")

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS", "RAYON_NUM_THREADS")


SOCKET_BUFFER = 8 * 1024 * 1024  # bytes; the kernel caps it at net.core.[rw]mem_max


class OptimizerTimeout(Exception):
    pass


class OptimizerBusy(Exception):
    pass


class WorkerCrashed(Exception):
    pass


def _worker_main(conn: Connection, nice: int) -> None:
    """The worker process: import Riskfolio once, then solve jobs until told to stop."""
    for var in _THREAD_VARS:  # one core per worker: the pool size is the CPU bound
        os.environ[var] = "1"
    if nice:
        with contextlib.suppress(OSError):
            os.nice(nice)
    started = time.perf_counter()
    preloaded = "numpy" in sys.modules  # must be False: BLAS reads its thread count at import
    from app.optimizer import solve  # noqa: PLC0415 — the whole point: imported here, once
    from app.optimizer.problem import SolveError  # noqa: PLC0415

    # Riskfolio, cvxpy and pandas leave ~300 k long-lived objects: a full collection over them took
    # ~170 ms, and a solve allocates enough to trigger one every ~25 solves; freeze them out of the GC.
    # A solve's garbage is nearly all freed by reference counting, yet its churn ran ~9 young-generation
    # collections per 20-asset solve (0.6 ms, 3 %); a higher threshold lets them happen rarely.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    conn.send(("ready", os.getpid(), round((time.perf_counter() - started) * 1000, 1), preloaded))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the API process went away
        if message is None:
            return
        job_id, op, payload = message
        try:
            result = solve.dispatch(op, payload)
            reply: tuple[Any, ...] = (job_id, "ok", result)
        except SolveError as exc:
            reply = (job_id, "error", exc)
        except Exception as exc:  # noqa: BLE001 — reported to the caller, the worker lives on
            reply = (job_id, "crash", f"{type(exc).__name__}: {exc}")
        try:
            conn.send(reply)
        except (EOFError, OSError):
            return


def _send(conn: Connection, obj: Any) -> None:
    """`conn.send(obj)` in one write. multiprocessing writes the length header and a payload over
    16 KB separately, so the worker wakes for the header and then waits on the rest."""
    payload = ForkingPickler.dumps(obj)
    data = memoryview(struct.pack("!i", len(payload)) + payload)
    fd = conn.fileno()
    while data:
        data = data[os.write(fd, data):]


def _size_hint(payload: Any) -> int:
    """Roughly how many bytes a job's payload pickles to (the returns matrix dominates)."""
    if isinstance(payload, tuple):
        return sum(_size_hint(p) for p in payload)
    returns = getattr(payload, "returns", None)
    return int(getattr(returns, "nbytes", 0))


class _Worker:
    """One worker: a fresh `python -c …` process (spawned, nothing inherited but the socket), joined
    to us by a socket pair speaking multiprocessing's Connection protocol. Unlike multiprocessing's
    spawn it never re-imports the parent's __main__, so it works whatever script started the app."""

    def __init__(self, nice: int) -> None:
        parent, child = socket.socketpair()
        for sock in (parent, child):  # a whole problem fits in the buffers: one write, one read
            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        bootstrap = (f"import sys; sys.path[:0] = {[p for p in sys.path if p]!r}; "
                     "from app.optimizer.pool import _worker_entry; _worker_entry()")
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", bootstrap, str(child.fileno()), str(nice)],
                pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, close_fds=True)
        finally:
            child.close()
        self.conn = Connection(parent.detach())
        self.pid = self.process.pid
        self.started = time.monotonic()
        self.jobs = 0
        self.import_ms: float | None = None

    def join(self, timeout: float) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout)

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.process.kill()
        self.join(2)
        with contextlib.suppress(Exception):
            self.conn.close()


def _worker_entry() -> None:
    """`python -c` entry point of a worker process: argv = [fd, nice]."""
    conn = Connection(int(sys.argv[1]))
    _worker_main(conn, int(sys.argv[2]))


class OptimizerPool:
    """`await pool.run(op, payload)` → the worker's result; raises the worker's `SolveError`,
    `OptimizerTimeout`, `OptimizerBusy` (queue full / no worker in time) or `WorkerCrashed`."""

    def __init__(self, workers: int = 2, timeout: float = 30.0, *, nice: int = 10, max_queue: int | None = None) -> None:
        self.size = workers
        self.timeout = timeout
        self.nice = nice
        self.max_queue = max_queue if max_queue is not None else 8 * workers
        self._idle: deque[_Worker] = deque()
        self._all: set[_Worker] = set()
        self._waiters: deque[asyncio.Future[_Worker]] = deque()
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._started_at: float | None = None
        self._start_failures = 0
        self._preloaded = 0
        self.last_error: str | None = None
        self.stats = {"jobs": 0, "ok": 0, "errors": 0, "timeouts": 0, "crashes": 0, "recycled": 0,
                      "busy_rejections": 0, "total_ms": 0.0, "max_ms": 0.0}

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Spawn the workers in the background; returns at once. Idempotent."""
        if self._started_at is not None or self._closed:
            return
        self._started_at = time.monotonic()
        for _ in range(self.size):
            self._spawn()

    def _spawn(self) -> None:
        if self._closed:
            return
        task = asyncio.get_running_loop().create_task(self._boot())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _boot(self) -> None:
        if self._start_failures:  # back off after failed starts: 1, 2, 4 … 60 s
            await asyncio.sleep(min(60.0, 2.0 ** (self._start_failures - 1)))
        worker: _Worker | None = None
        try:
            worker = await asyncio.to_thread(_Worker, self.nice)
            self._all.add(worker)
            ready = await asyncio.to_thread(self._await_ready, worker)
        except Exception as exc:
            self._start_failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"[:500]
            log.error("optimizer worker failed to start", extra={"error": self.last_error,
                                                                 "failures": self._start_failures})
            if worker is not None:
                self._all.discard(worker)
                worker.kill()
            self._spawn()
            return
        self._start_failures = 0
        worker.import_ms = ready[2]
        if len(ready) > 3 and ready[3]:
            self._preloaded += 1
            log.warning("numpy was imported before the worker set its BLAS thread limit", extra={"pid": worker.pid})
        if self._closed:
            self._all.discard(worker)
            worker.kill()
            return
        log.info("optimizer worker ready", extra={"pid": worker.pid, "import_ms": worker.import_ms})
        self._release(worker)

    @staticmethod
    def _await_ready(worker: _Worker) -> tuple[Any, ...]:
        if not worker.conn.poll(120):
            raise TimeoutError("no ready message within 120 s")
        message = worker.conn.recv()
        if not (isinstance(message, tuple) and message and message[0] == "ready"):
            raise RuntimeError(f"unexpected first message {message!r}")
        return message

    async def stop(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(OptimizerBusy("the optimizer is shutting down"))
        for worker in list(self._all):
            with contextlib.suppress(Exception):
                worker.conn.send(None)
        deadline = time.monotonic() + 2.0
        for worker in list(self._all):
            await asyncio.to_thread(worker.join, max(0.0, deadline - time.monotonic()))
            worker.kill()
        self._all.clear()
        self._idle.clear()

    # --- scheduling --------------------------------------------------------------------------------
    def _release(self, worker: _Worker) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(worker)
                return
        self._idle.append(worker)

    async def _acquire(self, deadline: float) -> _Worker:
        if self._closed:
            raise OptimizerBusy("the optimizer is shutting down")
        if self._idle:
            return self._idle.popleft()
        if self.ready_workers == 0 and self._start_failures > 0:
            raise OptimizerBusy(f"the optimizer workers are not starting ({self.last_error})")
        if len(self._waiters) >= self.max_queue:
            self.stats["busy_rejections"] += 1
            raise OptimizerBusy(f"{len(self._waiters)} optimizations are already waiting for a worker")
        waiter: asyncio.Future[_Worker] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), max(0.0, deadline - time.monotonic()))
        except (asyncio.TimeoutError, asyncio.CancelledError):
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._release(waiter.result())  # handed a worker just too late: pass it on
            else:
                waiter.cancel()
            raise

    def _recycle(self, worker: _Worker) -> None:
        self._all.discard(worker)
        worker.kill()
        self.stats["recycled"] += 1
        self._spawn()

    async def run(self, op: str, payload: Any, timeout: float | None = None) -> Any:
        self.start()  # no-op once started (OPTIMIZER_PRESTART=false starts the pool here)
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        self.stats["jobs"] += 1
        try:
            worker = await self._acquire(deadline)
        except asyncio.TimeoutError:
            self.stats["timeouts"] += 1
            raise OptimizerTimeout(f"no optimizer worker became free within the {limit:g} s time limit") from None
        job_id = next(self._ids)
        started = time.monotonic()
        try:
            message = (job_id, op, payload)
            if _size_hint(payload) > 256 * 1024:
                # pickling and writing a large problem (hundreds of assets × years) off the event loop
                await asyncio.to_thread(_send, worker.conn, message)
            else:
                _send(worker.conn, message)
            ready = await self._readable(worker, max(0.0, deadline - time.monotonic()))
            if not ready:
                self.stats["timeouts"] += 1
                log.warning("optimizer job timed out; recycling its worker",
                            extra={"pid": worker.pid, "op": op, "limit_s": limit})
                self._recycle(worker)
                raise OptimizerTimeout(f"the optimization did not finish within the {limit:g} s time limit")
            reply = worker.conn.recv()
        except OptimizerTimeout:
            raise
        except asyncio.CancelledError:
            # The caller went away mid-job: the worker's answer would arrive on its pipe later and be
            # read as the next job's; replace it instead.
            self._recycle(worker)
            raise
        except (EOFError, OSError, BrokenPipeError) as exc:
            self.stats["crashes"] += 1
            log.error("optimizer worker died", extra={"pid": worker.pid, "error": repr(exc)})
            self._recycle(worker)
            raise WorkerCrashed("an optimizer worker died during the job") from None
        elapsed = (time.monotonic() - started) * 1000
        worker.jobs += 1
        self.stats["total_ms"] += elapsed
        self.stats["max_ms"] = max(self.stats["max_ms"], elapsed)
        rid, kind, body = reply
        if rid != job_id:  # cannot happen with one job per worker at a time; never trust it silently
            self._recycle(worker)
            raise WorkerCrashed("an optimizer worker answered the wrong job")
        self._release(worker)
        if kind == "ok":
            self.stats["ok"] += 1
            return body
        if kind == "error":
            self.stats["errors"] += 1
            raise body
        self.stats["crashes"] += 1
        log.error("optimizer job failed", extra={"op": op, "error": body})
        raise WorkerCrashed(body)

    @staticmethod
    async def _readable(worker: _Worker, timeout: float) -> bool:
        """Wait until the worker's answer starts to arrive: the event loop watches the pipe itself."""
        if worker.conn.poll(0):
            return True
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        fd = worker.conn.fileno()
        loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
        try:
            await asyncio.wait_for(ready, timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            loop.remove_reader(fd)
            os.set_blocking(fd, True)  # uvloop leaves a watched descriptor non-blocking

    # --- status ------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        done = self.stats["ok"] + self.stats["errors"]
        return {
            "workers": self.size,
            "started": self._started_at is not None,
            "ready": self.ready_workers,
            "idle": len(self._idle),
            "busy": self.ready_workers - len(self._idle),
            "queued": sum(1 for w in self._waiters if not w.done()),
            "timeout_s": self.timeout,
            "nice": self.nice,
            "jobs": self.stats["jobs"],
            "ok": self.stats["ok"],
            "errors": self.stats["errors"],
            "timeouts": self.stats["timeouts"],
            "crashes": self.stats["crashes"],
            "recycled": self.stats["recycled"],
            "busy_rejections": self.stats["busy_rejections"],
            "avg_ms": round(self.stats["total_ms"] / done, 1) if done else None,
            "max_ms": round(self.stats["max_ms"], 1),
            "last_error": self.last_error,
            "pids": sorted(w.pid for w in self._all if w.pid is not None),
        }

    @property
    def ready_workers(self) -> int:
        return sum(1 for w in self._all if w.import_ms is not None)

    async def wait_ready(self, timeout: float = 120.0) -> None:
        """For tests and benchmarks: wait until every worker has imported Riskfolio."""
        self.start()
        deadline = time.monotonic() + timeout
        while self.ready_workers < self.size:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.ready_workers}/{self.size} optimizer workers ready after {timeout} s")
            await asyncio.sleep(0.05)
