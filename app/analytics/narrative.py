"""The summary paragraph: an OpenAI-compatible chat model when configured, a template otherwise.

Numbers never come from the model. It is shown the findings and a list of ``{placeholders}`` and told
to write no digits; we substitute our own formatted numbers into its text, and any reply that carries a
digit of its own, names an unknown placeholder, fails, or is late (``AI_TIMEOUT``) falls back to the
deterministic template — a model never fails or delays the request beyond the timeout.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import msgspec

from app.analytics.insights import Finding, narrative_values, render_model_text, template_narrative
from app.analytics.schemas import Narrative
from app.config import Settings

log = logging.getLogger("app.analytics.narrative")

SYSTEM_PROMPT = (
    "You are a careful financial analyst writing for a private investor. Write ONE short paragraph "
    "(at most four sentences, plain text, no lists, no markdown) that summarizes the portfolio findings "
    "you are given, most important first, in calm, plain language. Never write digits. Whenever you "
    "need a number or a finding's title, write its placeholder in curly braces exactly as listed, e.g. "
    "{volatility}; the application fills in the real values. Do not give personalised investment "
    "advice beyond the suggested actions provided."
)


def model_configured(settings: Settings) -> bool:
    return bool(settings.ai_api_url and settings.ai_api_key and settings.ai_model)


def _endpoint(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


def _user_prompt(findings: list[Finding], values: dict[str, str]) -> str:
    items = [{"placeholder_title": f"f{i}_title", "kind": f.kind, "severity": f.severity,
              "explanation": f.explanation, "suggested_action": f.action}
             for i, f in enumerate(findings[:5], start=1)]
    return msgspec.json.encode({"placeholders": sorted(values), "findings": items,
                                "more_findings": max(0, len(findings) - 5)}).decode()


async def _ask_model(settings: Settings, client: httpx.AsyncClient, findings: list[Finding],
                     values: dict[str, str]) -> str | None:
    body = {"model": settings.ai_model, "temperature": 0.2, "max_tokens": 300,
            "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                         {"role": "user", "content": _user_prompt(findings, values)}]}
    resp = await client.post(_endpoint(settings.ai_api_url or ""), json=body,
                             headers={"Authorization": f"Bearer {settings.ai_api_key}"},
                             timeout=settings.ai_timeout)
    if resp.status_code != 200:
        log.warning("narrative model answered %s", resp.status_code)
        return None
    data: Any = resp.json()
    text = data["choices"][0]["message"]["content"]
    return text if isinstance(text, str) else None


async def write_narrative(settings: Settings, client: httpx.AsyncClient | None, findings: list[Finding], *,
                          holdings: int, headline: dict[str, str]) -> Narrative:
    template = Narrative(text=template_narrative(findings, holdings=holdings, headline=headline), source="template")
    if client is None or not model_configured(settings):
        return template
    values = {**narrative_values(findings, headline), "holdings": str(holdings)}
    try:
        async with asyncio.timeout(settings.ai_timeout):
            raw = await _ask_model(settings, client, findings, values)
    except (httpx.HTTPError, asyncio.TimeoutError, ValueError, KeyError, IndexError, TypeError) as exc:
        log.warning("narrative model failed, using the template: %s", type(exc).__name__)
        return template
    text = render_model_text(raw, values) if raw else None
    if text is None:
        log.warning("narrative model reply rejected (digits, unknown placeholder or empty), using the template")
        return template
    return Narrative(text=text, source="model", model=settings.ai_model)
