"""The worker pool: warm workers, errors across the process boundary, time limits that recycle only
the worker at fault."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from app.optimizer.pool import OptimizerBusy, OptimizerPool, OptimizerTimeout
from app.optimizer.problem import Problem, SolveError


@pytest.fixture(scope="module")
async def pool():
    p = OptimizerPool(workers=2, timeout=20.0, max_queue=4)
    p.start()
    await p.wait_ready(180)
    yield p
    await p.stop()


def problem(n: int = 10, **kw) -> Problem:
    rng = np.random.default_rng(n)
    return Problem(symbols=[f"S{i}" for i in range(n)], returns=rng.normal(0.0006, 0.01, (300, n)), **kw)


async def test_solves_in_a_worker(pool: OptimizerPool) -> None:
    out = await pool.run("optimize", problem())
    assert out["status"] == "optimal" and out["solver"] == "CLARABEL"
    assert sum(out["weights"].values()) == pytest.approx(1.0)
    assert os.getpid() not in pool.status()["pids"]


async def test_solve_error_crosses_the_process_boundary(pool: OptimizerPool) -> None:
    with pytest.raises(SolveError) as exc:
        await pool.run("optimize", problem(objective="min_risk", target_return=5.0))
    assert exc.value.field == "constraints.target_return" and exc.value.status == 422
    assert exc.value.extra["solver_status"] == "infeasible"


async def test_timeout_recycles_only_the_stuck_worker(pool: OptimizerPool) -> None:
    before = set(pool.status()["pids"])
    recycled = pool.status()["recycled"]
    slow = asyncio.create_task(pool.run("sleep", 30, timeout=0.5))
    fine = asyncio.create_task(pool.run("sleep", 0.8, timeout=10))  # the other worker, still busy
    with pytest.raises(OptimizerTimeout):
        await slow
    assert await fine == {"slept": 0.8}  # the other job was not disturbed
    assert pool.status()["recycled"] == recycled + 1
    await pool.wait_ready(180)
    after = set(pool.status()["pids"])
    assert len(after) == 2 and len(before - after) == 1  # exactly one process replaced
    assert (await pool.run("optimize", problem()))["status"] == "optimal"  # the pool still works


async def test_a_cancelled_job_does_not_leave_its_answer_for_the_next(pool: OptimizerPool) -> None:
    recycled = pool.status()["recycled"]
    task = asyncio.create_task(pool.run("sleep", 1.0))
    await asyncio.sleep(0.2)
    task.cancel()  # e.g. the client went away
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.status()["recycled"] == recycled + 1
    await pool.wait_ready(180)
    results = await asyncio.gather(*[pool.run("ping", None) for _ in range(4)])
    assert results == [{"pong": True}] * 4  # nobody receives the stale {"slept": 1.0}


async def test_jobs_queue_for_a_worker_and_a_full_queue_is_refused(pool: OptimizerPool) -> None:
    started = time.monotonic()
    jobs = [asyncio.create_task(pool.run("sleep", 0.4)) for _ in range(4)]  # 2 workers → 2 rounds
    await asyncio.sleep(0.05)
    assert pool.status()["busy"] == 2 and pool.status()["queued"] == 2
    extra = [asyncio.create_task(pool.run("sleep", 0.01)) for _ in range(3)]
    await asyncio.gather(*jobs)
    assert time.monotonic() - started >= 0.75
    results = await asyncio.gather(*extra, return_exceptions=True)
    # queue limit 4: two were waiting, two more fit, the third is refused at once
    assert [isinstance(r, OptimizerBusy) for r in results] == [False, False, True]
    assert pool.status()["busy_rejections"] >= 1


async def test_workers_limit_blas_threads_before_numpy_loads(pool: OptimizerPool) -> None:
    # the ready message says whether numpy was already imported when the thread limits were set
    assert all(w.import_ms is not None for w in pool._all)
    assert pool._preloaded == 0


async def test_workers_that_cannot_start_give_a_quick_503_not_a_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    import app.optimizer.pool as pool_module

    monkeypatch.setattr(pool_module.sys, "executable", "/nonexistent/python")
    p = OptimizerPool(workers=1, timeout=20.0)
    p.start()
    try:
        deadline = time.monotonic() + 10
        while p.last_error is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert p.last_error and "nonexistent" in p.last_error
        started = time.monotonic()
        with pytest.raises(OptimizerBusy, match="not starting"):
            await p.run("ping", None)
        assert time.monotonic() - started < 1
        assert p.status()["ready"] == 0 and p.status()["last_error"]
    finally:
        await p.stop()


def test_a_plain_script_under_uvloop_never_imports_riskfolio(tmp_path) -> None:
    """One subprocess, three properties: workers start from a script without a `__main__` guard
    (multiprocessing's spawn would re-import it); under uvloop (as uvicorn runs), which leaves a
    watched socket non-blocking, big jobs keep working; and the API process never imports Riskfolio."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = tmp_path / "unguarded.py"
    script.write_text(
        f"import sys; sys.path.insert(0, {root!r})\n"
        "import numpy as np, uvloop\n"
        "from app.optimizer.pool import OptimizerPool\n"
        "from app.optimizer.problem import Problem\n"
        "async def main():\n"
        "    p = OptimizerPool(1, 60.0); p.start(); await p.wait_ready(120)\n"
        "    big = Problem(symbols=['X'] * 300, returns=np.zeros((1000, 300)))  # 2.4 MB: fills the socket\n"
        "    for i in range(3):\n"
        "        assert await p.run('sleep', 0.01) == {'slept': 0.01}\n"
        "        assert await p.run('ping', big) == {'pong': True}\n"
        "    assert p.status()['crashes'] == 0\n"
        "    await p.stop()\n"
        "uvloop.run(main())\n"
        "assert 'riskfolio' not in sys.modules and 'cvxpy' not in sys.modules\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


async def test_lazy_pool_starts_on_the_first_job() -> None:
    p = OptimizerPool(workers=1, timeout=60.0)  # never start()ed, as with OPTIMIZER_PRESTART=false
    try:
        assert p.status()["started"] is False and p.status()["pids"] == []
        assert await p.run("ping", None) == {"pong": True}
        assert p.status()["started"] is True and p.status()["ready"] == 1
    finally:
        await p.stop()
