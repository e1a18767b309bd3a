"""`python -m app seed-demo` creates the documented login and a realistic portfolio; running it twice
rebuilds the portfolio rather than adding a second one."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal

from litestar.testing import AsyncTestClient

from app.config import PROJECT_ROOT
from app.portfolio.cli import DEMO_EMAIL, DEMO_PASSWORD


def run_seed(test_env: dict[str, str]) -> str:
    proc = subprocess.run([sys.executable, "-m", "app", "seed-demo"], env={**os.environ, **test_env},
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


async def test_seed_demo(client: AsyncTestClient, test_env: dict[str, str]) -> None:
    out = run_seed(test_env)
    assert DEMO_EMAIL in out and DEMO_PASSWORD in out
    run_seed(test_env)  # idempotent
    r = await client.post("/api/auth/login", json={"email": DEMO_EMAIL, "password": DEMO_PASSWORD})
    assert r.status_code == 200, r.text
    headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
    portfolios = (await client.get("/api/portfolio", headers=headers)).json()
    assert len(portfolios) == 1
    pid = portfolios[0]["id"]
    s = (await client.get(f"/api/portfolio/{pid}/summary", headers=headers)).json()
    assert Decimal(s["total_value"]) > Decimal(s["net_contributions"]) > 100_000  # 2015 → 2024 was a good decade
    assert len(s["top_positions"]) == 5 and s["top_positions"][0]["symbol"] == "SPY"
    assert Decimal(s["realized_pnl"]) > 0 and Decimal(s["income"]) > 0
    perf = (await client.get(f"/api/portfolio/{pid}/performance?range=max", headers=headers)).json()
    assert len(perf["dates"]) > 2000 and float(perf["time_weighted_return"]) > 50
    assert perf["money_weighted_return"] is not None
