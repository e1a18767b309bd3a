"""The ledger against an independent, deliberately simple reference written here with exact rationals
(`fractions.Fraction`): random valid sequences — both cost methods, splits and back-dated entries
mixed in — give the same quantities, cash, contributions, cost basis and realized P&L."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.portfolio.ledger import (COST_QUANTUM, CostMethod, InsufficientCash, InsufficientQuantity, LedgerError,
                                  LedgerState, Tx, TxType, append, decode_state, encode_state, replay)

T0 = datetime(2024, 1, 1, 15, 30, tzinfo=UTC)
SYMBOLS = ["AAPL", "MSFT", "KO"]
RATIOS = [Decimal("2"), Decimal("3"), Decimal("0.5"), Decimal("1.5"), Decimal("0.1"), Decimal("10"), Decimal("0.25")]


# --- the reference: lists of [quantity, cost] per symbol, Fractions, nothing clever --------------------

@dataclass
class Ref:
    method: str
    cash: Fraction = Fraction(0)
    auto: Fraction = Fraction(0)
    deposits: Fraction = Fraction(0)
    withdrawals: Fraction = Fraction(0)
    realized: Fraction = Fraction(0)
    income: Fraction = Fraction(0)
    lots: dict[str, list[list[Fraction]]] = field(default_factory=dict)
    partial_sales: int = 0

    def qty(self, sym: str) -> Fraction:
        return sum((lot[0] for lot in self.lots.get(sym, [])), Fraction(0))

    def cost(self, sym: str) -> Fraction:
        return sum((lot[1] for lot in self.lots.get(sym, [])), Fraction(0))

    def spend(self, amount: Fraction) -> None:
        self.cash -= amount
        if self.cash < 0:
            self.auto += -self.cash
            self.cash = Fraction(0)


class RefOversell(Exception):
    def __init__(self, sym: str, available: Fraction) -> None:
        self.sym, self.available = sym, available


def F(d: Decimal | None) -> Fraction:
    return Fraction(d) if d is not None else Fraction(0)


def reference(txs: list[Tx], method: str) -> Ref:
    ref = Ref(method)
    for t in sorted(txs, key=lambda t: (t.executed_at, t.seq)):
        fee = F(t.fee)
        if t.type == "buy":
            cost = F(t.quantity) * F(t.price) + fee
            book = ref.lots.setdefault(t.symbol, [])
            if method == "average" and book:
                book[0][0] += F(t.quantity)
                book[0][1] += cost
            else:
                book.append([F(t.quantity), cost])
            ref.spend(cost)
        elif t.type == "sell":
            q = F(t.quantity)
            if q > ref.qty(t.symbol):
                raise RefOversell(t.symbol, ref.qty(t.symbol))
            book = ref.lots[t.symbol]
            removed = Fraction(0)
            while q > 0:
                lot = book[0]
                if q >= lot[0]:
                    removed += lot[1]
                    q -= lot[0]
                    book.pop(0)
                else:
                    part = lot[1] * q / lot[0]
                    lot[0] -= q
                    lot[1] -= part
                    removed += part
                    q = Fraction(0)
                    ref.partial_sales += 1
            proceeds = F(t.quantity) * F(t.price) - fee
            ref.realized += proceeds - removed
            ref.spend(-proceeds)
        elif t.type == "deposit":
            ref.deposits += F(t.amount)
            ref.cash += F(t.amount)
            ref.spend(fee)
        elif t.type == "withdrawal":
            assert F(t.amount) + fee <= ref.cash
            ref.withdrawals += F(t.amount)
            ref.cash -= F(t.amount) + fee
        elif t.type in ("dividend", "interest"):
            ref.income += F(t.amount)
            ref.cash += F(t.amount)
            ref.spend(fee)
        elif t.type == "fee":
            ref.spend(F(t.amount) + fee)
        elif t.type == "split":
            for lot in ref.lots.get(t.symbol, []):
                lot[0] *= F(t.ratio)
            ref.spend(fee)
    return ref


def exact_decimal(fr: Fraction) -> Decimal:
    """A Fraction whose denominator divides a power of ten, as the exact Decimal."""
    for k in range(80):
        if (10 ** k) % fr.denominator == 0:
            return Decimal(fr.numerator * (10 ** k // fr.denominator)).scaleb(-k)
    return Decimal(fr.numerator) / Decimal(fr.denominator)


# --- generating valid sequences: a timeline first, then an insertion order (back-dating) ------------------

money = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("5000"), places=2)
qty = st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("500"), places=4)
fees = st.one_of(st.just(Decimal(0)), st.decimals(min_value=Decimal("0"), max_value=Decimal("20"), places=2))


@st.composite
def timelines(draw: st.DrawFn, max_size: int = 40) -> list[Tx]:
    """A valid ledger (in ledger order), with its entries inserted in a shuffled order: `seq` is the
    insertion number, so many entries arrive after later-dated ones (back-dated entries)."""
    n = draw(st.integers(min_value=1, max_value=max_size))
    held: dict[str, Fraction] = {}
    cash = Fraction(0)
    day = 0
    timeline: list[tuple[datetime, dict]] = []
    for _ in range(n):
        day += draw(st.sampled_from([0, 0, 1, 2, 7]))  # 0: same instant as the previous → tie on executed_at
        when = T0 + timedelta(days=day)
        kind = draw(st.sampled_from(["buy", "buy", "buy", "sell", "sell", "deposit", "withdrawal", "dividend",
                                     "interest", "fee", "split"]))
        sym = draw(st.sampled_from(SYMBOLS))
        fee = draw(fees)
        if kind == "sell":
            have = held.get(sym, Fraction(0))
            if have <= 0:
                kind = "buy"
            else:
                frac = draw(st.sampled_from([Fraction(1), Fraction(1, 2), Fraction(1, 3), Fraction(9, 10)]))
                if frac == 1:
                    q = exact_decimal(have)
                else:
                    q = Decimal(math.floor(have * frac * 10_000)).scaleb(-4)
                if q <= 0:
                    kind = "buy"
                else:
                    held[sym] = have - Fraction(q)
                    price = draw(money)
                    timeline.append((when, dict(type="sell", symbol=sym, quantity=q, price=price, fee=fee)))
                    cash += Fraction(q) * Fraction(price) - Fraction(fee)
                    cash = max(cash, Fraction(0))
                    continue
        if kind == "buy":
            q, price = draw(qty), draw(money)
            held[sym] = held.get(sym, Fraction(0)) + Fraction(q)
            timeline.append((when, dict(type="buy", symbol=sym, quantity=q, price=price, fee=fee)))
            cash = max(cash - Fraction(q) * Fraction(price) - Fraction(fee), Fraction(0))
        elif kind == "withdrawal":
            amount = Decimal(int(cash * 50)) / 100  # at most half the cash, fee ≤ 20 might still exceed
            if amount <= 0 or Fraction(amount) + Fraction(fee) > cash:
                kind, fee = "deposit", Decimal(0)
            else:
                timeline.append((when, dict(type="withdrawal", amount=amount, fee=fee)))
                cash -= Fraction(amount) + Fraction(fee)
                continue
        if kind == "deposit":
            amount = draw(money)
            timeline.append((when, dict(type="deposit", amount=amount, fee=fee)))
            cash = max(cash + Fraction(amount) - Fraction(fee), Fraction(0))
        elif kind in ("dividend", "interest", "fee"):
            amount = draw(money)
            extra = dict(symbol=sym) if kind == "dividend" else {}
            timeline.append((when, dict(type=kind, amount=amount, fee=fee, **extra)))
            sign = -1 if kind == "fee" else 1
            cash = max(cash + sign * Fraction(amount) - Fraction(fee), Fraction(0))
        elif kind == "split":
            ratio = draw(st.sampled_from(RATIOS))
            held[sym] = held.get(sym, Fraction(0)) * Fraction(ratio)
            timeline.append((when, dict(type="split", symbol=sym, ratio=ratio)))
    # insertion order: a random permutation, made increasing inside each group of equal executed_at
    rnd = random.Random(draw(st.integers(0, 2**32)))
    seqs = list(range(1, len(timeline) + 1))
    rnd.shuffle(seqs)
    start = 0
    for k in range(1, len(timeline) + 1):
        if k == len(timeline) or timeline[k][0] != timeline[start][0]:
            seqs[start:k] = sorted(seqs[start:k])
            start = k
    txs = [Tx(executed_at=when, seq=seq, **fields) for (when, fields), seq in zip(timeline, seqs, strict=True)]
    return sorted(txs, key=lambda t: t.seq)  # handed over in insertion order


def assert_matches(state: LedgerState, ref: Ref) -> None:
    assert Fraction(state.cash) == ref.cash
    assert Fraction(state.auto_funded) == ref.auto
    assert Fraction(state.deposits) == ref.deposits
    assert Fraction(state.withdrawals) == ref.withdrawals
    assert Fraction(state.dividends + state.interest) == ref.income
    # the one rounding: a partial sale's share of a lot's cost, to 1e-12; bounded by the count of them
    tol = Fraction(COST_QUANTUM) * (ref.partial_sales + 1)
    for sym in SYMBOLS:
        assert Fraction(state.quantity(sym)) == ref.qty(sym), sym
        pos = state.positions.get(sym)
        cost = Fraction(pos.cost_basis) if pos else Fraction(0)
        assert abs(cost - ref.cost(sym)) <= tol, sym
    assert abs(Fraction(state.realized_pnl) - ref.realized) <= tol
    # …and cost is conserved exactly: cost basis − realized P&L == Σ buy costs − Σ sell proceeds
    assert Fraction(state.cost_basis) - Fraction(state.realized_pnl) == \
        sum((ref.cost(s) for s in SYMBOLS), Fraction(0)) - ref.realized


PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(txs=timelines(), method=st.sampled_from(["fifo", "average"]))
def test_replay_matches_reference(txs: list[Tx], method: str) -> None:
    state = replay(txs, method)
    assert_matches(state, reference(txs, method))
    assert state.count == len(txs)


@PROPS
@given(txs=timelines())
def test_methods_agree_on_everything_but_the_split_of_cost(txs: list[Tx]) -> None:
    fifo, avg = replay(txs, "fifo"), replay(txs, "average")
    assert fifo.cash == avg.cash
    assert all(fifo.quantity(s) == avg.quantity(s) for s in SYMBOLS)
    assert fifo.cost_basis - fifo.realized_pnl == avg.cost_basis - avg.realized_pnl


@PROPS
@given(txs=timelines(), method=st.sampled_from(["fifo", "average"]))
def test_append_in_ledger_order_equals_replay(txs: list[Tx], method: str) -> None:
    state = LedgerState(method=CostMethod(method))
    for tx in sorted(txs, key=Tx.sort_key):
        before = encode_state(state)
        new = append(state, tx)
        assert encode_state(state) == before  # copy on write: the previous state is untouched
        state = new
    again = decode_state(encode_state(state))  # the stored snapshot round-trips exactly
    assert again == state
    assert encode_state(replay(txs, method)) == encode_state(state)


@PROPS
@given(txs=timelines(), method=st.sampled_from(["fifo", "average"]), data=st.data())
def test_overselling_is_refused_with_symbol_and_available_quantity(txs: list[Tx], method: str,
                                                                   data: st.DataObject) -> None:
    ordered = sorted(txs, key=Tx.sort_key)
    cut = data.draw(st.integers(0, len(ordered)))
    sym = data.draw(st.sampled_from(SYMBOLS))
    when = ordered[cut - 1].executed_at if cut else T0
    # inserted last (highest seq), so it sorts after every entry executed at or before `when`
    have = replay([t for t in txs if t.executed_at <= when], method).quantity(sym)
    bad = Tx(type=TxType.SELL, executed_at=when, seq=10_000, symbol=sym, quantity=have + Decimal("0.0001"),
             price=Decimal(1))
    with pytest.raises(InsufficientQuantity) as err:
        replay([*txs, bad], method)
    assert err.value.symbol == sym
    assert err.value.available == have
    assert err.value.tx == bad
    with pytest.raises(RefOversell):
        reference([*txs, bad], method)


@PROPS
@given(txs=timelines(), method=st.sampled_from(["fifo", "average"]),
       ratio=st.sampled_from([Decimal("2"), Decimal("0.5"), Decimal("4"), Decimal("10"), Decimal("0.1"),
                              Decimal("0.25"), Decimal("1.25")]),
       price=st.decimals(min_value=Decimal("1"), max_value=Decimal("1000"), places=2))
def test_split_keeps_value_and_pnl(txs: list[Tx], method: str, ratio: Decimal, price: Decimal) -> None:
    before = replay(txs, method)
    last = max(t.executed_at for t in txs)
    split = Tx(type=TxType.SPLIT, executed_at=last + timedelta(days=1), seq=99_999, symbol="AAPL", ratio=ratio)
    after = replay([*txs, split], method)
    post_price = price / ratio  # the market's price after the split (exact for these ratios)
    assert after.quantity("AAPL") == before.quantity("AAPL") * ratio
    assert after.quantity("AAPL") * post_price == before.quantity("AAPL") * price  # value unchanged
    assert after.cost_basis == before.cost_basis
    assert after.realized_pnl == before.realized_pnl
    assert after.cash == before.cash
    if before.quantity("AAPL"):
        pos_b, pos_a = before.positions["AAPL"], after.positions["AAPL"]
        assert pos_a.average_cost * ratio == pytest.approx(pos_b.average_cost, rel=Decimal("1e-40"))


# --- examples that document the conventions -----------------------------------------------------------

def tx(kind: str, day: int, seq: int | None = None, **kw: object) -> Tx:
    conv = {k: Decimal(str(v)) if isinstance(v, (int, float, str)) and k != "symbol" else v for k, v in kw.items()}
    return Tx(type=TxType(kind), executed_at=T0 + timedelta(days=day), seq=day if seq is None else seq, **conv)


def test_fifo_and_average_example() -> None:
    txs = [tx("deposit", 0, amount="10000"), tx("buy", 1, symbol="X", quantity=10, price=100, fee=1),
           tx("buy", 2, symbol="X", quantity=10, price=200, fee=1),
           tx("sell", 3, symbol="X", quantity=15, price=300, fee=2)]
    fifo = replay(txs, "fifo")
    assert fifo.realized_pnl == Decimal("4498") - Decimal("1001") - Decimal("1000.5")
    assert fifo.quantity("X") == 5 and fifo.positions["X"].cost_basis == Decimal("1000.5")
    avg = replay(txs, "average")
    assert avg.positions["X"].cost_basis == Decimal("750.5")
    assert avg.realized_pnl == Decimal("4498") - Decimal("2251.5")
    assert fifo.cash == avg.cash == Decimal("10000") - 1001 - 2001 + 4498


def test_back_dated_entry_recomputes_what_follows() -> None:
    txs = [tx("buy", 1, seq=1, symbol="X", quantity=10, price=100),
           tx("sell", 5, seq=2, symbol="X", quantity=10, price=150)]
    assert replay(txs, "fifo").realized_pnl == 500
    # a back-dated earlier, cheaper buy changes the FIFO lot that the later sale consumed
    back = tx("buy", 0, seq=3, symbol="X", quantity=10, price=50)
    state = replay([*txs, back], "fifo")
    assert state.realized_pnl == 1000 and state.positions["X"].cost_basis == 1000
    # a back-dated sale that empties the holding makes the later sale impossible
    with pytest.raises(InsufficientQuantity) as err:
        replay([*txs, tx("sell", 2, seq=4, symbol="X", quantity=5, price=1)], "fifo")
    assert err.value.tx.seq == 2 and err.value.available == 5


def test_split_example_and_reverse_split() -> None:
    txs = [tx("buy", 1, symbol="X", quantity=10, price=300), tx("split", 2, symbol="X", ratio=3),
           tx("sell", 3, symbol="X", quantity=15, price=110), tx("split", 4, symbol="X", ratio="0.1")]
    state = replay(txs, "fifo")
    assert state.quantity("X") == Decimal("1.5")
    assert state.positions["X"].cost_basis == 1500
    assert state.realized_pnl == 15 * 110 - 1500


def test_cash_auto_funding_and_withdrawal_limits() -> None:
    state = replay([tx("buy", 1, symbol="X", quantity=1, price=100, fee=1)], "fifo")
    assert state.cash == 0 and state.auto_funded == 101 and state.net_contributions == 101
    with pytest.raises(InsufficientCash):
        replay([tx("deposit", 1, amount=50), tx("withdrawal", 2, amount="50.01")], "fifo")


@pytest.mark.parametrize("field,value", [("quantity", Decimal(0)), ("quantity", Decimal(-1)),
                                         ("price", Decimal(-1)), ("quantity", Decimal("NaN")),
                                         ("fee", Decimal(-1)), ("quantity", None)])
def test_bad_shapes_name_the_field(field: str, value: Decimal | None) -> None:
    fields = dict(symbol="X", quantity=Decimal(1), price=Decimal(1), fee=Decimal(0))
    fields[field] = value
    with pytest.raises(LedgerError) as err:
        replay([Tx(type=TxType.BUY, executed_at=T0, **fields)], "fifo")  # type: ignore[arg-type]
    assert err.value.field == field


def test_failed_apply_leaves_state_unchanged() -> None:
    state = replay([tx("buy", 1, symbol="X", quantity=1, price=10)], "fifo")
    snapshot = encode_state(state)
    with pytest.raises(InsufficientQuantity):
        state.apply(tx("sell", 2, symbol="X", quantity=2, price=10))
    assert encode_state(state) == snapshot
