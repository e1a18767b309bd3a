"""Entry validation never raises on junk — it returns errors naming fields — and the CSV reader
either parses or refuses with ImportFormatError (a bad input is a 4xx, never a 500)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from app.portfolio.entries import check_entry
from app.portfolio.importer import ImportFormatError, check_rows, read_csv, read_json, split_errors

NOW = datetime(2025, 1, 1, tzinfo=UTC)
FIELD_NAMES = ["type", "symbol", "quantity", "price", "amount", "fee", "ratio", "currency", "note", "executed_at"]
junk = st.one_of(st.none(), st.text(max_size=20), st.integers(-10**30, 10**30), st.booleans(),
                 st.floats(allow_nan=True, allow_infinity=True), st.decimals(allow_nan=True, allow_infinity=True),
                 st.datetimes(), st.lists(st.integers(), max_size=2), st.sampled_from(["buy", "sell", "split", "NaN",
                                                                                      "1e999", "-0", "0.00000000001"]))


@settings(max_examples=400, deadline=None)
@given(raw=st.dictionaries(st.sampled_from(FIELD_NAMES), junk))
def test_check_entry_never_raises(raw: dict) -> None:
    entry, errors = check_entry(raw, base_currency="USD", now=NOW)
    assert (entry is None) == bool(errors)
    assert all(field in FIELD_NAMES for field, _ in errors)
    if entry is not None:
        for name in ("quantity", "price", "amount", "fee", "ratio"):
            v = getattr(entry, name)
            assert v is None or (isinstance(v, Decimal) and v.is_finite() and v >= 0)
        assert entry.executed_at <= NOW.replace(minute=1) and entry.executed_at.tzinfo is not None


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=300), header=st.sampled_from(["", "date,type,symbol,quantity,price,amount\n",
                                                          "date;type;amount\n"]))
def test_csv_reader_parses_or_refuses(text: str, header: str) -> None:
    try:
        rows = read_csv(header + text, 100)
    except ImportFormatError as exc:
        assert exc.field in ("file", "header")
        return
    ok, bad = split_errors(rows)
    good, more = check_rows(ok, base_currency="USD", now=NOW)
    assert all(isinstance(line, int) and line >= 2 for line, _, _ in bad + more)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200))
def test_json_reader_parses_or_refuses(data: bytes) -> None:
    try:
        rows = read_json(data, 100)
    except ImportFormatError:
        return
    ok, _ = split_errors(rows)
    check_rows(ok, base_currency="USD", now=NOW)
