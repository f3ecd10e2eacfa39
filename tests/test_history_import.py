"""History import: CSV rows → events in one transaction, strict per line, idempotent across re-imports."""

import io
import json
import os
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest
from functions_framework import create_app

from recommender.events import EventKind
from recommender.history_import import HistoryImportError, import_history, read_history_csv
from recommender.store import Interaction, SQLiteEventStore
from tests.conftest import ROOT, SHOP, as_body, order_payload, signed_headers

HEADER = "customer_id,product_id,kind,occurred_at,quantity\n"
VALID = HEADER + (
    "c1,p1,view,2024-03-01T10:00:00+02:00,\n"  # 08:00 UTC, quantity defaults to 1
    "c1,p2,add_to_cart,2024-03-01T09:30:00Z,2\n"
    "c2,p1,purchase,2024-03-01 12:00:00,3\n"  # naive: taken as UTC
)


def write(tmp_path, text, name="history.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def event_rows(store):
    conn = sqlite3.connect(store.path)
    try:
        return conn.execute(
            "SELECT customer_id, product_id, kind, quantity, occurred_at, source_topic, anonymous_id"
            " FROM events ORDER BY id"
        ).fetchall()
    finally:
        conn.close()


def utc(*parts):
    return datetime(*parts, tzinfo=timezone.utc)


# --- read_history_csv / import_history ---------------------------------------------------


def test_read_history_csv_builds_events_with_utc_timestamps():
    # Act
    events = read_history_csv(io.StringIO(VALID), SHOP, source="history.csv")

    # Assert
    assert [(e.customer_id, e.product_id, e.kind, e.quantity, e.occurred_at) for e in events] == [
        ("c1", "p1", EventKind.VIEW, 1, utc(2024, 3, 1, 8, 0)),
        ("c1", "p2", EventKind.ADD_TO_CART, 2, utc(2024, 3, 1, 9, 30)),
        ("c2", "p1", EventKind.PURCHASE, 3, utc(2024, 3, 1, 12, 0)),
    ]
    assert all(e.occurred_at.utcoffset().total_seconds() == 0 for e in events)
    assert {e.shop for e in events} == {SHOP}
    assert {e.source_topic for e in events} == {"import"}
    assert {e.delivery_id for e in events} == {"history.csv"}
    assert len({e.dedupe_key for e in events}) == 3


def test_valid_file_stores_the_right_events(store, tmp_path):
    # Arrange
    path = write(tmp_path, VALID)

    # Act
    result = import_history(store, path, SHOP)

    # Assert
    assert result == (3, 3, 0)
    assert event_rows(store) == [
        ("c1", "p1", "view", 1, "2024-03-01T08:00:00.000000+00:00", "import", None),
        ("c1", "p2", "add_to_cart", 2, "2024-03-01T09:30:00.000000+00:00", "import", None),
        ("c2", "p1", "purchase", 3, "2024-03-01T12:00:00.000000+00:00", "import", None),
    ]
    assert store.history(SHOP, "c:c1", 10) == [
        Interaction("c:c1", "p2", EventKind.ADD_TO_CART, utc(2024, 3, 1, 9, 30)),
        Interaction("c:c1", "p1", EventKind.VIEW, utc(2024, 3, 1, 8, 0)),
    ]


def test_columns_in_any_order_and_without_quantity(store, tmp_path):
    # Arrange
    path = write(tmp_path, "kind,occurred_at,product_id,customer_id\npurchase,2024-01-02T00:00:00Z,p9,c9\n")

    # Act
    result = import_history(store, path, SHOP)

    # Assert
    assert result == (1, 1, 0)
    assert event_rows(store) == [("c9", "p9", "purchase", 1, "2024-01-02T00:00:00.000000+00:00", "import", None)]


def test_importing_the_same_file_twice_stores_once(store, tmp_path):
    # Arrange
    path = write(tmp_path, VALID)
    import_history(store, path, SHOP)

    # Act
    second = import_history(store, path, SHOP)
    copy_elsewhere = import_history(store, write(tmp_path, VALID, name="copy.csv"), SHOP)

    # Assert
    assert second == (3, 0, 0)
    assert copy_elsewhere == (3, 0, 0)
    assert store.count_events() == 3


def test_the_same_file_into_another_shop_is_stored_there_too(store, tmp_path):
    # Arrange
    path = write(tmp_path, VALID)
    import_history(store, path, SHOP)

    # Act
    result = import_history(store, path, "other-shop.myshopify.com")

    # Assert
    assert result == (3, 3, 0)
    assert (store.count_events(SHOP), store.count_events("other-shop.myshopify.com")) == (3, 3)


def test_two_identical_rows_in_one_file_both_count(store, tmp_path):
    # Arrange
    row = "c1,p1,purchase,2024-03-01T10:00:00Z,1\n"
    path = write(tmp_path, HEADER + row + row)

    # Act
    first = import_history(store, path, SHOP)
    again = import_history(store, path, SHOP)

    # Assert
    assert first == (2, 2, 0)
    assert again == (2, 0, 0)
    assert [i.product_id for i in store.history(SHOP, "c:c1", 10)] == ["p1", "p1"]


def test_a_file_with_one_more_repeat_adds_only_that_repeat(store, tmp_path):
    # Arrange
    row = "c1,p1,purchase,2024-03-01T10:00:00Z,1\n"
    import_history(store, write(tmp_path, HEADER + row + row, name="a.csv"), SHOP)

    # Act
    result = import_history(store, write(tmp_path, HEADER + row + row + row, name="b.csv"), SHOP)

    # Assert
    assert result == (3, 1, 0)
    assert store.count_events() == 3


@pytest.mark.parametrize("bad_row,line,fragments", [
    ("c1,p1,click,2024-03-01T10:00:00Z,1\n", 3,
     ("kind must be one of view, add_to_cart, purchase, got 'click'",)),
    ("c1,p1,view,yesterday,1\n", 3, ("occurred_at is not an ISO 8601 timestamp: 'yesterday'",)),
    ("c1,p1,view,,1\n", 3, ("occurred_at is missing or not a string: ''",)),
    ("c1,p1,view,2024-03-01T10:00:00Z,0\n", 3, ("quantity must be", "got '0'")),
    ("c1,p1,view,2024-03-01T10:00:00Z,-2\n", 3, ("quantity must be", "got '-2'")),
    ("c1,p1,view,2024-03-01T10:00:00Z,1.5\n", 3, ("quantity must be", "got '1.5'")),
    (",p1,view,2024-03-01T10:00:00Z,1\n", 3, ("customer_id and product_id are required",)),
    ("c1,,view,2024-03-01T10:00:00Z,1\n", 3, ("customer_id and product_id are required",)),
    ("c1,p1\n", 3, ("kind must be one of view, add_to_cart, purchase, got None",)),  # a short row
])
def test_bad_row_raises_naming_the_line_and_stores_nothing(store, tmp_path, bad_row, line, fragments):
    # Arrange: a good row first, so "stores nothing" means the whole file was refused
    good = "c1,p1,view,2024-03-01T10:00:00Z,1\n"
    path = write(tmp_path, HEADER + good + bad_row + "c2,p2,view,2024-03-01T10:00:00Z,1\n")

    # Act
    with pytest.raises(HistoryImportError) as raised:
        import_history(store, path, SHOP)

    # Assert
    message = str(raised.value)
    assert message.startswith(f"{path}:{line}: ")
    assert [f for f in fragments if f not in message] == []
    assert store.count_events() == 0


def test_bad_row_further_down_names_its_own_line(store, tmp_path):
    # Arrange
    good = "c1,p1,view,2024-03-01T10:00:00Z,1\n"
    path = write(tmp_path, HEADER + good * 5 + "c1,p1,view,2024-03-01T10:00:00Z,0\n")

    # Act
    with pytest.raises(HistoryImportError, match=rf"^{path}:7: quantity must be .*got '0'$"):
        import_history(store, path, SHOP)

    # Assert
    assert store.count_events() == 0


def test_missing_column_in_the_header_raises_naming_it_and_stores_nothing(store, tmp_path):
    # Arrange
    path = write(tmp_path, "customer_id,product_id,occurred_at\nc1,p1,2024-03-01T10:00:00Z\n")

    # Act
    with pytest.raises(HistoryImportError) as raised:
        import_history(store, path, SHOP)

    # Assert
    assert str(raised.value) == (f"{path}: the header lacks column(s) kind; "
                                 "expected customer_id, product_id, kind, occurred_at[, quantity]")
    assert store.count_events() == 0


def test_empty_file_raises_naming_every_column(store, tmp_path):
    # Act
    with pytest.raises(HistoryImportError, match="lacks column\\(s\\) customer_id, product_id, kind, occurred_at;"):
        import_history(store, write(tmp_path, ""), SHOP)

    # Assert
    assert store.count_events() == 0


def test_bug_a_utf8_bom_header_is_accepted(store, tmp_path):
    """BUG recommender/history_import.py:67 (import_history opens with encoding="utf-8").

    Spreadsheet tools ("CSV UTF-8" in Excel) start the file with a BOM; read as "utf-8" the first
    column becomes "\\ufeffcustomer_id" and a valid file is refused with "the header lacks
    column(s) customer_id". Opening with "utf-8-sig" reads both kinds of file.
    """
    # Arrange
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbf" + VALID.encode("utf-8"))

    # Act
    result = import_history(store, path, SHOP)

    # Assert
    assert result == (3, 3, 0)


def test_bug_huge_quantity_raises_history_import_error(store, tmp_path):
    """BUG recommender/history_import.py:42-44 (quantity unbounded) + store.py SQLiteEventStore._write.

    A quantity above 2**63 - 1 passes validation, then the INSERT raises OverflowError, which the
    store does not translate: the caller gets an OverflowError instead of a HistoryImportError
    naming the line, and the CLI dies with a traceback and exit status 1 instead of 2.
    """
    # Arrange
    path = write(tmp_path, HEADER + "c1,p1,view,2024-03-01T10:00:00Z,99999999999999999999\n")

    # Act / Assert
    with pytest.raises(HistoryImportError, match=rf"^{path}:2: quantity"):
        import_history(store, path, SHOP)
    assert store.count_events() == 0


def test_bug_non_ascii_digit_quantity_raises_history_import_error(store, tmp_path):
    """BUG recommender/history_import.py:43: str.isdigit() is True for '²', but int('²') raises ValueError.

    The ValueError escapes read_history_csv untranslated (the CLI prints a traceback, exit 1).
    """
    # Arrange
    path = write(tmp_path, HEADER + "c1,p1,view,2024-03-01T10:00:00Z,\u00b2\n")

    # Act / Assert
    with pytest.raises(HistoryImportError, match=rf"^{path}:2: quantity must be .*got '\u00b2'$"):
        import_history(store, path, SHOP)


# --- the CLI, as a real process ----------------------------------------------------------


def run_cli(tmp_path, *args, store_url=None):
    env = {**os.environ,
           "EVENT_STORE_URL": store_url or f"sqlite:///{tmp_path}/cli/events.sqlite3",
           "MODEL_STORE_URL": f"file://{tmp_path}/cli/models"}
    return subprocess.run([sys.executable, "-m", "recommender", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_cli_import_prints_json_and_exits_0(tmp_path):
    # Arrange
    path = write(tmp_path, VALID)

    # Act
    first = run_cli(tmp_path, "import", str(path), "--shop", SHOP)
    second = run_cli(tmp_path, "import", str(path), "--shop", SHOP)

    # Assert
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {"rows": 3, "stored": 3, "duplicates": 0, "redacted": 0}
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout) == {"rows": 3, "stored": 0, "duplicates": 3, "redacted": 0}
    store = SQLiteEventStore(tmp_path / "cli" / "events.sqlite3")
    try:
        assert store.count_events(SHOP) == 3
        assert store.shops() == [SHOP]
    finally:
        store.close()


def test_cli_import_of_a_bad_file_exits_2_with_an_error_line(tmp_path):
    # Arrange
    path = write(tmp_path, HEADER + "c1,p1,view,2024-03-01T10:00:00Z,1\nc1,p1,click,2024-03-01T10:00:00Z,1\n")

    # Act
    result = run_cli(tmp_path, "import", str(path), "--shop", SHOP)

    # Assert
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"error: {path}:3: kind must be one of view, add_to_cart, purchase, got 'click'"
    ]
    store = SQLiteEventStore(tmp_path / "cli" / "events.sqlite3")
    try:
        assert store.count_events() == 0
    finally:
        store.close()


def test_cli_import_of_a_missing_file_exits_2(tmp_path):
    # Act
    result = run_cli(tmp_path, "import", str(tmp_path / "nope.csv"), "--shop", SHOP)

    # Assert
    assert result.returncode == 2
    assert result.stderr.startswith("error: [Errno 2] No such file or directory")
    assert str(tmp_path / "nope.csv") in result.stderr


def test_bug_a_file_that_is_not_utf8_exits_2_naming_the_line(tmp_path):
    """BUG: a file saved as Windows-1252 (Excel's plain "CSV") raised UnicodeDecodeError out of the CLI, a traceback
    and exit 1, instead of an error line."""
    # Arrange
    path = tmp_path / "latin1.csv"
    path.write_bytes(HEADER.encode() + "c1,p1,view,2024-03-01T10:00:00Z,1\nc\u00e9,p1,view,2024-03-01T10:00:00Z,1\n"
                     .encode("cp1252"))

    # Act
    result = run_cli(tmp_path, "import", str(path), "--shop", SHOP)

    # Assert
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {path}:3: not UTF-8 (byte 0xe9); save the file as CSV UTF-8"]


def test_bug_a_field_past_the_csv_size_limit_exits_2_naming_the_line(tmp_path):
    """BUG: csv.Error ("field larger than field limit") escaped the CLI as a traceback, exit 1."""
    # Arrange
    path = write(tmp_path, HEADER + "c1,p1,view,2024-03-01T10:00:00Z,1\n" + "c1," + "p" * 200_000 + ",view,x,1\n")

    # Act
    result = run_cli(tmp_path, "import", str(path), "--shop", SHOP)

    # Assert
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {path}:3: field larger than field limit (131072)"]


def test_bug_an_error_after_a_blank_line_names_the_files_own_line(store, tmp_path):
    """BUG: rows were numbered as they were read, and csv skips blank lines: the error named the line before."""
    # Arrange
    path = write(tmp_path, HEADER + "c1,p1,view,2024-03-01T10:00:00Z,1\n\n\nc1,p1,click,2024-03-01T10:00:00Z,1\n")

    # Act / Assert
    with pytest.raises(HistoryImportError, match=rf"^{path}:5: kind must be one of"):
        import_history(store, path, SHOP)


def test_bug_a_column_named_twice_in_the_header_is_refused(store, tmp_path):
    """BUG: csv.DictReader keeps the last of two columns of one name: customer_id was read from the fifth column
    (c9), and the import stored the event under the wrong customer without a word."""
    # Arrange
    path = write(tmp_path, "customer_id,product_id,kind,occurred_at,customer_id\nc1,p1,view,2024-03-01T10:00:00Z,c9\n")

    # Act
    with pytest.raises(HistoryImportError) as raised:
        import_history(store, path, SHOP)

    # Assert
    assert str(raised.value) == f"{path}: the header names column(s) customer_id more than once"
    assert store.count_events() == 0


def test_bug_a_row_with_more_fields_than_the_header_is_refused(store, tmp_path):
    """BUG: fields past the header's were dropped without a word: a quantity written in a file whose header has no
    quantity column was stored as 1."""
    # Arrange
    path = write(tmp_path, "customer_id,product_id,kind,occurred_at\nc1,p1,purchase,2024-03-01T10:00:00Z,5\n")

    # Act
    with pytest.raises(HistoryImportError) as raised:
        import_history(store, path, SHOP)

    # Assert
    assert str(raised.value) == f"{path}:2: 5 fields, the header has 4"
    assert store.count_events() == 0


@pytest.mark.parametrize("bad_id, shown", [
    ("c\x001", "'c\\x001'"),
    ("c" * 256, repr("c" * 40) + "..."),
], ids=["nul", "256 characters"])
def test_bug_an_id_postgresql_cannot_store_is_refused_naming_the_line_on_both_backends(tmp_path, event_store_url,
                                                                                      bad_id, shown):
    """BUG: a NUL in an id, or an id of thousands of characters, was stored on SQLite, and on PostgreSQL failed the
    whole import ("\\u0000 cannot be converted to text", "index row size exceeds") without naming the line."""
    # Arrange
    path = write(tmp_path, HEADER + "c1,p1,view,2024-03-01T10:00:00Z,1\n"
                 + f"{bad_id},p1,view,2024-03-01T10:00:00Z,1\n")

    # Act
    result = run_cli(tmp_path, "import", str(path), "--shop", SHOP, store_url=event_store_url)

    # Assert
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {path}:3: customer_id must be at most 255 characters, none of them NUL; got {shown}"]


def test_a_255_character_id_is_stored_on_both_backends(tmp_path, event_store_url):
    # Arrange
    path = write(tmp_path, HEADER + "\u00e9" * 255 + ",p1,view,2024-03-01T10:00:00Z,1\n")

    # Act
    result = run_cli(tmp_path, "import", str(path), "--shop", SHOP, store_url=event_store_url)

    # Assert
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["stored"] == 1


def test_bug_a_row_dated_in_the_future_is_refused(store, tmp_path):
    """BUG: a row dated after the import (a year typed 2205, local times read as UTC) was stored: it counted whole in
    trending and as the shopper's latest event for as long as that lasted, and retention never pruned it (the pixel's
    events are clamped for the same reason)."""
    # Arrange
    path = write(tmp_path, HEADER + "c1,p1,view,2024-03-01T10:00:00Z,1\nc1,p2,view,2205-03-01T10:00:00Z,1\n")

    # Act
    with pytest.raises(HistoryImportError, match=rf"^{path}:3: occurred_at '2205-03-01T10:00:00Z' is later than now"):
        import_history(store, path, SHOP)

    # Assert
    assert store.count_events() == 0


def test_bug_an_import_into_an_installed_shop_leaves_a_late_uninstall_standing(tmp_path, env, event_store_url):
    """BUG recommender/__main__.py (`set_shop_installed(shop, True)` on every import): the import dated the shop's
    install by the machine's clock, now, over the time Shopify's clock gave its first webhook. An app/uninstalled the
    merchant triggered before the import but delivered after it (Shopify retries for 48 hours) was then taken for a
    stale retry and ignored: the shop stayed served, and no other uninstall would come."""
    # Arrange: installed by an order triggered ten minutes ago; the merchant removes the app a minute ago
    os.environ.update({**env, "EVENT_STORE_URL": event_store_url})
    client = create_app(target="app", source=str(ROOT / "main.py")).test_client()
    now = datetime.now(timezone.utc)
    order = as_body(order_payload(1, 5, [101]))
    assert client.post("/webhooks", data=order, headers={**signed_headers(order, "orders/create"),
                       "X-Shopify-Triggered-At": (now - timedelta(minutes=10)).isoformat()}).status_code == 200
    imported = run_cli(tmp_path, "import", str(write(tmp_path, VALID)), "--shop", SHOP, store_url=event_store_url)
    assert imported.returncode == 0, imported.stderr

    # Act: the uninstall, triggered before the import, delivered after it
    body = as_body({"id": 548380009, "name": "Super Toys", "myshopify_domain": SHOP})
    uninstalled = client.post("/webhooks", data=body, headers={**signed_headers(body, "app/uninstalled"),
                              "X-Shopify-Triggered-At": (now - timedelta(minutes=1)).isoformat()})

    # Assert
    assert (uninstalled.status_code, uninstalled.json["status"], uninstalled.json["serving"]) == (200, "done", False)
    assert client.get(f"/recommend?shop={SHOP}&intent=trending").status_code == 404


def test_bug_a_header_with_trailing_empty_columns_is_imported(store, tmp_path):
    """BUG recommender/history_import.py: the check for a column named twice also counted the header's unnamed
    columns, so a spreadsheet's export with two empty columns at the end (`...,occurred_at,,`), imported before, was
    refused as naming the column '' twice; only a repeat of a column the import reads is ambiguous."""
    # Arrange
    path = write(tmp_path, "customer_id,product_id,kind,occurred_at,,\nc1,p1,view,2024-03-01T10:00:00Z,,\n")

    # Act
    result = import_history(store, path, SHOP)

    # Assert
    assert result == (1, 1, 0)


def test_bug_a_row_ending_in_empty_fields_past_the_header_is_imported(store, tmp_path):
    """BUG recommender/history_import.py: the refusal of fields past the header's (where a quantity was dropped) also
    refused a row that merely ends in a comma, imported before: an empty field past the header's drops nothing."""
    # Arrange
    path = write(tmp_path, "customer_id,product_id,kind,occurred_at\nc1,p1,purchase,2024-03-01T10:00:00Z,\n")

    # Act
    result = import_history(store, path, SHOP)

    # Assert
    assert result == (1, 1, 0)


def test_bug_an_import_after_customers_redact_does_not_store_the_redacted_customer_again(tmp_path, event_store_url):
    """BUG: customers/redact deleted c1's events, and importing the same old CSV again stored them again."""
    # Arrange: the file imported, then c1 redacted
    from recommender.store import open_event_store

    path = write(tmp_path, VALID)
    assert run_cli(tmp_path, "import", str(path), "--shop", SHOP, store_url=event_store_url).returncode == 0
    store = open_event_store(event_store_url)
    try:
        assert store.redact_customer(SHOP, "c1", []) == 2

        # Act: the same file again, and a newer one with a row of c1 and one of a new customer
        again = run_cli(tmp_path, "import", str(path), "--shop", SHOP, store_url=event_store_url)
        newer = import_history(store, write(tmp_path, HEADER + "c1,p3,purchase,2024-04-01T10:00:00Z,1\n"
                                                   "c3,p3,view,2024-04-01T10:00:00Z,1\n", name="newer.csv"), SHOP)

        # Assert
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout) == {"rows": 3, "stored": 0, "duplicates": 1, "redacted": 2}
        assert newer == (2, 1, 1)
        assert store.history(SHOP, "c:c1", 10) == []
        assert [(i.user_key, i.product_id) for i in store.interactions(SHOP)] == [("c:c2", "p1"), ("c:c3", "p3")]
        assert import_history(store, path, "other-shop.myshopify.com") == (3, 3, 0), "c1 of another shop is another"
    finally:
        store.close()


