"""`GET /metrics`: Litestar's Prometheus plugin (request counts and durations) plus our own metrics.

Our metrics are produced at scrape time from the sampler's latest sample by a custom collector, so a
scrape does no I/O. The event-loop lag is also a real histogram fed by the lag monitor.

Access: from METRICS_ALLOWED_NETWORKS (the client address as `app.net.client_ip` sees it, honouring
TRUSTED_PROXIES), or with an admin's bearer token. Everyone else gets 403.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

from litestar import Response, get
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController, PrometheusMiddleware
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Histogram, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from app.errors import Forbidden
from app.net import client_ip, in_networks, parse_networks
from app.system.status import current_sampler

log = logging.getLogger("app.system")

PREFIX = "wt"

EVENT_LOOP_LAG = Histogram(
    f"{PREFIX}_event_loop_lag_seconds", "How late the event loop ran a timer (scheduling delay)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)


class RequestMetricsMiddleware(PrometheusMiddleware):
    """Litestar's Prometheus middleware — the same metrics, names, labels and values — with its per-request
    work cut: each labelled series is resolved once per (method, path template, status) and kept, where
    the plugin builds a Request, parses the URL and resolves `.labels()` four times on every request
    (~15 µs of each API call on our 2-core machine). Options we do not use fall back to the plugin's code."""

    MAX_SERIES = 10_000  # label sets kept; beyond that (a scanner's made-up methods) start over

    def __init__(self, app: Any, config: PrometheusConfig) -> None:
        super().__init__(app, config)
        self._plain = config.group_path and not (config.labels or config.exemplars or config.excluded_http_methods)
        self._running: dict[tuple[str, str], Any] = {}
        self._finished: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}

    def _labels(self, method: str, path: str, status: int) -> dict[str, str | int | float]:
        return {"method": method, "path": path, "status_code": status, "app_name": self._config.app_name}

    def _series_running(self, method: str, path: str) -> Any:
        series = self._running.get((method, path))
        if series is None:
            if len(self._running) >= self.MAX_SERIES:
                self._running.clear()
            labels = self._labels(method, path, 200)  # the plugin labels "in progress" with 200 throughout
            series = self._running[(method, path)] = self.requests_in_progress(labels).labels(*labels.values())
        return series

    def _series_finished(self, method: str, path: str, status: int) -> tuple[Any, Any, Any]:
        series = self._finished.get((method, path, status))
        if series is None:
            if len(self._finished) >= self.MAX_SERIES:
                self._finished.clear()
            labels = self._labels(method, path, status)
            values = [*labels.values()]
            errors = self.requests_error_count(labels).labels(*values) if status >= 500 else None
            series = self._finished[(method, path, status)] = (
                self.request_count(labels).labels(*values), self.request_time(labels).labels(*values), errors)
        return series

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if not self._plain:
            await super().__call__(scope, receive, send)
            return
        method = scope["method"] if scope["type"] == "http" else scope["type"]
        path = scope["path_template"]
        started = time.perf_counter()
        status = 200
        duration = 0.0

        async def timed_send(message: Any) -> None:
            nonlocal status, duration
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
            elif kind == "http.response.body":
                duration = time.perf_counter() - started
            await send(message)

        running = self._series_running(method, path)
        running.inc()
        try:
            await self.app(scope, receive, timed_send)
        finally:
            running.dec()
            count, seconds, errors = self._series_finished(method, path, status)
            if errors is not None:
                errors.inc()
            count.inc()
            seconds.observe(duration)


