"""What /api/system/status, the `system` feed channel and /metrics report, measured off the hot path.

Two background tasks run in the system domain's lifespan:

- `LoopLagMonitor` sleeps a fixed interval over and over and records how late the event loop woke it
  up: that delay is the scheduling lag every request and WebSocket frame also pays.
- `SystemSampler` takes a sample every SYSTEM_SAMPLE_INTERVAL seconds: host (CPU total and per core,
  load, memory, swap, disk, network rates between two samples, cgroup limits when there are any),
  this process (RSS, CPU, threads, open files), database pool use and round-trip time, Redis
  round-trip time, and whatever each `ctx.services[name].status()` reports.

A request only reads the latest sample, so it costs a dictionary copy, never a psutil call or a
database round trip. The psutil calls run in a worker thread so the event loop never waits on /proc.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import os
import platform
import socket
import time
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from app import __version__
from app.context import AppContext

log = logging.getLogger("app.system")

# --- pure helpers (no I/O; unit-tested directly) ----------------------------------------------------


def rate(previous: float | None, current: float, elapsed: float) -> float | None:
    """Per-second rate of a cumulative counter between two samples; None without a previous sample
    or when the counter went backwards (an interface reset)."""
    if previous is None or elapsed <= 0 or current < previous:
        return None
    return (current - previous) / elapsed


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of the values; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def rounded(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


# The feed states the market service reports, mapped to the overall health they imply.
_BAD_FEED_STATES = {"auth_failed", "failed", "error", "stopped"}
_WARN_FEED_STATES = {"reconnecting", "disconnected", "connecting", "authenticating"}


def assess(sample: Mapping[str, Any]) -> tuple[str, list[str]]:
    """Overall status ("ok", "degraded" or "down") and the problems that make it so."""
    problems: list[str] = []
    down = False
    db = sample.get("database") or {}
    if not db.get("ok", False):
        problems.append(f"database unreachable ({db.get('error', 'no answer')})")
        down = True
    redis = sample.get("redis") or {}
    if redis.get("configured") and not redis.get("ok", False):
        problems.append(f"redis unreachable ({redis.get('error', 'no answer')}): cross-replica features degraded")
    for name, status in (sample.get("services") or {}).items():
        if not isinstance(status, Mapping):
            continue
        if "error" in status and len(status) == 1:
            problems.append(f"{name}: status unavailable ({status['error']})")
            continue
        state = str(status.get("state", "")).lower()
        if state in _BAD_FEED_STATES:
            problems.append(f"{name}: {state}")
        elif state in _WARN_FEED_STATES:
            problems.append(f"{name}: {state}")
    lag = (sample.get("event_loop") or {}).get("lag_ms_p99")
    if lag is not None and lag > 500:
        problems.append(f"event loop lag p99 {lag:.0f} ms")
    if down:
        return "down", problems
    return ("degraded" if problems else "ok"), problems


# The keys of a service's status copied into the summary everyone sees (the rest is admin-only).
SUMMARY_SERVICE_KEYS = ("feed", "state", "connected", "ingesting", "events_per_second", "written_per_second",
                        "lag_ms", "queue_depth", "dropped", "ws_clients", "ws_users", "last_batch_lag_ms",
                        "workers", "ready", "busy", "queued", "timeouts", "crashes")


def summarize(sample: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a sample any signed-in user may see (what the dashboard's SYSTEM STATUS box needs)."""
    host = sample.get("host") or {}
    services = {}
    for name, status in (sample.get("services") or {}).items():
        if isinstance(status, Mapping):
            services[name] = {k: status[k] for k in SUMMARY_SERVICE_KEYS if k in status}
    return {
        "status": sample.get("status"),
        "problems": sample.get("problems", []),
        "version": sample.get("version"),
        "sampled_at": sample.get("sampled_at"),
        "uptime_s": sample.get("uptime_s"),
        "cpu_percent": (host.get("cpu") or {}).get("percent"),
        "cpu_count": (host.get("cpu") or {}).get("count"),
        "load": host.get("load"),
        "memory_percent": (host.get("memory") or {}).get("percent"),
        "network": host.get("network"),
        "event_loop_lag_ms": (sample.get("event_loop") or {}).get("lag_ms_p99"),
        "database": {k: v for k, v in (sample.get("database") or {}).items() if k in ("ok", "rtt_ms")},
        "redis": {k: v for k, v in (sample.get("redis") or {}).items() if k in ("ok", "rtt_ms", "kind")},
        "services": services,
    }


