"""CSV / JSON import and export of the ledger. Pure: text in, checked rows out (and back).

CSV columns are found by their usual names, case and spacing ignored (see ALIASES); the first
line is the header, so data rows start at line 2. Every bad row is reported with its line number
and the field; nothing is stored unless every row is good.
"""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, date, datetime
from typing import Any

import msgspec

from app.portfolio.entries import Entry, check_entry

ALIASES: dict[str, tuple[str, ...]] = {
    "executed_at": ("date", "executed_at", "executed at", "datetime", "date/time", "time", "timestamp", "trade date",
                    "transaction date", "settlement date"),
    "type": ("type", "action", "side", "transaction type", "activity", "activity type", "kind"),
    "symbol": ("symbol", "ticker", "instrument", "security", "asset", "code"),
    "quantity": ("quantity", "qty", "shares", "units", "amount of shares", "no. of shares"),
    "price": ("price", "unit price", "price per share", "share price", "trade price", "cost per share"),
    "fee": ("fee", "fees", "commission", "commissions", "brokerage", "charges"),
    "amount": ("amount", "value", "total", "net amount", "cash amount"),
    "ratio": ("ratio", "split ratio", "split"),
    "currency": ("currency", "ccy", "currency code"),
    "note": ("note", "notes", "memo", "description", "comment", "comments"),
}
TYPE_ALIASES: dict[str, str] = {
    "buy": "buy", "bought": "buy", "purchase": "buy", "b": "buy", "market buy": "buy", "limit buy": "buy",
    "sell": "sell", "sold": "sell", "sale": "sell", "s": "sell", "market sell": "sell", "limit sell": "sell",
    "deposit": "deposit", "contribution": "deposit", "transfer in": "deposit", "cash in": "deposit",
    "withdrawal": "withdrawal", "withdraw": "withdrawal", "transfer out": "withdrawal", "cash out": "withdrawal",
    "dividend": "dividend", "div": "dividend", "dividends": "dividend", "cash dividend": "dividend",
    "interest": "interest", "fee": "fee", "fees": "fee", "charge": "fee", "split": "split", "stock split": "split",
}
EXPORT_COLUMNS = ("date", "type", "symbol", "quantity", "price", "fee", "amount", "ratio", "currency", "note")
_NUMBER = re.compile(r"^[+-]?(\d{1,3}(,\d{3})+|\d+)?(\.\d+)?$")
_SPLIT_RATIO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[:/]\s*(\d+(?:\.\d+)?)\s*$")


class ImportFormatError(Exception):
    """The file as a whole cannot be read (no header, unknown columns …)."""

    def __init__(self, message: str, field: str = "file") -> None:
        super().__init__(message)
        self.message, self.field = message, field


def _key(name: str) -> str:
    return " ".join(name.strip().lower().replace("_", " ").split())


def map_header(header: list[str]) -> dict[int, str]:
    lookup = {_key(alias): field for field, aliases in ALIASES.items() for alias in aliases}
    lookup["executed at"] = "executed_at"
    mapping: dict[int, str] = {}
    unknown: list[str] = []
    for idx, name in enumerate(header):
        field = lookup.get(_key(name))
        if field is None:
            if name.strip():
                unknown.append(name.strip())
            continue
        if field in mapping.values():
            raise ImportFormatError(f"two columns mean {field}: check the header", field="header")
        mapping[idx] = field
    if "type" not in mapping.values():
        raise ImportFormatError("the header needs a type column (type, action, side …)", field="header")
    if "executed_at" not in mapping.values():
        raise ImportFormatError("the header needs a date column (date, trade date, timestamp …)", field="header")
    if unknown:
        raise ImportFormatError(f"unknown column(s): {', '.join(unknown)}; known: "
                                + ", ".join(a for v in ALIASES.values() for a in v[:2]), field="header")
    return mapping


def parse_number(text: str) -> str | None:
    """Tolerates thousands separators and a leading currency sign; returns the plain digits."""
    t = text.strip().replace("$", "").replace("€", "").replace("£", "").replace(" ", "")
    if t == "":
        return None
    if _NUMBER.match(t):
        t = t.replace(",", "")
    return t  # anything else is left for the number check to reject with a message


def parse_when(text: Any) -> datetime | None | str:
    """ISO 8601 date or date-time (a date alone is midnight UTC); also YYYY/MM/DD. A string back means
    'could not parse'."""
    if text is None:
        return None
    t = str(text).strip()
    if not t:
        return None
    try:
        if len(t) == 10 and t[4] in "-/" and t[7] in "-/":
            d = date(int(t[0:4]), int(t[5:7]), int(t[8:10]))
            return datetime(d.year, d.month, d.day, tzinfo=UTC)
        ts = datetime.fromisoformat(t.replace("Z", "+00:00"))
        return ts if ts.tzinfo else ts.replace(tzinfo=UTC)
    except ValueError:
        return t


