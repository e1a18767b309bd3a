"""CSV/JSON import parsing: aliases, formats, line numbers; export → import round trip (hypothesis)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.portfolio.entries import Entry
from app.portfolio.importer import (ImportFormatError, check_rows, export_rows, read_csv, read_json, split_errors,
                                    to_csv)
from app.portfolio.ledger import TxType
from app.portfolio.schemas import dec

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def parse(text: str) -> tuple[list[tuple[int, Entry]], list[tuple[int, str | None, str]]]:
    rows, bad = split_errors(read_csv(text, 1000))
    good, more = check_rows(rows, base_currency="USD", now=NOW)
    return good, bad + more


def test_aliases_formats_and_line_numbers() -> None:
    text = ("\ufeffTrade Date;Action;Ticker;Shares;Price;Commission;Amount;Memo\n"
            "2024-01-02;Deposit;;;;;1.234,00;x\n"  # not a number in this notation: reported
            "2024/01/03;Bought;aapl;10;$185.64;1.00;;\"two\nlines\"\n"
            "2024-01-04T10:00:00-05:00;SOLD;AAPL;4;188.85;;;\n"
            "\n"
            "2024-01-05;stock split;AAPL;;;;;\n")
    good, bad = parse(text)
    assert [(line, field) for line, field, _ in bad] == [(2, "amount"), (7, "ratio")]
    by_line = {line: e for line, e in good}
    assert set(by_line) == {3, 5}  # the quoted note spans lines 3–4; the sale starts on line 5
    buy, sell = by_line[3], by_line[5]
    assert buy.type is TxType.BUY and buy.symbol == "AAPL" and buy.price == Decimal("185.64") and buy.note == "two\nlines"
    assert buy.executed_at == datetime(2024, 1, 3, tzinfo=UTC)
    assert sell.executed_at == datetime(2024, 1, 4, 15, tzinfo=UTC) and sell.fee == 0


def test_split_ratio_notations_and_thousands() -> None:
    good, bad = parse("date,type,symbol,ratio,amount\n2024-01-02,split,X,2:1,\n2024-01-03,split,X,1/10,\n"
                      "2024-01-04,deposit,,,\"1,234.50\"\n")
    assert not bad
    assert [e.ratio for _, e in good[:2]] == [Decimal(2), Decimal("0.1")]
    assert good[2][1].amount == Decimal("1234.50")


@pytest.mark.parametrize("header,field", [("when,what\n", "header"), ("date,symbol\n", "header"),
                                          ("type,symbol\n", "header"), ("date,type,colour\n", "header"),
                                          ("date,type,qty,shares\n", "header"), ("", "file")])
def test_bad_headers(header: str, field: str) -> None:
    with pytest.raises(ImportFormatError) as err:
        read_csv(header + "2024-01-02,buy\n" if header else "", 10)
    assert err.value.field == field


def test_row_limit_and_ragged_rows() -> None:
    with pytest.raises(ImportFormatError):
        read_csv("date,type,amount\n" + "2024-01-02,deposit,1\n" * 11, 10)
    rows = read_csv("date,type,amount\n2024-01-02,deposit,1,extra\n", 10)
    _, bad = split_errors(rows)
    assert bad and bad[0][0] == 2


def test_json_import_names_unknown_fields() -> None:
    rows = read_json(msgspec.json.encode([{"date": "2024-01-02", "type": "deposit", "amount": "5", "colour": 1},
                                          "nope"]), 10)
    _, bad = split_errors(rows)
    assert [(line, "colour" in msg or "object" in msg) for line, _, msg in bad] == [(1, True), (2, True)]


amounts = st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("100000"), places=4)
notes = st.one_of(st.none(), st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=30),
                  st.just('comma, "quotes"\nand a newline'), st.just("semi;colons;\ttabs;"), st.just("  "))


@st.composite
def entries(draw: st.DrawFn) -> list[Entry]:
    out = []
    for k in range(draw(st.integers(1, 15))):
        kind = draw(st.sampled_from(list(TxType)))
        when = datetime(2020, 1, 1, tzinfo=UTC) + timedelta(seconds=draw(st.integers(0, 10**8)),
                                                              microseconds=draw(st.integers(0, 999999)))
        sym = draw(st.sampled_from(["AAPL", "BRK.B", "X"]))
        e = Entry(type=kind, symbol=None, quantity=None, price=None, amount=None, fee=Decimal(0), ratio=None,
                  currency="USD", note=(draw(notes) or "").strip() or None, executed_at=when)
        if kind in (TxType.BUY, TxType.SELL):
            e.symbol, e.quantity, e.price, e.fee = sym, draw(amounts), draw(amounts), draw(amounts)
        elif kind is TxType.SPLIT:
            e.symbol, e.ratio = sym, draw(st.sampled_from([Decimal(2), Decimal("0.5"), Decimal("1.5")]))
        else:
            e.amount = draw(amounts)
            if kind in (TxType.DIVIDEND,):
                e.symbol = sym
            if kind is not TxType.FEE:
                e.fee = draw(st.sampled_from([Decimal(0), Decimal("0.25")]))
        out.append(e)
    return out


def as_export(es: list[Entry]) -> list[dict]:
    return export_rows([{"executed_at": e.executed_at.isoformat(), "type": e.type.value, "symbol": e.symbol,
                         "quantity": dec(e.quantity, None), "price": dec(e.price, None), "fee": dec(e.fee, None),
                         "amount": dec(e.amount, None), "ratio": dec(e.ratio, None), "currency": e.currency,
                         "note": e.note} for e in es])


@settings(max_examples=100, deadline=None)
@given(es=entries())
def test_export_import_round_trip(es: list[Entry]) -> None:
    exported = as_export(es)
    for rows in (read_csv(to_csv(exported), 1000), read_json(msgspec.json.encode({"transactions": exported}), 1000)):
        ok, bad = split_errors(rows)
        good, more = check_rows(ok, base_currency="USD", now=NOW)
        assert not bad and not more, (bad, more)
        back = [e for _, e in good]
        assert [e.canonical() for e in back] == [e.canonical() for e in es]
        assert as_export(back) == exported
