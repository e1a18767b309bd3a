"""WEB_WORKERS=2: one port served by two processes under uvicorn's supervisor, each a full replica.

Checked on the real thing: both processes answer, /metrics sums the request counters of both (whichever
answers the scrape), and SIGTERM drains and stops both (our graceful shutdown runs in each)."""

from __future__ import annotations

import re
import signal

import httpx
import pytest

from tests.support.system import ServeProcess, wait_for

N_REQUESTS = 60


def _scrape(base: str) -> tuple[str, float]:
    """(the answering worker's instance, the summed count of 200s on /health/live)."""
    with httpx.Client(base_url=base, timeout=5) as client:  # a new connection: any worker may answer
        r = client.get("/metrics")
    assert r.status_code == 200, r.text
    instance = re.search(r'wt_build_info\{[^}]*instance="([^"]+)"', r.text)
    assert instance, r.text[:2000]
    total = sum(float(m.group(1)) for m in re.finditer(
        r'^wt_http_requests_total\{[^}]*path="/health/live"[^}]*status_code="200"[^}]*\} (\S+)$', r.text, re.M))
    return instance.group(1), total


@pytest.fixture
def workers(test_env, tmp_path):
    app = ServeProcess({**test_env, "WEB_WORKERS": "2", "LOG_LEVEL": "INFO", "DATA_DIR": str(tmp_path),
                        "METRICS_ALLOWED_NETWORKS": "127.0.0.1/32", "SHUTDOWN_TIMEOUT": "5"})
    app.start(wait=60)
    try:
        yield app
    finally:
        app.kill()


def test_two_workers_share_the_port_and_their_metrics(workers):
    base = workers.base_url
    seen: set[str] = set()

    def both_answer() -> bool:
        seen.add(_scrape(base)[0])
        return len(seen) == 2

    wait_for(both_answer, 60, interval=0.05, what="both workers to answer")
    before = {inst: total for inst, total in (_scrape(base) for _ in range(8))}
    assert len(set(before.values())) == 1, before  # every worker reports the same sums
    for _ in range(N_REQUESTS):
        with httpx.Client(base_url=base, timeout=5) as client:
            assert client.get("/health/live").status_code == 200
    counted: dict[str, float] = {}
    wait_for(lambda: len(counted.update([_scrape(base)]) or counted) == 2, 30, interval=0.05,
             what="a scrape from each worker")
    start = next(iter(before.values()))
    assert set(counted.values()) == {start + N_REQUESTS}, (before, counted)


def test_sigterm_drains_and_stops_every_worker(workers):
    wait_for(lambda: workers.logs().count('"started"') >= 2, 60, what="both workers' start-up")
    workers.kill(signal.SIGTERM)
    assert workers.proc.returncode == 0, workers.logs()[-3000:]
    logs = workers.logs()
    assert logs.count('"draining"') == 2, logs[-3000:]  # GracefulServer ran in both
    assert logs.count('"stopping"') == 2, logs[-3000:]