def prometheus_config() -> PrometheusConfig:
    # HTTP only: a WebSocket lives for hours, its "duration" would only blur the request histogram.
    return PrometheusConfig(app_name="wealth-terminal", prefix=f"{PREFIX}_http", group_path=True,
                            scopes={"http"}, exclude_unhandled_paths=True, exclude=["^/metrics$"],
                            buckets=[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
                            middleware_class=RequestMetricsMiddleware)


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        return float(value)
    return None


class SampleCollector(Collector):
    """Turns the latest system sample into metric families (no I/O at scrape time)."""

    def describe(self) -> list:  # tells the registry not to call collect() at registration
        return []

    def collect(self) -> Iterator[Any]:  # noqa: C901 - a flat list of metrics
        sampler = current_sampler()
        if sampler is None or not sampler.latest:
            return
        s: Mapping[str, Any] = sampler.latest
        host = s.get("host") or {}
        proc = s.get("process") or {}

        def gauge(name: str, doc: str, value: Any, labels: Mapping[str, str] | None = None) -> GaugeMetricFamily | None:
            v = _num(value)
            if v is None:
                return None
            g = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=list(labels or {}))
            g.add_metric(list((labels or {}).values()), v)
            return g

        info = InfoMetricFamily(f"{PREFIX}_build", "Version and instance")
        info.add_metric([], {"version": str(s.get("version")), "instance": str(s.get("instance")),
                             "python": str(s.get("python"))})
        yield info
        status = GaugeMetricFamily(f"{PREFIX}_status", "Overall status (1 for the current one)", labels=["status"])
        for name in ("ok", "degraded", "down"):
            status.add_metric([name], 1.0 if s.get("status") == name else 0.0)
        yield status
        singles = [
            gauge("uptime_seconds", "Seconds since the app started", s.get("uptime_s")),
            gauge("host_cpu_percent", "Host CPU use, all cores", (host.get("cpu") or {}).get("percent")),
            gauge("host_memory_percent", "Host memory in use", (host.get("memory") or {}).get("percent")),
            gauge("host_swap_percent", "Host swap in use", (host.get("swap") or {}).get("percent")),
            gauge("host_disk_percent", "Disk in use where DATA_DIR lives", (host.get("disk") or {}).get("percent")),
            gauge("process_rss_bytes", "Resident memory of this process", proc.get("rss_bytes")),
            gauge("process_cpu_percent", "CPU use of this process (100 = one core)", proc.get("cpu_percent")),
            gauge("process_threads", "Threads of this process", proc.get("threads")),
            gauge("process_open_files", "Open file descriptors of this process", proc.get("open_files")),
        ]
        yield from (g for g in singles if g is not None)

        cores = GaugeMetricFamily(f"{PREFIX}_host_cpu_core_percent", "Host CPU use per core", labels=["core"])
        for i, v in enumerate((host.get("cpu") or {}).get("per_core") or []):
            cores.add_metric([str(i)], float(v))
        yield cores
        load = GaugeMetricFamily(f"{PREFIX}_host_load", "Load average", labels=["period"])
        for period, v in zip(("1m", "5m", "15m"), host.get("load") or []):
            load.add_metric([period], float(v))
        yield load
        mem = GaugeMetricFamily(f"{PREFIX}_host_memory_bytes", "Host memory", labels=["kind"])
        for kind in ("total", "available", "used"):
            if (v := _num((host.get("memory") or {}).get(kind))) is not None:
                mem.add_metric([kind], v)
        yield mem
        net = GaugeMetricFamily(f"{PREFIX}_host_network_bytes_per_second", "Network rate between samples",
                                labels=["direction"])
        for direction, key in (("rx", "rx_bytes_per_s"), ("tx", "tx_bytes_per_s")):
            if (v := _num((host.get("network") or {}).get(key))) is not None:
                net.add_metric([direction], v)
        yield net

        lag = sampler.lag.snapshot()  # live, not the last sample's copy
        lag_g = GaugeMetricFamily(f"{PREFIX}_event_loop_lag_window_seconds",
                                  "Event-loop lag over the recent window", labels=["stat"])
        for stat in ("p99", "max", "mean"):
            if (v := _num(lag.get(f"lag_ms_{stat}"))) is not None:
                lag_g.add_metric([stat], v / 1000)
        yield lag_g

        db = s.get("database") or {}
        yield from filter(None, [gauge("db_up", "Database answers", db.get("ok", False))])
        if (v := _num(db.get("rtt_ms"))) is not None:
            yield from filter(None, [gauge("db_rtt_seconds", "Database round trip (SELECT 1)", v / 1000)])
        pool = GaugeMetricFamily(f"{PREFIX}_db_pool_connections", "Database pool connections", labels=["state"])
        for state in ("size", "idle", "in_use", "max"):
            if (v := _num((db.get("pool") or {}).get(state))) is not None:
                pool.add_metric([state], v)
        yield pool

        redis = s.get("redis") or {}
        if redis.get("configured"):
            yield from filter(None, [gauge("redis_up", "Redis answers", redis.get("ok", False))])
            if (v := _num(redis.get("rtt_ms"))) is not None:
                yield from filter(None, [gauge("redis_rtt_seconds", "Redis round trip (PING)", v / 1000)])

        # Every numeric field that a domain service reports, e.g. market events_per_second, queue_depth.
        svc = GaugeMetricFamily(f"{PREFIX}_service_value", "Numeric fields of ctx.services[*].status()",
                                labels=["service", "field"])
        state = GaugeMetricFamily(f"{PREFIX}_service_state", "Current state of each service (1)",
                                  labels=["service", "state"])
        for name, st in (s.get("services") or {}).items():
            if not isinstance(st, Mapping):
                continue
            for key, value in _flatten(st):
                if (v := _num(value)) is not None:
                    svc.add_metric([name, key], v)
            if isinstance(st.get("state"), str):
                state.add_metric([name, st["state"]], 1.0)
        yield svc
        yield state

        samples = CounterMetricFamily(f"{PREFIX}_system_samples", "System samples taken")
        samples.add_metric([], float(sampler.samples_taken))
        yield samples
        errors = CounterMetricFamily(f"{PREFIX}_system_sample_errors", "Failed parts of system samples",
                                     labels=["part"])
        for part, n in sampler.sample_errors.items():
            errors.add_metric([part], float(n))
        yield errors


