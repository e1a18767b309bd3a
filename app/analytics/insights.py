"""Explainable insights: one small rule class per finding kind (after Ghostfolio's X-ray rules), each
with its own thresholds, configurable per user. Pure: takes numbers, returns ranked findings.

Every finding carries the numbers behind it, the threshold it crossed, a plain-language explanation
and a suggested action. All fractions are of the portfolio's total value (holdings + cash).
Ranking: severity (critical > warning > info) first, then how far past its threshold the number is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Literal

import msgspec

Severity = Literal["info", "warning", "critical"]
RiskTolerance = Literal["conservative", "moderate", "aggressive"]
_RANK = {"info": 1, "warning": 2, "critical": 3}


# --- thresholds (per user; every field has a default, a user stores only overrides) ------------------

class _Levels(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=False):
    warning: float
    critical: float | None

    def __post_init__(self) -> None:
        if not 0 <= self.warning <= 100:
            raise ValueError("warning must be between 0 and 100")
        if self.critical is not None and self.critical < self.warning:
            raise ValueError("critical must not be below warning")


class SinglePositionLevels(_Levels, kw_only=True, forbid_unknown_fields=True):
    warning: float = 0.20
    critical: float | None = 0.35


class TopFiveLevels(_Levels, kw_only=True, forbid_unknown_fields=True):
    warning: float = 0.60
    critical: float | None = 0.80
    min_holdings: int = 6  # with five or fewer holdings "top five" is everything; single-position covers it


class SectorLevels(_Levels, kw_only=True, forbid_unknown_fields=True):
    warning: float = 0.35
    critical: float | None = 0.50


class AssetClassLevels(_Levels, kw_only=True, forbid_unknown_fields=True):
    warning: float = 0.90
    critical: float | None = None


class CorrelationLevels(_Levels, kw_only=True, forbid_unknown_fields=True):
    warning: float = 0.85
    critical: float | None = 0.95
    min_weight: float = 0.02  # both holdings at least this big, or the pair does not matter


class BetaLevels(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    conservative: float = 0.8   # highest comfortable beta per risk tolerance
    moderate: float = 1.1
    aggressive: float = 1.5
    critical_margin: float = 0.3  # this far above the limit → critical

    def __post_init__(self) -> None:
        if min(self.conservative, self.moderate, self.aggressive) <= 0 or self.critical_margin < 0:
            raise ValueError("beta limits must be positive")


class DrawdownLevels(_Levels, kw_only=True, forbid_unknown_fields=True):
    warning: float = 0.10   # current drawdown, as a positive fraction below the peak
    critical: float | None = 0.20


class RegimeLevels(_Levels, kw_only=True, forbid_unknown_fields=True):
    warning: float = 1.5    # forecast next-day vol ÷ long-run vol
    critical: float | None = 2.0


class StaleLevels(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    max_age_days: float = 5.0      # older than this (calendar days) counts as stale; a daily bar is stamped
                                   # at midnight UTC of its day, so a long weekend alone reaches ~4.5
    critical_weight: float = 0.25  # stale holdings worth more than this → critical

    def __post_init__(self) -> None:
        if self.max_age_days <= 0 or not 0 <= self.critical_weight <= 1:
            raise ValueError("max_age_days must be positive and critical_weight a fraction")


class IdleCashLevels(_Levels, kw_only=True, forbid_unknown_fields=True):
    warning: float = 0.10
    critical: float | None = 0.30


class FeeDragLevels(_Levels, kw_only=True, forbid_unknown_fields=True):
    warning: float = 0.005   # fees over the last 12 months ÷ average portfolio value
    critical: float | None = 0.01


RULE_KINDS = ("single_position", "top_five", "sector", "asset_class", "correlated_holdings", "beta",
              "drawdown", "volatility_regime", "stale_prices", "idle_cash", "fee_drag")


class InsightThresholds(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    disabled: list[str] = msgspec.field(default_factory=list)
    single_position: SinglePositionLevels = msgspec.field(default_factory=SinglePositionLevels)
    top_five: TopFiveLevels = msgspec.field(default_factory=TopFiveLevels)
    sector: SectorLevels = msgspec.field(default_factory=SectorLevels)
    asset_class: AssetClassLevels = msgspec.field(default_factory=AssetClassLevels)
    correlated_holdings: CorrelationLevels = msgspec.field(default_factory=CorrelationLevels)
    beta: BetaLevels = msgspec.field(default_factory=BetaLevels)
    drawdown: DrawdownLevels = msgspec.field(default_factory=DrawdownLevels)
    volatility_regime: RegimeLevels = msgspec.field(default_factory=RegimeLevels)
    stale_prices: StaleLevels = msgspec.field(default_factory=StaleLevels)
    idle_cash: IdleCashLevels = msgspec.field(default_factory=IdleCashLevels)
    fee_drag: FeeDragLevels = msgspec.field(default_factory=FeeDragLevels)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.disabled) - set(RULE_KINDS))
        if unknown:
            raise ValueError(f"unknown rule kind(s) in disabled: {', '.join(unknown)}")


def merge_thresholds(stored: dict | None, update: dict | None = None) -> InsightThresholds:
    """Defaults ← stored overrides ← update (nested dicts merge key by key). Raises
    msgspec.ValidationError naming the bad field."""
    merged: dict = {}
    for layer in (stored or {}, update or {}):
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
    return msgspec.convert(merged, InsightThresholds)


# --- the numbers rules look at ------------------------------------------------------------------------

class HoldingFacts(msgspec.Struct, kw_only=True):
    symbol: str
    weight: float                       # of total value (holdings + cash)
    sector: str | None = None
    asset_type: str | None = None
    price_age_days: float | None = None  # calendar days since the last price; None if there is none


class CorrelatedPair(msgspec.Struct, frozen=True):
    a: str
    b: str
    correlation: float


class InsightFacts(msgspec.Struct, kw_only=True):
    holdings: list[HoldingFacts]
    cash_weight: float = 0.0
    risk_tolerance: RiskTolerance = "moderate"  # the user's profile setting (users.risk_tolerance)
    beta: float | None = None
    benchmark: str = "SPY"
    current_drawdown: float | None = None         # <= 0
    drawdown_peak_date: str | None = None
    forecast_volatility: float | None = None      # annualized next-day forecast
    long_run_volatility: float | None = None      # annualized long-run level
    forecast_model: str | None = None
    pairs: list[CorrelatedPair] = msgspec.field(default_factory=list)  # pairwise correlations
    fees_12m: float | None = None
    average_value_12m: float | None = None


class Finding(msgspec.Struct, kw_only=True):
    kind: str
    severity: Severity
    title: str
    numbers: dict[str, float | str | list[str]]
    threshold: dict[str, float | str]
    explanation: str
    action: str
    symbols: list[str] = msgspec.field(default_factory=list)
    score: float = 0.0


def pct(x: float, digits: int = 1) -> str:
    return f"{x * 100:.{digits}f}%"


def _level(value: float, lv: _Levels) -> Severity | None:
    if lv.critical is not None and value >= lv.critical:
        return "critical"
    if value >= lv.warning:
        return "warning"
    return None


def _score(severity: Severity, value: float, threshold: float) -> float:
    excess = value / threshold if threshold > 0 else 1.0
    return _RANK[severity] * 10 + min(excess, 9.99)


# --- rules --------------------------------------------------------------------------------------------

class Rule(ABC):
    kind: ClassVar[str]

    @abstractmethod
    def evaluate(self, facts: InsightFacts, t: InsightThresholds) -> list[Finding]: ...


class SinglePositionRule(Rule):
    kind = "single_position"

    def evaluate(self, facts: InsightFacts, t: InsightThresholds) -> list[Finding]:
        lv = t.single_position
        out = []
        for h in sorted(facts.holdings, key=lambda h: -h.weight):
            sev = _level(h.weight, lv)
            if sev is None:
                break
            out.append(Finding(
                kind=self.kind, severity=sev, title=f"{h.symbol} is {pct(h.weight)} of the portfolio",
                numbers={"weight": h.weight}, threshold={"warning": lv.warning, **({"critical": lv.critical} if lv.critical is not None else {})},
                explanation=(f"A single position worth {pct(h.weight)} of your portfolio means one company's "
                             f"news moves your whole wealth; the limit you set is {pct(lv.warning)}."),
                action=f"Consider trimming {h.symbol} towards {pct(lv.warning)} and spreading the proceeds.",
                symbols=[h.symbol], score=_score(sev, h.weight, lv.warning)))
        return out


class TopFiveRule(Rule):
    kind = "top_five"

    def evaluate(self, facts: InsightFacts, t: InsightThresholds) -> list[Finding]:
        lv = t.top_five
        if len(facts.holdings) < lv.min_holdings:
            return []
        top = sorted(facts.holdings, key=lambda h: -h.weight)[:5]
        share = sum(h.weight for h in top)
        sev = _level(share, lv)
        if sev is None:
            return []
        names = [h.symbol for h in top]
        return [Finding(
            kind=self.kind, severity=sev, title=f"Top five holdings are {pct(share)} of the portfolio",
            numbers={"top_five_weight": share, "holdings": float(len(facts.holdings)), "top_five": names},
            threshold={"warning": lv.warning, **({"critical": lv.critical} if lv.critical is not None else {})},
            explanation=(f"{', '.join(names)} together make up {pct(share)}; the rest of your "
                         f"{len(facts.holdings) - 5} holdings add little diversification."),
            action="Consider building up smaller positions or adding a broad index fund.",
            symbols=names, score=_score(sev, share, lv.warning))]


class _GroupRule(Rule):
    attr: ClassVar[str]
    label: ClassVar[str]
    title_fmt: ClassVar[str]  # "{share}" and "{name}"

    @abstractmethod
    def levels(self, t: InsightThresholds) -> _Levels: ...

    def evaluate(self, facts: InsightFacts, t: InsightThresholds) -> list[Finding]:
        lv = self.levels(t)
        groups: dict[str, list[HoldingFacts]] = {}
        for h in facts.holdings:
            key = getattr(h, self.attr)
            if key:
                groups.setdefault(str(key), []).append(h)
        out = []
        for name, members in groups.items():
            w = sum(h.weight for h in members)
            sev = _level(w, lv)
            if sev is None:
                continue
            syms = [h.symbol for h in sorted(members, key=lambda h: -h.weight)]
            out.append(Finding(
                kind=self.kind, severity=sev, title=self.title_fmt.format(share=pct(w), name=name),
                numbers={"weight": w, self.label.replace(" ", "_"): name, "holdings": float(len(members))},
                threshold={"warning": lv.warning, **({"critical": lv.critical} if lv.critical is not None else {})},
                explanation=(f"{len(members)} holding(s) ({', '.join(syms[:6])}{'…' if len(syms) > 6 else ''}) share "
                             f"the {self.label} {name}; they tend to rise and fall together, so the portfolio is "
                             "less diversified than the number of positions suggests."),
                action=f"Consider adding exposure outside {name} or reducing the largest of these positions.",
                symbols=syms, score=_score(sev, w, lv.warning)))
        return out


class SectorRule(_GroupRule):
    kind = "sector"
    attr = "sector"
    label = "sector"
    title_fmt = "{share} of the portfolio is in the {name} sector"

    def levels(self, t: InsightThresholds) -> _Levels:
        return t.sector


class AssetClassRule(_GroupRule):
    kind = "asset_class"
    attr = "asset_type"
    label = "asset class"
    title_fmt = "{share} of the portfolio is in one asset class ({name})"

    def levels(self, t: InsightThresholds) -> _Levels:
        return t.asset_class


class CorrelatedHoldingsRule(Rule):
    kind = "correlated_holdings"

    def evaluate(self, facts: InsightFacts, t: InsightThresholds) -> list[Finding]:
        lv = t.correlated_holdings
        weight = {h.symbol: h.weight for h in facts.holdings}
        hits = sorted((p for p in facts.pairs if p.correlation >= lv.warning
                       and weight.get(p.a, 0) >= lv.min_weight and weight.get(p.b, 0) >= lv.min_weight),
                      key=lambda p: -p.correlation)
        if not hits:
            return []
        top = hits[0]
        sev = _level(top.correlation, lv) or "warning"
        syms = sorted({s for p in hits for s in (p.a, p.b)})
        listed = "; ".join(f"{p.a}/{p.b} {p.correlation:.2f}" for p in hits[:5])
        return [Finding(
            kind=self.kind, severity=sev,
            title=f"{len(hits)} pair(s) of holdings move almost in lockstep",
            numbers={"highest_correlation": top.correlation, "pairs": float(len(hits)),
                     "combined_weight": sum(weight[s] for s in syms), "pair_list": [f"{p.a}/{p.b}" for p in hits[:10]]},
            threshold={"warning": lv.warning, "min_weight": lv.min_weight,
                       **({"critical": lv.critical} if lv.critical is not None else {})},
            explanation=(f"Daily returns of these holdings are highly correlated ({listed}); owning both adds "
                         "little diversification — in a sell-off they are likely to fall together."),
            action="Consider keeping the one you prefer of each pair and moving the rest to less related assets.",
            symbols=syms, score=_score(sev, top.correlation, lv.warning))]


class BetaRule(Rule):
    kind = "beta"

    def evaluate(self, facts: InsightFacts, t: InsightThresholds) -> list[Finding]:
        if facts.beta is None:
            return []
        tol = facts.risk_tolerance
        limit = getattr(t.beta, tol)
        if facts.beta <= limit:
            return []
        sev: Severity = "critical" if facts.beta > limit + t.beta.critical_margin else "warning"
        return [Finding(
            kind=self.kind, severity=sev,
            title=f"Beta {facts.beta:.2f} is above the {limit:.2f} that suits a {tol} investor",
            numbers={"beta": facts.beta, "benchmark": facts.benchmark, "risk_tolerance": tol},
            threshold={"max_beta": limit, "critical_above": limit + t.beta.critical_margin},
            explanation=(f"With a beta of {facts.beta:.2f} against {facts.benchmark}, a 10% market fall has "
                         f"historically meant about a {facts.beta * 10:.0f}% fall for this portfolio — more "
                         f"than a {tol} risk tolerance suggests."),
            action="Consider lower-beta holdings (broad funds, defensive sectors, bonds) or a smaller equity share.",
            score=_score(sev, facts.beta, limit))]


class DrawdownRule(Rule):
    kind = "drawdown"

    def evaluate(self, facts: InsightFacts, t: InsightThresholds) -> list[Finding]:
        if facts.current_drawdown is None:
            return []
        depth = -facts.current_drawdown
        lv = t.drawdown
        sev = _level(depth, lv)
        if sev is None:
            return []
        since = f" since its peak on {facts.drawdown_peak_date}" if facts.drawdown_peak_date else ""
        return [Finding(
            kind=self.kind, severity=sev, title=f"The portfolio is {pct(depth)} below its peak",
            numbers={"current_drawdown": facts.current_drawdown,
                     **({"peak_date": facts.drawdown_peak_date} if facts.drawdown_peak_date else {})},
            threshold={"warning": lv.warning, **({"critical": lv.critical} if lv.critical is not None else {})},
            explanation=(f"The portfolio's investment value (deposits and withdrawals removed) has fallen "
                         f"{pct(depth)}{since}; {_recovery_phrase(depth)}."),
            action="Check the position is still the one you want; avoid selling only because of the fall.",
            score=_score(sev, depth, lv.warning))]


def _recovery_phrase(depth: float) -> str:
    """The gain needed to get back to the peak; a total loss cannot be recovered by any gain."""
    if depth >= 1:
        return "it has lost everything, so no gain on what is left can bring it back"
    return f"it needs a {pct(1 / (1 - depth) - 1)} gain to get back"


class VolatilityRegimeRule(Rule):
    kind = "volatility_regime"

    def evaluate(self, facts: InsightFacts, t: InsightThresholds) -> list[Finding]:
        f, lr = facts.forecast_volatility, facts.long_run_volatility
        if f is None or not lr:
            return []
        ratio = f / lr
        lv = t.volatility_regime
        sev = _level(ratio, lv)
        if sev is None:
            return []
        return [Finding(
            kind=self.kind, severity=sev,
            title=f"Volatility is {ratio:.1f}× its long-run level",
            numbers={"forecast_volatility": f, "long_run_volatility": lr, "ratio": ratio,
                     "model": facts.forecast_model or "ewma"},
            threshold={"warning": lv.warning, **({"critical": lv.critical} if lv.critical is not None else {})},
            explanation=(f"The {(facts.forecast_model or 'ewma').upper()} forecast puts annualized volatility at "
                         f"{pct(f)} against a long-run {pct(lr)}: daily swings are currently much larger "
                         "than usual."),
            action="Expect larger day-to-day moves; review position sizes and avoid leverage until it calms.",
            score=_score(sev, ratio, lv.warning))]


class StalePricesRule(Rule):
    kind = "stale_prices"

    def evaluate(self, facts: InsightFacts, t: InsightThresholds) -> list[Finding]:
        lv = t.stale_prices
        stale = [h for h in facts.holdings if h.price_age_days is None or h.price_age_days > lv.max_age_days]
        if not stale:
            return []
        w = sum(h.weight for h in stale)
        sev: Severity = "critical" if w > lv.critical_weight else "warning"
        syms = [h.symbol for h in stale]
        oldest = max((h.price_age_days for h in stale if h.price_age_days is not None), default=None)
        return [Finding(
            kind=self.kind, severity=sev, title=f"{len(stale)} holding(s) have stale prices",
            numbers={"stale_weight": w, "symbols": syms, **({"oldest_age_days": oldest} if oldest is not None else {})},
            threshold={"max_age_days": lv.max_age_days, "critical_weight": lv.critical_weight},
            explanation=(f"No price newer than {lv.max_age_days:g} days for {', '.join(syms[:8])}; values and "
                         "risk figures for these holdings rest on old prices."),
            action="Check whether these assets still trade (delisting, symbol change) and update the data source.",
            symbols=syms, score=_score(sev, w, lv.critical_weight or 1.0))]


class IdleCashRule(Rule):
    kind = "idle_cash"

    def evaluate(self, facts: InsightFacts, t: InsightThresholds) -> list[Finding]:
        lv = t.idle_cash
        sev = _level(facts.cash_weight, lv)
        if sev is None:
            return []
        return [Finding(
            kind=self.kind, severity=sev, title=f"{pct(facts.cash_weight)} of the portfolio is uninvested cash",
            numbers={"cash_weight": facts.cash_weight},
            threshold={"warning": lv.warning, **({"critical": lv.critical} if lv.critical is not None else {})},
            explanation=(f"Cash makes up {pct(facts.cash_weight)}; unless it is set aside on purpose it earns "
                         "little and drags on long-run returns."),
            action="Invest what you do not need soon according to your plan, or park it in a money-market fund.",
            score=_score(sev, facts.cash_weight, lv.warning))]


class FeeDragRule(Rule):
    kind = "fee_drag"

    def evaluate(self, facts: InsightFacts, t: InsightThresholds) -> list[Finding]:
        if facts.fees_12m is None or not facts.average_value_12m or facts.average_value_12m <= 0:
            return []
        drag = facts.fees_12m / facts.average_value_12m
        lv = t.fee_drag
        sev = _level(drag, lv)
        if sev is None:
            return []
        return [Finding(
            kind=self.kind, severity=sev, title=f"Fees cost {pct(drag, 2)} of the portfolio last year",
            numbers={"fee_drag": drag, "fees_12m": facts.fees_12m, "average_value_12m": facts.average_value_12m},
            threshold={"warning": lv.warning, **({"critical": lv.critical} if lv.critical is not None else {})},
            explanation=(f"Trading fees over the last 12 months came to {pct(drag, 2)} of the average value; "
                         "that comes straight off your return every year it recurs."),
            action="Trade less often, batch orders, or use a cheaper broker or fee plan.",
            score=_score(sev, drag, lv.warning))]


RULES: tuple[Rule, ...] = (SinglePositionRule(), TopFiveRule(), SectorRule(), AssetClassRule(),
                           CorrelatedHoldingsRule(), BetaRule(), DrawdownRule(), VolatilityRegimeRule(),
                           StalePricesRule(), IdleCashRule(), FeeDragRule())
assert tuple(r.kind for r in RULES) == RULE_KINDS


def evaluate(facts: InsightFacts, thresholds: InsightThresholds | None = None) -> list[Finding]:
    """Every enabled rule's findings, ranked (most severe, furthest past its threshold first)."""
    t = thresholds or InsightThresholds()
    found: list[Finding] = []
    for rule in RULES:
        if rule.kind not in t.disabled:
            found.extend(rule.evaluate(facts, t))
    found.sort(key=lambda f: (-_RANK[f.severity], -f.score, f.kind, f.title))
    return found