def _normalize_raw(raw: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    errors: list[tuple[str, str]] = []
    out = dict(raw)
    kind = out.get("type")
    if isinstance(kind, str):
        out["type"] = TYPE_ALIASES.get(_key(kind), kind.strip().lower())
    when = parse_when(out.get("executed_at"))
    if isinstance(when, str):
        errors.append(("executed_at", f"{when!r} is not a date (use YYYY-MM-DD or ISO 8601)"))
        when = None
        out["executed_at"] = None
    else:
        out["executed_at"] = when
    if when is None and not errors:
        errors.append(("executed_at", "is required in an import"))
    for name in ("quantity", "price", "fee", "amount"):
        v = out.get(name)
        if isinstance(v, str):
            out[name] = parse_number(v)
        elif isinstance(v, float):
            errors.append((name, "must be a decimal string or an integer, not a float"))
            out[name] = None
    ratio = out.get("ratio")
    if isinstance(ratio, str):
        m = _SPLIT_RATIO.match(ratio)  # "2:1" or "2/1" → 2; "1:10" → 0.1
        if m:
            from decimal import Decimal

            num, den = Decimal(m.group(1)), Decimal(m.group(2))
            out["ratio"] = str(num / den) if den else ratio
        else:
            out["ratio"] = parse_number(ratio)
    for name in ("symbol", "currency", "note"):
        if isinstance(out.get(name), str) and not out[name].strip():
            out[name] = None
    # in a CSV a sale often carries a negative quantity or amount: be clear rather than guess
    return out, errors


def check_rows(raws: list[tuple[int, dict[str, Any]]], *, base_currency: str, now: datetime
               ) -> tuple[list[tuple[int, Entry]], list[tuple[int, str | None, str]]]:
    good: list[tuple[int, Entry]] = []
    bad: list[tuple[int, str | None, str]] = []
    for line, raw in raws:
        norm, errs = _normalize_raw(raw)
        entry, more = check_entry(norm, base_currency=base_currency, now=now)
        errs = errs + [e for e in more if not (e[0] == "executed_at" and any(x[0] == "executed_at" for x in errs))]
        if errs:
            bad.extend((line, f, m) for f, m in errs)
        elif entry is not None:
            good.append((line, entry))
    return good, bad


def read_csv(text: str, max_rows: int) -> list[tuple[int, dict[str, Any]]]:
    if text.startswith("\ufeff"):
        text = text[1:]
    first_line = text.split("\n", 1)[0]
    delimiter = max(",;\t", key=first_line.count)  # the header decides: notes may hold any character
    reader = csv.reader(io.StringIO(text), delimiter=delimiter if first_line.count(delimiter) else ",")
    try:
        header = next(reader)
    except StopIteration:
        raise ImportFormatError("the file is empty") from None
    except csv.Error as exc:
        raise ImportFormatError(f"line 1: {exc}") from None
    mapping = map_header(header)
    rows: list[tuple[int, dict[str, Any]]] = []
    while True:
        line = reader.line_num + 1  # where the next record starts (a quoted cell may span lines)
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise ImportFormatError(f"line {line}: {exc}") from None
        if not any(c.strip() for c in cells):
            continue
        if len(rows) >= max_rows:
            raise ImportFormatError(f"more than {max_rows} rows; split the file", field="file")
        if len(cells) > len(header):
            rows.append((line, {"__error__": f"{len(cells)} cells but the header has {len(header)}"}))
            continue
        rows.append((line, {mapping[i]: c for i, c in enumerate(cells) if i in mapping}))
    return rows


def read_json(data: bytes, max_rows: int) -> list[tuple[int, dict[str, Any]]]:
    """A JSON array of entries, or {"transactions": [...]} as exported; 'line' is the 1-based index."""
    try:
        doc = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise ImportFormatError(f"not valid JSON: {exc}") from None
    items = doc.get("transactions") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise ImportFormatError("expected a JSON array of transactions or {\"transactions\": [...]}")
    if len(items) > max_rows:
        raise ImportFormatError(f"more than {max_rows} rows; split the file")
    rows: list[tuple[int, dict[str, Any]]] = []
    lookup = {_key(a): f for f, aliases in ALIASES.items() for a in aliases}
    for k, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            rows.append((k, {"__error__": "each transaction must be an object"}))
            continue
        raw: dict[str, Any] = {}
        unknown = []
        for name, v in item.items():
            field = lookup.get(_key(str(name)))
            if field is None and _key(str(name)) in ("id", "created at"):
                continue
            if field is None:
                unknown.append(str(name))
                continue
            # objects and arrays stay as they are, so that the field checks refuse them instead of
            # storing their str() (a note {"a": 1} became the text "{'a': 1}")
            raw[field] = v if v is None or isinstance(v, (str, float, bool, dict, list)) else str(v)
        if unknown:
            raw["__error__"] = f"unknown field(s): {', '.join(unknown)}"
        rows.append((k, raw))
    return rows


def split_errors(rows: list[tuple[int, dict[str, Any]]]) -> tuple[list[tuple[int, dict[str, Any]]], list[tuple[int, str | None, str]]]:
    ok: list[tuple[int, dict[str, Any]]] = []
    bad: list[tuple[int, str | None, str]] = []
    for line, raw in rows:
        if "__error__" in raw:
            bad.append((line, None, raw["__error__"]))
        else:
            ok.append((line, raw))
    return ok, bad


def export_rows(rows: list[dict[str, Any]]) -> list[dict[str, str | None]]:
    """Ledger rows (as TransactionOut builtins) → the export shape, which import reads back."""
    return [{"date": r["executed_at"], "type": r["type"], "symbol": r["symbol"], "quantity": r["quantity"],
             "price": r["price"], "fee": r["fee"], "amount": r["amount"], "ratio": r["ratio"],
             "currency": r["currency"], "note": r["note"]} for r in rows]


def to_csv(items: list[dict[str, str | None]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    for item in items:
        writer.writerow(["" if item[c] is None else item[c] for c in EXPORT_COLUMNS])
    return buf.getvalue()
