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


def test_the_api_process_never_imports_riskfolio() -> None:
    code = ("import sys, asyncio\n"
            "from app.optimizer.pool import OptimizerPool\n"
            "from app.optimizer import problem, rebalance\n"
            "async def main():\n"
            "    p = OptimizerPool(1, 20.0); p.start(); await p.wait_ready(180)\n"
            "    print(await p.run('ping', None)); await p.stop()\n"
            "if __name__ == '__main__':\n"
            "    asyncio.run(main()); assert 'riskfolio' not in sys.modules and 'cvxpy' not in sys.modules\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert out.returncode == 0, out.stderr
    assert "pong" in out.stdout


def test_pool_under_uvloop() -> None:
    """uvicorn runs uvloop, which leaves a watched pipe non-blocking: jobs after the first must work."""
    code = ("import asyncio, uvloop, numpy as np\n"
            "from app.optimizer.pool import OptimizerPool\n"
            "from app.optimizer.problem import Problem\n"
            "async def main():\n"
            "    p = OptimizerPool(1, 20.0); p.start(); await p.wait_ready(180)\n"
            "    big = Problem(symbols=['X'] * 300, returns=np.zeros((1000, 300)))  # 2.4 MB: fills the pipe\n"
            "    for i in range(4):\n"
            "        assert await p.run('sleep', 0.05) == {'slept': 0.05}\n"
            "        assert await p.run('ping', big) == {'pong': True}\n"
            "    assert p.status()['crashes'] == 0\n"
            "    await p.stop(); print('ok')\n"
            "if __name__ == '__main__':\n"
            "    uvloop.run(main())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_workers_start_from_a_script_without_a_main_guard(tmp_path) -> None:
    """multiprocessing's spawn re-imports the parent's __main__; our workers must not need a guard."""
    script = tmp_path / "unguarded.py"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script.write_text(f"import sys; sys.path.insert(0, {root!r})\n"
                      "import asyncio\n"
                      "from app.optimizer.pool import OptimizerPool\n"
                      "async def main():\n"
                      "    p = OptimizerPool(1, 20.0); p.start(); await p.wait_ready(60)\n"
                      "    print(await p.run('ping', None)); await p.stop()\n"
                      "asyncio.run(main())\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "{'pong': True}"


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
