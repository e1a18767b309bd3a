"""The narrative against a local fake OpenAI-compatible server: good replies are used (with our numbers),
bad, failing and slow ones fall back to the template within AI_TIMEOUT."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from app.analytics.insights import HoldingFacts, InsightFacts, evaluate
from app.analytics.narrative import write_narrative
from app.config import Settings


class FakeModel:
    def __init__(self) -> None:
        self.reply: str = ""
        self.status = 200
        self.delay = 0.0
        self.requests: list[dict] = []
        self.auth: list[str | None] = []


@pytest.fixture
def fake_model() -> Iterator[tuple[FakeModel, str]]:
    state = FakeModel()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.requests.append({"path": self.path, **body})
            state.auth.append(self.headers.get("Authorization"))
            time.sleep(state.delay)
            payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": state.reply}}]}).encode()
            try:
                self.send_response(state.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def _findings():
    return evaluate(InsightFacts(holdings=[HoldingFacts(symbol="AAPL", weight=0.45, sector="Technology")],
                                 cash_weight=0.02))


def _settings(url: str | None, timeout: float = 1.0) -> Settings:
    return Settings(env="test", ai_api_url=url, ai_api_key="k-test" if url else None,
                    ai_model="fake-1" if url else None, ai_timeout=timeout)


HEADLINE = {"volatility": "18.2%", "sharpe": "0.91"}


async def test_model_text_is_used_with_our_numbers(fake_model) -> None:
    state, url = fake_model
    state.reply = "With volatility at {volatility}, the main issue is clear: {f1_title}. Consider trimming."
    async with httpx.AsyncClient() as client:
        n = await write_narrative(_settings(url), client, _findings(), holdings=1, headline=HEADLINE)
    assert n.source == "model" and n.model == "fake-1"
    assert n.text == "With volatility at 18.2%, the main issue is clear: AAPL is 45.0% of the portfolio. Consider trimming."
    req = state.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["model"] == "fake-1"
    assert state.auth[0] == "Bearer k-test"
    assert "{volatility}" in req["messages"][0]["content"] or "volatility" in req["messages"][1]["content"]


@pytest.mark.parametrize("reply,status", [
    ("Volatility is 25% and rising.", 200),        # a number of the model's own
    ("See {made_up_number}.", 200),                 # unknown placeholder
    ("", 200),                                      # empty
    ("fine text", 500),                             # server error
])
async def test_bad_or_failing_model_falls_back_to_the_template(fake_model, reply: str, status: int) -> None:
    state, url = fake_model
    state.reply, state.status = reply, status
    async with httpx.AsyncClient() as client:
        n = await write_narrative(_settings(url), client, _findings(), holdings=1, headline=HEADLINE)
    assert n.source == "template" and "AAPL is 45.0% of the portfolio" in n.text


async def test_slow_model_times_out_to_the_template(fake_model) -> None:
    state, url = fake_model
    state.reply, state.delay = "Calm words.", 2.0
    async with httpx.AsyncClient() as client:
        started = time.perf_counter()
        n = await write_narrative(_settings(url, timeout=0.3), client, _findings(), holdings=1, headline=HEADLINE)
        elapsed = time.perf_counter() - started
    assert n.source == "template" and elapsed < 1.0


async def test_unreachable_or_unconfigured_model_uses_the_template() -> None:
    async with httpx.AsyncClient() as client:
        n = await write_narrative(_settings("http://127.0.0.1:9/v1"), client, _findings(), holdings=1, headline={})
    assert n.source == "template"
    n = await write_narrative(_settings(None), None, _findings(), holdings=1, headline={})
    assert n.source == "template"