def test_bug_an_import_stores_the_rows_of_a_redacted_customer_dated_after_the_redaction(tmp_path, event_store_url):
    """BUG recommender/history_import.py: every row of a customer customers/redact erased was left out, forever; a
    customer who shops again after asking to be forgotten makes new data, which the webhooks store. Now a row is left
    out when dated at or before the customer's redaction (the webhooks' rule, `REDACTED_EVENT`), stored when later."""
    # Arrange: c1 redacted; a file with a row of c1 from before the redaction and one from after it
    from recommender.store import open_event_store

    store = open_event_store(event_store_url)
    try:
        assert store.redact_customer(SHOP, "c1", []) == 0
        redacted_at = datetime.fromisoformat(store.export_customer(SHOP, "c1")["redactions"][0]["redacted_at"])
        time.sleep(0.01)
        after = datetime.now(timezone.utc)
        assert after > redacted_at
        path = write(tmp_path, HEADER + f"c1,p1,view,{(redacted_at - timedelta(seconds=1)).isoformat()},1\n"
                                        f"c1,p2,purchase,{after.isoformat()},1\n"
                                        f"c1,p3,view,{redacted_at.isoformat()},1\n")  # at the redaction: erased

        # Act
        imported = run_cli(tmp_path, "import", str(path), "--shop", SHOP, store_url=event_store_url)

        # Assert
        assert imported.returncode == 0, imported.stderr
        assert json.loads(imported.stdout) == {"rows": 3, "stored": 1, "duplicates": 0, "redacted": 2}
        assert [(i.product_id, i.occurred_at) for i in store.history(SHOP, "c:c1", 10)] == [("p2", after)]
    finally:
        store.close()
