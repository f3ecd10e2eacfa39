"""Bootstrap a shop from history: a CSV of past interactions into the event store.

Columns (header row required): customer_id, product_id, kind, occurred_at and,
optionally, quantity. `kind` is view, add_to_cart or purchase; `occurred_at` is
ISO 8601 and not after the import. The file is UTF-8 (a BOM is skipped). The whole
file is validated first and stored in one transaction, so a bad row stores nothing;
importing the same file twice stores it once. Rows of a customer whose data
customers/redact erased, dated at or before their redaction, are not stored again
(counted as redacted); a later row is new data of theirs, stored.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import re
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple, TextIO

from recommender.errors import InvalidEvent, RecommenderError
from recommender.changes import Event
from recommender.events import MAX_QUANTITY, EventKind, parse_timestamp
from recommender.store import EventStore

REQUIRED_COLUMNS = ("customer_id", "product_id", "kind", "occurred_at")
READ_COLUMNS = (*REQUIRED_COLUMNS, "quantity")
_POSITIVE = re.compile(r"^[0-9]{1,9}$")  # ASCII digits only: str.isdigit() also accepts superscripts
# PostgreSQL's text holds no NUL, and an index entry at most ~2.7 kB: longer ids stored on SQLite only.
MAX_ID_LENGTH = 255


class HistoryImportError(RecommenderError):
    """The file cannot be imported; the message names the line and the column."""


class ImportResult(NamedTuple):
    rows: int  # rows read from the file
    stored: int  # events newly stored (the others were stored before, or redacted)
    redacted: int  # rows of customers customers/redact erased, dated at or before their redaction: not stored


def read_history_csv(handle: TextIO, shop: str, source: str = "import", now: datetime | None = None) -> list[Event]:
    """The file's rows as events; `now` (default: the time of the call) is the latest `occurred_at` accepted."""
    now = now or datetime.now(timezone.utc)
    reader = csv.DictReader(handle)
    try:
        fieldnames = reader.fieldnames or []
        # DictReader keeps the last of two columns of one name: a row's values would be read from the wrong column.
        # Only the columns read count (a spreadsheet's export may end with unnamed columns: `...,occurred_at,,`).
        repeated = sorted({name for name in fieldnames if name in READ_COLUMNS and fieldnames.count(name) > 1})
        if repeated:
            raise HistoryImportError(f"{source}: the header names column(s) {', '.join(repeated)} more than once")
        missing = [c for c in REQUIRED_COLUMNS if c not in fieldnames]
        if missing:
            raise HistoryImportError(f"{source}: the header lacks column(s) {', '.join(missing)}; "
                                     f"expected {', '.join(REQUIRED_COLUMNS)}[, quantity]")
        return _read_rows(reader, shop, source, now)
    except csv.Error as exc:  # a field past csv's size limit, say; DictReader's line_num is the last good row's
        raise HistoryImportError(f"{source}:{reader.reader.line_num}: {exc}") from None


def _read_rows(reader: csv.DictReader, shop: str, source: str, now: datetime) -> list[Event]:
    seen: Counter[str] = Counter()
    events = []
    for row in reader:
        line = reader.line_num  # the row's last line: blank lines are skipped, and a quoted field may hold newlines
        if any(extra.strip() for extra in row.get(None, ())):  # DictReader's key for fields past the header's (empty
            # ones, a row ending in a comma, drop nothing)
            raise HistoryImportError(f"{source}:{line}: {len(reader.fieldnames) + len(row[None])} fields, "
                                     f"the header has {len(reader.fieldnames)}")
        try:
            kind = EventKind((row["kind"] or "").strip())
        except ValueError:
            raise HistoryImportError(f"{source}:{line}: kind must be one of "
                               f"{', '.join(k.value for k in EventKind)}, got {row['kind']!r}") from None
        quantity_text = (row.get("quantity") or "1").strip()
        if not _POSITIVE.match(quantity_text) or not 1 <= int(quantity_text) <= MAX_QUANTITY:
            raise HistoryImportError(f"{source}:{line}: quantity must be a positive integer "
                                     f"(at most {MAX_QUANTITY}), got {quantity_text!r}")
        customer_id, product_id = (row["customer_id"] or "").strip(), (row["product_id"] or "").strip()
        if not customer_id or not product_id:
            raise HistoryImportError(f"{source}:{line}: customer_id and product_id are required")
        for name, value in (("customer_id", customer_id), ("product_id", product_id)):
            if len(value) > MAX_ID_LENGTH or "\x00" in value:
                raise HistoryImportError(f"{source}:{line}: {name} must be at most {MAX_ID_LENGTH} characters, "
                                         f"none of them NUL; got {value[:40]!r}" + ("..." if len(value) > 40 else ""))
        try:
            occurred_at = parse_timestamp((row["occurred_at"] or "").strip(), "occurred_at")
        except InvalidEvent as exc:
            raise HistoryImportError(f"{source}:{line}: {exc}") from None
        if occurred_at > now:  # dated in the future it would count whole in trending, and retention never prunes it
            raise HistoryImportError(f"{source}:{line}: occurred_at {row['occurred_at'].strip()!r} is later than now "
                                     f"({now.isoformat(timespec='seconds')}); a time without an offset is read as UTC")
        # Identical rows are kept apart by their occurrence number, so re-imports dedupe but repeats count.
        fingerprint = hashlib.sha256(
            "|".join((customer_id, product_id, kind.value, occurred_at.isoformat(), quantity_text)).encode()
        ).hexdigest()[:32]
        seen[fingerprint] += 1
        events.append(Event(
            kind=kind, shop=shop, product_id=product_id, occurred_at=occurred_at, customer_id=customer_id,
            quantity=int(quantity_text), source_topic="import", delivery_id=source,
            dedupe_key=f"import:{fingerprint}:{seen[fingerprint]}",
        ))
    return events


def import_history(store: EventStore, path: str | Path, shop: str) -> ImportResult:
    """Import a CSV file, leaving out the rows customers/redact erased: of a customer redacted in the shop, dated at
    or before their redaction (`EventStore.redacted`, `Redactions.withholds`: the stores' own rule)."""
    data = Path(path).read_bytes()
    data = data[len(codecs.BOM_UTF8):] if data.startswith(codecs.BOM_UTF8) else data  # Excel writes a BOM
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise HistoryImportError(f"{path}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x}); "
                                 "save the file as CSV UTF-8") from None
    events = read_history_csv(io.StringIO(text, newline=""), shop, source=str(path))
    redactions = store.redacted(shop)
    kept = [e for e in events if not redactions.withholds(e.order_id, e.customer_id, e.occurred_at)]
    return ImportResult(len(events), store.add_events(kept), len(events) - len(kept))
