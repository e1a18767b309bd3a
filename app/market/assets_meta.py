"""Reference data for the bundled symbols (pure data, no I/O)."""

from __future__ import annotations

from typing import NamedTuple


class AssetMeta(NamedTuple):
    symbol: str
    name: str
    type: str  # stock | etf
    exchange: str  # ISO 10383 MIC of the primary listing
    sector: str  # GICS sector ("Index" for the benchmark ETF)


BUNDLED_ASSETS: tuple[AssetMeta, ...] = (
    AssetMeta("AAPL", "Apple Inc.", "stock", "XNAS", "Information Technology"),
    AssetMeta("AMD", "Advanced Micro Devices, Inc.", "stock", "XNAS", "Information Technology"),
    AssetMeta("AMZN", "Amazon.com, Inc.", "stock", "XNAS", "Consumer Discretionary"),
    AssetMeta("BABA", "Alibaba Group Holding Limited (ADR)", "stock", "XNYS", "Consumer Discretionary"),
    AssetMeta("BAC", "Bank of America Corporation", "stock", "XNYS", "Financials"),
    AssetMeta("BBY", "Best Buy Co., Inc.", "stock", "XNYS", "Consumer Discretionary"),
    AssetMeta("GE", "General Electric Company", "stock", "XNYS", "Industrials"),
    AssetMeta("GM", "General Motors Company", "stock", "XNYS", "Consumer Discretionary"),
    AssetMeta("GOOG", "Alphabet Inc. Class C", "stock", "XNAS", "Communication Services"),
    AssetMeta("JPM", "JPMorgan Chase & Co.", "stock", "XNYS", "Financials"),
    AssetMeta("MA", "Mastercard Incorporated", "stock", "XNYS", "Financials"),
    AssetMeta("META", "Meta Platforms, Inc.", "stock", "XNAS", "Communication Services"),
    AssetMeta("PFE", "Pfizer Inc.", "stock", "XNYS", "Health Care"),
    AssetMeta("RRC", "Range Resources Corporation", "stock", "XNYS", "Energy"),
    AssetMeta("SBUX", "Starbucks Corporation", "stock", "XNAS", "Consumer Discretionary"),
    AssetMeta("T", "AT&T Inc.", "stock", "XNYS", "Communication Services"),
    AssetMeta("UAA", "Under Armour, Inc. Class A", "stock", "XNYS", "Consumer Discretionary"),
    AssetMeta("WMT", "Walmart Inc.", "stock", "XNYS", "Consumer Staples"),
    AssetMeta("XOM", "Exxon Mobil Corporation", "stock", "XNYS", "Energy"),
    AssetMeta("SPY", "SPDR S&P 500 ETF Trust", "etf", "ARCX", "Index"),
)

BENCHMARK = "SPY"
BY_SYMBOL = {a.symbol: a for a in BUNDLED_ASSETS}
