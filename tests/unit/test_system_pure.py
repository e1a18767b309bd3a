"""Pure parts of the system domain: rates, percentiles, the overall assessment, the summary, lag probe."""

import asyncio
import time

from hypothesis import given
from hypothesis import strategies as st

from app.system.metrics import _flatten
from app.system.status import LoopLagMonitor, assess, percentile, rate, summarize


def test_rate_between_samples():
    assert rate(None, 100, 1.0) is None
    assert rate(100, 350, 2.5) == 100.0
    assert rate(100, 50, 1.0) is None  # counter reset
    assert rate(100, 200, 0) is None


@given(st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=1, max_size=200),
       st.floats(min_value=0, max_value=100))
def test_percentile_is_an_element_between_min_and_max(values, q):
    p = percentile(values, q)
    assert p in values
    assert min(values) <= p <= max(values)
    assert percentile(values, 100) == max(values)


def test_percentile_nearest_rank():
    values = list(range(1, 101))
    assert percentile(values, 99) == 99
    assert percentile(values, 50) == 50
    assert percentile([], 99) is None


def _sample(**over):
    base = {"database": {"ok": True, "rtt_ms": 1.0}, "redis": {"configured": True, "ok": True},
            "services": {}, "event_loop": {"lag_ms_p99": 2.0}}
    base.update(over)
    return base


def test_assess_ok_degraded_down():
    assert assess(_sample()) == ("ok", [])
    status, problems = assess(_sample(redis={"configured": True, "ok": False, "error": "CacheUnavailable"}))
    assert status == "degraded" and "redis unreachable" in problems[0]
    # Redis that is not configured (in-process cache) is never a problem.
    assert assess(_sample(redis={"configured": False, "ok": True}))[0] == "ok"
    status, problems = assess(_sample(database={"ok": False, "error": "ConnectionRefusedError"}))
    assert status == "down" and "database unreachable" in problems[0]
    status, problems = assess(_sample(services={"market": {"state": "auth_failed"}}))
    assert status == "degraded" and problems == ["market: auth_failed"]
    assert assess(_sample(services={"market": {"state": "connected"}}))[0] == "ok"
    status, problems = assess(_sample(services={"optimizer": {"error": "RuntimeError"}}))
    assert status == "degraded" and "optimizer" in problems[0]
    assert assess(_sample(event_loop={"lag_ms_p99": 800.0}))[0] == "degraded"


def test_summary_hides_detail():
    sample = _sample(
        status="ok", problems=[], version="1.2.3", sampled_at=1.0, uptime_s=5.0,
        host={"cpu": {"percent": 12.5, "per_core": [10, 15], "count": 2}, "load": [0.1, 0.2, 0.3],
              "memory": {"percent": 40.0, "total": 10}, "network": {"rx_bytes_per_s": 1.0, "tx_bytes_per_s": 2.0},
              "swap": {"percent": 0}},
        process={"rss_bytes": 1}, database={"ok": True, "rtt_ms": 1.5, "pool": {"size": 2}},
        services={"market": {"state": "connected", "events_per_second": 50.0, "secret_detail": "x"}},
    )
    s = summarize(sample)
    assert s["cpu_percent"] == 12.5 and s["memory_percent"] == 40.0 and s["load"] == [0.1, 0.2, 0.3]
    assert s["database"] == {"ok": True, "rtt_ms": 1.5}
    assert s["services"]["market"] == {"state": "connected", "events_per_second": 50.0}
    assert "process" not in s and "per_core" not in str(s) and "pool" not in str(s)


def test_flatten_nested_status():
    assert dict(_flatten({"a": 1, "b": {"c": 2, "d": {"e": 3}}})) == {"a": 1, "b.c": 2, "b.d.e": 3}


async def test_loop_lag_monitor_sees_a_blocked_loop():
    monitor = LoopLagMonitor(interval=0.01, window=1.0)
    monitor.start()
    try:
        await asyncio.sleep(0.05)
        time.sleep(0.2)  # block the loop on purpose
        await asyncio.sleep(0.05)
        snap = monitor.snapshot()
        assert snap["lag_ms_max"] >= 150, snap
        assert monitor.total_samples >= 3
    finally:
        await monitor.stop()
    idle = LoopLagMonitor(interval=0.01, window=1.0)
    idle.start()
    try:
        await asyncio.sleep(0.2)
        assert idle.snapshot()["lag_ms_p99"] < 100
    finally:
        await idle.stop()