# --- narrative ---------------------------------------------------------------------------------------

def template_narrative(findings: list[Finding], *, holdings: int, headline: dict[str, str]) -> str:
    """A deterministic summary paragraph. ``headline`` holds pre-formatted numbers (e.g. volatility)."""
    parts = [f"Your portfolio holds {holdings} position{'s' if holdings != 1 else ''}"]
    if "volatility" in headline:
        parts[0] += f" with an annualized volatility of {headline['volatility']}"
    if "sharpe" in headline:
        parts[0] += f" and a Sharpe ratio of {headline['sharpe']}"
    parts[0] += "."
    if not findings:
        parts.append("None of the checks crossed its threshold: concentration, correlation, market "
                     "sensitivity, drawdown, volatility, prices, cash and fees all look in order.")
        return " ".join(parts)
    crit = [f for f in findings if f.severity == "critical"]
    warn = [f for f in findings if f.severity == "warning"]
    counts = []
    if crit:
        counts.append(f"{len(crit)} critical")
    if warn:
        counts.append(f"{len(warn)} warning{'s' if len(warn) != 1 else ''}")
    info = len(findings) - len(crit) - len(warn)
    if info:
        counts.append(f"{info} note{'s' if info != 1 else ''}")
    parts.append(f"The checks found {' and '.join(counts)}.")
    parts.append(f"Most important: {findings[0].title}. {findings[0].action}")
    if len(findings) > 1:
        parts.append("Also: " + "; ".join(f.title for f in findings[1:3]) + ".")
    return " ".join(parts)


def narrative_values(findings: list[Finding], headline: dict[str, str]) -> dict[str, str]:
    """Placeholders the language model may use; it writes {name} and we substitute our own number."""
    values = dict(headline)
    for i, f in enumerate(findings[:5], start=1):
        values[f"f{i}_title"] = f.title
    return values


def render_model_text(text: str, values: dict[str, str]) -> str | None:
    """Substitute ``{placeholder}``s in a model's paragraph. None (→ use the template) when the model wrote
    a digit of its own, used an unknown placeholder, or produced something that is not a short paragraph."""
    import re

    text = text.strip()
    if not text or len(text) > 1500:
        return None
    names = re.findall(r"\{([a-z0-9_]+)\}", text)
    if any(n not in values for n in names):
        return None
    bare = re.sub(r"\{[a-z0-9_]+\}", "", text)
    if re.search(r"\d", bare) or "{" in bare or "}" in bare:
        return None
    return re.sub(r"\{([a-z0-9_]+)\}", lambda m: values[m.group(1)], text)