# --- event-loop lag ---------------------------------------------------------------------------------


class LoopLagMonitor:
    """Measures how late the event loop runs a timer: sleep `interval`, compare with the clock."""

    def __init__(self, interval: float = 0.1, window: float = 10.0) -> None:
        self.interval = interval
        self.samples: deque[float] = deque(maxlen=max(10, int(window / interval)))
        self.worst = 0.0
        self.total_samples = 0
        self.observers: list[Any] = []  # callables(lag_seconds), e.g. a Prometheus histogram
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        # perf_counter, not loop.time(): uvloop's clock has millisecond resolution.
        clock = time.perf_counter
        while True:
            started = clock()
            await asyncio.sleep(self.interval)
            lag = max(0.0, clock() - started - self.interval)
            self.samples.append(lag)
            self.total_samples += 1
            self.worst = max(self.worst, lag)
            for observe in self.observers:
                observe(lag)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="system-loop-lag")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def snapshot(self) -> dict[str, float | None]:
        values = list(self.samples)
        ms = [v * 1000 for v in values]
        return {
            "lag_ms_last": rounded(ms[-1] if ms else None, 3),
            "lag_ms_mean": rounded(sum(ms) / len(ms) if ms else None, 3),
            "lag_ms_p99": rounded(percentile(ms, 99), 3),
            "lag_ms_max": rounded(max(ms) if ms else None, 3),
            "lag_ms_max_ever": round(self.worst * 1000, 3),
            "window_s": round(len(values) * self.interval, 1),
            "probe_interval_ms": self.interval * 1000,
        }


# --- host and process (blocking psutil calls: run in a thread) ---------------------------------------


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    if text in ("max", ""):
        return None
    try:
        return int(text.split()[0])
    except ValueError:
        return None


def cgroup_limits() -> dict[str, Any] | None:
    """The container's memory and CPU limits (cgroup v2), when it has any."""
    base = "/sys/fs/cgroup"
    if not os.path.exists(f"{base}/cgroup.controllers"):
        return None
    out: dict[str, Any] = {"memory_limit_bytes": _read_int(f"{base}/memory.max"),
                           "memory_current_bytes": _read_int(f"{base}/memory.current")}
    try:
        quota, period = Path(f"{base}/cpu.max").read_text().split()
        out["cpu_limit_cores"] = None if quota == "max" else round(int(quota) / int(period), 2)
    except (OSError, ValueError):
        out["cpu_limit_cores"] = None
    return out


