"""Bootstrap a shop from history: a CSV of past interactions into the event store.

Columns (header row required): customer_id, product_id, kind, occurred_at and,
optionally, quantity. `kind` is view, add_to_cart or purchase; `occurred_at` is
ISO 8601. The whole file is validated first and stored in one transaction, so a
bad row stores nothing; importing the same file twice stores it once.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections import Counter
from pathlib import Path
from typing import TextIO

from recommender.errors import InvalidEvent, RecommenderError
from recommender.changes import Event
from recommender.events import MAX_QUANTITY, EventKind, parse_timestamp
from recommender.store import EventStore

REQUIRED_COLUMNS = ("customer_id", "product_id", "kind", "occurred_at")
_POSITIVE = re.compile(r"^[0-9]{1,9}$")  # ASCII digits only: str.isdigit() also accepts superscripts


class HistoryImportError(RecommenderError):
    """The file cannot be imported; the message names the line and the column."""


def read_history_csv(handle: TextIO, shop: str, source: str = "import") -> list[Event]:
    reader = csv.DictReader(handle)
    missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise HistoryImportError(f"{source}: the header lacks column(s) {', '.join(missing)}; "
                           f"expected {', '.join(REQUIRED_COLUMNS)}[, quantity]")
    seen: Counter[str] = Counter()
    events = []
    for line, row in enumerate(reader, start=2):
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
        try:
            occurred_at = parse_timestamp((row["occurred_at"] or "").strip(), "occurred_at")
        except InvalidEvent as exc:
            raise HistoryImportError(f"{source}:{line}: {exc}") from None
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


def import_history(store: EventStore, path: str | Path, shop: str) -> tuple[int, int]:
    """Import a CSV file; returns (rows read, events newly stored)."""
    with open(path, newline="", encoding="utf-8-sig") as handle:  # Excel writes a BOM
        events = read_history_csv(handle, shop, source=str(path))
    return len(events), store.add_events(events)
