"""Heavy analytics work runs off the event loop: the loop keeps ticking while a big series is computed."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from app.analytics import service
from app.analytics.schemas import MetricsRequest
from app.cache import MemoryCache
from app.config import Settings
from app.context import AppContext


async def test_event_loop_keeps_running_during_a_large_computation() -> None:
    ctx = AppContext(Settings(env="test"), db=None, cache=MemoryCache())  # type: ignore[arg-type]
    body = MetricsRequest(returns=np.random.default_rng(1).normal(0, 0.01, 100_000).tolist(),
                          benchmark_returns=np.random.default_rng(2).normal(0, 0.01, 100_000).tolist())
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            await asyncio.sleep(0.001)
            ticks += 1

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    started = time.perf_counter()
    result = await service.metrics_for_series(ctx, body)
    elapsed = time.perf_counter() - started
    done = True
    await task
    assert result.periods == 100_000
    # on the loop the ticker could not run at all while computing; off it, it keeps going
    assert ticks >= 3, (ticks, elapsed)