class HostProbe:
    """Keeps the psutil objects whose CPU percentages are measured between two calls."""

    def __init__(self, disk_path: str) -> None:
        self.disk_path = disk_path if os.path.exists(disk_path) else "/"
        self.process = psutil.Process()
        self._last_net: tuple[float, int, int] | None = None
        self._last_disk_io: tuple[float, int, int] | None = None
        # Prime the "since the last call" CPU counters so the first real sample means something.
        psutil.cpu_percent(percpu=True)
        psutil.cpu_percent()
        self.process.cpu_percent()

    def sample(self) -> tuple[dict[str, Any], dict[str, Any]]:
        now = time.monotonic()
        per_core = psutil.cpu_percent(percpu=True)
        total = psutil.cpu_percent()
        try:
            load = [round(x, 2) for x in psutil.getloadavg()]
        except (OSError, AttributeError):
            load = None
        vm = psutil.virtual_memory()
        sw = psutil.swap_memory()
        du = psutil.disk_usage(self.disk_path)
        net = psutil.net_io_counters()
        rx_rate = tx_rate = None
        if net is not None:
            if self._last_net is not None:
                t0, rx0, tx0 = self._last_net
                rx_rate = rate(rx0, net.bytes_recv, now - t0)
                tx_rate = rate(tx0, net.bytes_sent, now - t0)
            self._last_net = (now, net.bytes_recv, net.bytes_sent)
        read_rate = write_rate = None
        try:
            dio = psutil.disk_io_counters()
        except (OSError, RuntimeError):
            dio = None
        if dio is not None:
            if self._last_disk_io is not None:
                t0, r0, w0 = self._last_disk_io
                read_rate = rate(r0, dio.read_bytes, now - t0)
                write_rate = rate(w0, dio.write_bytes, now - t0)
            self._last_disk_io = (now, dio.read_bytes, dio.write_bytes)
        host = {
            "hostname": socket.gethostname(),
            "boot_time": psutil.boot_time(),
            "cpu": {"percent": total, "per_core": per_core, "count": psutil.cpu_count() or len(per_core)},
            "load": load,
            "memory": {"total": vm.total, "available": vm.available, "used": vm.total - vm.available,
                       "percent": vm.percent},
            "swap": {"total": sw.total, "used": sw.used, "percent": sw.percent},
            "disk": {"path": self.disk_path, "total": du.total, "used": du.used, "free": du.free,
                     "percent": du.percent, "read_bytes_per_s": rounded(read_rate, 1),
                     "write_bytes_per_s": rounded(write_rate, 1)},
            "network": {"rx_bytes_per_s": rounded(rx_rate, 1), "tx_bytes_per_s": rounded(tx_rate, 1),
                        "rx_bytes_total": net.bytes_recv if net else None,
                        "tx_bytes_total": net.bytes_sent if net else None},
            "cgroup": cgroup_limits(),
        }
        proc = self.process
        with proc.oneshot():
            mem = proc.memory_info()
            cpu_times = proc.cpu_times()
            try:
                open_files = proc.num_fds()
            except (AttributeError, psutil.Error):
                open_files = len(proc.open_files())
            process = {
                "pid": proc.pid,
                "rss_bytes": mem.rss,
                "vms_bytes": mem.vms,
                "cpu_percent": proc.cpu_percent(),
                "cpu_seconds": round(cpu_times.user + cpu_times.system, 2),
                "threads": proc.num_threads(),
                "open_files": open_files,
                "started_at": proc.create_time(),
            }
        return host, process


# --- the sampler ------------------------------------------------------------------------------------


async def _call_status(service: Any, timeout: float) -> dict[str, Any]:
    status = getattr(service, "status", None)
    if status is None:
        return {"error": "no status()"}
    try:
        result = status()
        if inspect.isawaitable(result):
            async with asyncio.timeout(timeout):
                result = await result
        return dict(result) if isinstance(result, Mapping) else {"value": result}
    except Exception as exc:  # a broken service must not break the status page
        return {"error": type(exc).__name__}