def _flatten(d: Mapping[str, Any], prefix: str = "", depth: int = 0) -> Iterator[tuple[str, Any]]:
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and depth < 2:
            yield from _flatten(value, f"{name}.", depth + 1)
        else:
            yield name, value


COLLECTOR = SampleCollector()
REGISTRY.register(COLLECTOR)


# --- access ---------------------------------------------------------------------------------------

def _bearer(connection: ASGIConnection) -> str | None:
    header = connection.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def _is_admin(connection: ASGIConnection) -> bool:
    user = connection.scope.get("user")
    if user is not None and getattr(user, "role", None) == "admin":
        return True
    token = _bearer(connection)
    if token is None:
        return False
    try:
        from app.auth.tokens import authenticate_token
    except ImportError:  # no auth domain: only the configured networks may scrape
        return False
    try:
        user = await authenticate_token(connection.app.state.ctx, token)
    except Exception:  # bad, expired or revoked token: not an admin
        return False
    return getattr(user, "role", None) == "admin"


async def metrics_access(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    settings = connection.app.state.ctx.settings
    ip = client_ip(connection.scope, settings.trusted_proxies)
    if in_networks(ip, parse_networks(settings.metrics_allowed_networks)):
        return
    if await _is_admin(connection):
        return
    raise Forbidden("metrics are only served to the monitoring network or an admin")


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess_metrics(settings: Any) -> str:
    """WEB_WORKERS > 1, in the supervisor before it starts the workers: prometheus_client's
    multiprocess mode, so that a scrape, whichever worker answers it, sums every worker's request
    counters and histograms. The directory (PROMETHEUS_MULTIPROC_DIR, else under DATA_DIR) is emptied
    first: values of an earlier run must not be added in."""
    path = os.environ.get(MULTIPROC_ENV) or os.path.join(settings.data_dir, "prometheus-multiproc")
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if name.endswith(".db"):
            os.unlink(os.path.join(path, name))
    os.environ[MULTIPROC_ENV] = path
    return path


def mark_worker_gone() -> None:
    """At a worker's shutdown: its live gauges (requests in progress) stop counting."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(os.getpid())


class MetricsController(PrometheusController):
    """The plugin's /metrics endpoint, guarded. With PROMETHEUS_MULTIPROC_DIR set (WEB_WORKERS > 1) the
    request metrics and the loop-lag histogram are summed over the worker processes; the sample-based
    gauges are those of the worker that answers (host figures are the same in every worker)."""

    path = "/metrics"
    guards = [metrics_access]
    opt = {"exclude_from_auth": True}  # the guard decides; the scraper carries no token
    tags = ["system"]

    @get()
    async def get(self) -> Response:
        registry = REGISTRY
        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            registry.register(COLLECTOR)
        return Response(generate_latest(registry), status_code=200, headers={"Content-Type": CONTENT_TYPE_LATEST})
