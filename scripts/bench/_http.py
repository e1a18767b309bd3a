"""Shared by the benchmark scripts: a raw keep-alive HTTP/1.1 load generator (lighter than any client
library, so the client steals less CPU from the server on a 2-core machine) and server start-up.
Not a benchmark itself (`make bench` skips files starting with `_`)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def request(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    """One raw request, encoded once and re-sent in a loop."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"] + [f"{k}: {v}" for k, v in headers.items()]
    if body or method != "GET":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: bytes) -> tuple[int, bytes]:
    """Send `req`, read the whole response (Content-Length framed, as our server answers); returns
    (status, body)."""
    writer.write(req)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    i = lower.find(b"content-length:")
    length = int(lower[i + 15:lower.find(b"\r\n", i)]) if i >= 0 else 0
    body = await reader.readexactly(length) if length else b""
    return status, body


async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: bytes) -> int:
    """Send `req`, read the whole response; returns the status."""
    return (await exchange(reader, writer, req))[0]


class KeepAlive:
    """One keep-alive connection for sequential requests whose answers matter (the optimizer bench):
    `await conn.post(path, body, headers)` → (status, body). Costs ~0.1 ms per request where httpx
    costs ~0.5 ms (h11 is pure Python), so the client adds little to what is measured."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        return await exchange(self.reader, self.writer, request("POST", path, headers, body))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def summarize(latencies: list[float], elapsed: float, errors: int = 0) -> dict:
    lat = sorted(latencies)

    def pct(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 3) if lat else float("nan")

    return {"requests": len(lat), "rps": round(len(lat) / elapsed, 1), "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "max_ms": round(lat[-1] * 1000, 3) if lat else float("nan"), "errors": errors}


async def load(port: int, reqs: bytes | list[bytes], seconds: float, connections: int, ok: int = 200) -> dict:
    """`connections` keep-alive clients for `seconds`; client k sends reqs[k % len(reqs)] in a loop.
    A response whose status is not `ok` counts as an error."""
    reqs = [reqs] if isinstance(reqs, bytes) else reqs
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker(k: int) -> None:
        nonlocal errors
        req = reqs[k % len(reqs)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                status = await one(reader, writer, req)
                latencies.append(time.perf_counter() - started)
                if status != ok:
                    errors += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*[worker(k) for k in range(connections)])
    return summarize(latencies, time.perf_counter() - started, errors)


def start_server(cmd: list[str], env: dict[str, str], port: int, log: Path, *, ready: str = "/health/live",
                 wait: float = 120.0) -> subprocess.Popen:
    """Start `cmd` with PORT/HOST set, wait until `ready` answers 200; the log goes to `log`."""
    import httpx

    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env, "PORT": str(port), "HOST": "127.0.0.1"},
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/{ready.lstrip('/')}", timeout=0.5).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}")