class SystemSampler:
    """Background task keeping the latest system sample; requests only read `latest`."""

    def __init__(self, ctx: AppContext, interval: float | None = None, lag: LoopLagMonitor | None = None) -> None:
        self.ctx = ctx
        self.interval = interval or ctx.settings.system_sample_interval
        self.lag = lag or LoopLagMonitor()
        self.probe = HostProbe(ctx.settings.data_dir)
        self.latest: dict[str, Any] = {}
        self.samples_taken = 0
        self.sample_errors: dict[str, int] = {}
        self.last_sample_ms: float | None = None
        self.instance = f"{socket.gethostname()}:{os.getpid()}"
        self._task: asyncio.Task[None] | None = None
        self._woken = asyncio.Event()

    def _error(self, part: str) -> None:
        self.sample_errors[part] = self.sample_errors.get(part, 0) + 1

    async def _database(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pool": self.ctx.db.pool_stats()}
        out["pool"]["in_use"] = out["pool"]["size"] - out["pool"]["idle"]
        try:
            out["rtt_ms"] = round(await self.ctx.db.ping(timeout=min(2.0, self.interval * 2)), 3)
            out["ok"] = True
        except Exception as exc:  # unreachable, timed out, restarting: all mean "not ok"
            out.update(ok=False, error=type(exc).__name__, rtt_ms=None)
            self._error("database")
        return out

    async def _redis(self) -> dict[str, Any]:
        cache = self.ctx.cache
        out: dict[str, Any] = {"kind": cache.kind, "configured": bool(self.ctx.settings.redis_url)}
        try:
            async with asyncio.timeout(min(2.0, self.interval * 2)):
                rtt = await cache.ping()
            out.update(ok=True, rtt_ms=round(rtt, 3) if cache.kind == "redis" else None)
        except Exception as exc:
            out.update(ok=False, error=type(exc).__name__, rtt_ms=None)
            self._error("redis")
        return out

    async def sample_once(self) -> dict[str, Any]:
        started = time.perf_counter()
        host_task = asyncio.create_task(asyncio.to_thread(self.probe.sample))
        db, redis = await asyncio.gather(self._database(), self._redis())
        services: dict[str, Any] = {}
        for name, service in list(self.ctx.services.items()):
            if service is self:
                continue
            services[name] = await _call_status(service, timeout=1.0)
        try:
            host, process = await host_task
        except Exception:
            log.exception("host sample failed")
            self._error("host")
            host, process = self.latest.get("host", {}), self.latest.get("process", {})
        now = time.time()
        sample: dict[str, Any] = {
            "version": __version__,
            "instance": self.instance,
            "python": platform.python_version(),
            "env": self.ctx.settings.env,
            "sampled_at": now,
            "uptime_s": round(now - self.ctx.started_at, 1),
            "host": host,
            "process": process,
            "event_loop": self.lag.snapshot(),
            "database": db,
            "redis": redis,
            "services": services,
        }
        sample["status"], sample["problems"] = assess(sample)
        self.samples_taken += 1
        self.last_sample_ms = round((time.perf_counter() - started) * 1000, 2)
        sample["sampler"] = {"interval_s": self.interval, "samples": self.samples_taken,
                             "last_sample_ms": self.last_sample_ms, "errors": dict(self.sample_errors)}
        self.latest = sample
        return sample

    async def _run(self) -> None:
        while True:
            try:
                await self.sample_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the sampler die silently; say so and keep sampling
                log.exception("system sample failed")
                self._error("sample")
            try:
                await asyncio.wait_for(self._woken.wait(), self.interval)
            except asyncio.TimeoutError:
                pass
            self._woken.clear()

    def wake(self) -> None:
        """Take the next sample now (tests, and the first request after start-up)."""
        self._woken.set()

    async def start(self) -> None:
        self.lag.start()
        await self.sample_once()  # a request right after start-up already sees real numbers
        self._task = asyncio.create_task(self._run(), name="system-sampler")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.lag.stop()

    def status(self) -> dict[str, Any]:
        """The sampler's own health (it is a long-running service too)."""
        return {"state": "running" if self._task and not self._task.done() else "stopped",
                "samples": self.samples_taken, "last_sample_ms": self.last_sample_ms}

    def _current(self) -> dict[str, Any]:
        # The loop lag is read live (a sort of ~100 floats): it is the one number that should be fresh.
        return {**self.latest, "event_loop": self.lag.snapshot()}

    def full(self) -> dict[str, Any]:
        return self._current()

    def summary(self) -> dict[str, Any]:
        out = summarize(self._current())
        out["instance"] = self.instance
        return out


# --- the running sampler ----------------------------------------------------------------------------
# One app per process in production; tests may run several at once: the newest live one reports.
_ACTIVE: list[weakref.ReferenceType[SystemSampler]] = []


def activate(sampler: SystemSampler) -> None:
    _ACTIVE.append(weakref.ref(sampler))


def deactivate(sampler: SystemSampler) -> None:
    _ACTIVE[:] = [r for r in _ACTIVE if r() is not None and r() is not sampler]


def current_sampler() -> SystemSampler | None:
    for ref in reversed(_ACTIVE):
        if (sampler := ref()) is not None:
            return sampler
    return None
