"""Backfill through the REST Admin API, against a real HTTP server on loopback that answers in Shopify's shape."""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from recommender.__main__ import main as cli_main
from recommender.changes import Delivery
from recommender.settings import Secret
from recommender.store import SQLiteEventStore
from tests.conftest import SHOP, order_payload
from webhooks.backfill import (
    BACKOFF_SECONDS, BackfillConfig, BackfillError, bucket_pause, check_base_url, parse_call_limit,
    retry_after_seconds, run_backfill,
)
from webhooks.topics import TopicContext, inventory_level_updated, order_created, refund_created

TOKEN = "shpat_test_token_never_printed"
API = "/admin/api/2026-04"
SINCE = "2025-01-01"


# --- the data Shopify serves: a known answer ------------------------------------------------------

def product(product_id: int, status: str = "active") -> dict:
    return {
        "id": product_id, "title": f"Product {product_id}", "handle": f"product-{product_id}", "status": status,
        "published_at": "2024-06-01T00:00:00Z", "updated_at": "2024-06-02T00:00:00Z", "vendor": "Acme",
        "product_type": "Thing", "image": {"src": f"https://cdn.example/{product_id}.jpg"},
        "variants": [{"id": product_id * 10, "price": "12.50", "inventory_item_id": product_id * 100,
                      "inventory_quantity": 3, "inventory_policy": "deny"}],
    }


def order(order_id: int, customer_id: int | None, product_ids: list[int], created_at: str, **extra) -> dict:
    body = order_payload(order_id, customer_id, product_ids, created_at=created_at, cart_token=extra.pop("cart", None))
    body["updated_at"] = created_at
    body.update(extra)
    return body


PRODUCTS = [product(8001), product(8002), product(8003), product(8004, status="draft"), product(8005)]
REFUNDED = order(5005, 3, [8005], "2025-03-05T10:00:00Z")
REFUNDED["line_items"][0]["quantity"] = 2
REFUNDED["refunds"] = [{"id": 77, "order_id": 5005, "refund_line_items": [
    {"line_item_id": REFUNDED["line_items"][0]["id"], "quantity": 1}]}]
GUEST = order(5003, None, [8001], "2025-03-03T10:00:00Z", cart="cart-guest")
GUEST["line_items"].append({"id": 999, "product_id": None, "quantity": 1, "price": "5.00", "title": "Gift wrap"})
ORDERS = [
    order(4999, 9, [8001], "2024-12-15T10:00:00Z"),  # before --since: never requested
    order(5001, 1, [8001, 8002], "2025-03-01T10:00:00Z"),
    order(5002, 2, [8002, 8003], "2025-03-02T10:00:00Z"),
    GUEST,  # one product line and one custom line (skipped)
    order(5004, 1, [8004], "2025-03-04T10:00:00Z", cancelled_at="2025-03-04T12:00:00Z"),  # stored at weight 0
    REFUNDED,  # one line, half of it refunded: weight 0.5
    order(5006, 2, [8003, 8001], "2025-03-06T10:00:00Z"),
]
# Every location's level of the products' inventory items (product id × 100), as inventory_levels.json serves them:
# the truth the payloads' `inventory_quantity` (3 for each) no longer tells.
def level(item: int, location: int, available: int | None, updated_at: str = "2025-02-01T00:00:00Z") -> dict:
    return {"inventory_item_id": item, "location_id": location, "available": available, "updated_at": updated_at,
            "admin_graphql_api_id": f"gid://shopify/InventoryLevel/{item}?inventory_item_id={location}"}


LEVELS = [
    level(800100, 1, 3), level(800100, 2, 0),  # 3 in all, as the payload says
    level(800200, 1, 0), level(800200, 2, 0),  # sold out since the payload said 3
    level(800300, 1, 2), level(800300, 2, 5),  # 7
    level(800400, 1, 4),  # a draft product's
    level(800500, 2, 1),  # one location only
    level(999900, 1, 50),  # an item of no product served: never requested
]
EXPECTED_LEVELS = 8
EXPECTED_STOCK = {"8001": 3, "8002": 0, "8003": 7, "8004": 4, "8005": 1}
EXPECTED_EVENTS = 9  # product lines of the six orders since SINCE
EXPECTED_COUNTING = 8  # the cancelled order's line counts for nothing
PAGE = 2  # records per page in these tests: 3 pages of products, 3 of orders


# --- a local Admin API -----------------------------------------------------------------------------

@dataclass
class Seen:
    resource: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    answered: int | None = None  # None: the connection was dropped


@dataclass
class FakeAdminApi:
    """Pages with Link page_info cursors, the call-limit header, injected failures; records every request."""

    products: list[dict]
    orders: list[dict]
    levels: list[dict] = field(default_factory=list)
    port: int = 0
    requests: list[Seen] = field(default_factory=list)
    inject: dict[tuple[str, int], list[int]] = field(default_factory=dict)  # (resource, page) → statuses first
    call_limit: dict[tuple[str, int], str] = field(default_factory=dict)  # (resource, page) → header value
    drop_after_pages: int | None = None  # then drop every connection, as a server that went away
    foreign_next: bool = False  # a next link to another host
    truncate: dict[tuple[str, int], int] = field(default_factory=dict)  # (resource, page) → answers cut off mid-body
    served: list[tuple[str, int]] = field(default_factory=list)
    cursors: dict[str, tuple[str, list[dict], int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer(self, path: str, query: dict[str, list[str]], headers: dict[str, str]) -> tuple[int, dict, dict] | None:
        resource = path.removeprefix(f"{API}/").removesuffix(".json")
        seen = Seen(resource, query, headers)
        self.requests.append(seen)
        if self.drop_after_pages is not None and len(self.served) >= self.drop_after_pages:
            return None
        if headers.get("x-shopify-access-token") != TOKEN:
            return self._error(seen, 401, {"errors": "[API] Invalid API key or access token"})
        if resource not in ("products", "orders", "inventory_levels") or not path.startswith(API):
            return self._error(seen, 404, {"errors": "Not Found"})
        if "page_info" in query:
            if set(query) - {"page_info", "limit", "fields"}:
                return self._error(seen, 400, {"errors": {"page_info": "Invalid with other filters"}})
            cursor_resource, records, offset = self.cursors[query["page_info"][0]]
            assert cursor_resource == resource
        elif resource == "inventory_levels":  # inventory_item_ids (at most 50) or location_ids is required
            items = query.get("inventory_item_ids", [""])[0].split(",")
            if set(query) - {"inventory_item_ids", "limit"} or not 1 <= len(items) <= 50:
                return self._error(seen, 422, {"errors": "inventory_item_ids: 1 to 50 ids"})
            records = [lvl for lvl in self.levels if str(lvl["inventory_item_id"]) in items]
            offset = 0
        else:
            records = self.products if resource == "products" else self.orders
            if resource == "orders":
                assert query.get("status") == ["any"]
                since = query.get("created_at_min", [""])[0]
                records = [o for o in records if o["created_at"] >= since.replace("+00:00", "Z")]
            offset = 0
        limit = int(query.get("limit", ["50"])[0])
        page = (resource, offset // limit)
        if self.inject.get(page):
            status = self.inject[page].pop(0)
            extra = {"Retry-After": "2.5"} if status == 429 else {}
            return self._error(seen, status, {"errors": "injected"}, extra)
        links = []
        if offset + limit < len(records):
            links.append(f'<{self._cursor_url(resource, records, offset + limit, limit)}>; rel="next"')
        if offset > 0:
            links.append(f'<{self._cursor_url(resource, records, max(0, offset - limit), limit)}>; rel="previous"')
        headers_out = {"X-Shopify-Shop-Api-Call-Limit": self.call_limit.get(page, "1/40")}
        if links:
            headers_out["Link"] = ", ".join(links)
        if self.truncate.get(page):
            self.truncate[page] -= 1
            seen.answered = 200
            headers_out["Truncated"] = "yes"  # _Handler sends the headers and a few bytes of the body, then hangs up
            return 200, headers_out, {resource: records[offset:offset + limit]}
        seen.answered = 200
        self.served.append(page)
        return 200, headers_out, {resource: records[offset:offset + limit]}

    def _cursor_url(self, resource: str, records: list[dict], offset: int, limit: int) -> str:
        page_info = uuid.uuid4().hex
        self.cursors[page_info] = (resource, records, offset)
        host = "http://127.0.0.2:9" if self.foreign_next else self.base_url
        return f"{host}{API}/{resource}.json?limit={limit}&page_info={page_info}"

    @staticmethod
    def _error(seen: Seen, status: int, body: dict, headers: dict | None = None):
        seen.answered = status
        return status, {"X-Shopify-Shop-Api-Call-Limit": "1/40", **(headers or {})}, body


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        api: FakeAdminApi = self.server.api  # type: ignore[attr-defined]
        url = urlsplit(self.path)
        with api.lock:
            answer = api.answer(url.path, parse_qs(url.query), {k.lower(): v for k, v in self.headers.items()})
        if answer is None:
            self.close_connection = True  # no status line at all: the client sees a dropped connection
            return
        status, headers, body = answer
        data = json.dumps(body).encode()
        truncated = headers.pop("Truncated", None)
        self.send_response(status)
        for name, value in {**headers, "Content-Type": "application/json", "Content-Length": str(len(data))}.items():
            self.send_header(name, value)
        self.end_headers()
        if truncated:
            self.wfile.write(data[:10])
            self.close_connection = True
            return
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def served(api, handler):
    """A stand-in Admin API on a loopback port while the block runs: `handler` answers from `api`, whose `port` it
    sets; yields `api`."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.api = api  # type: ignore[attr-defined]
    api.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def admin_api():
    with served(FakeAdminApi(PRODUCTS, ORDERS, LEVELS), _Handler) as api:
        yield api


class RecordedSleep:
    """Injected instead of time.sleep: remembers each wait, waits for none."""

    def __init__(self):
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def config_for(api: FakeAdminApi, tmp_path: Path, **options) -> BackfillConfig:
    return BackfillConfig.from_options(SHOP, {"SHOPIFY_ADMIN_TOKEN": TOKEN}, since=SINCE, base_url=api.base_url,
                                       state_path=tmp_path / "state.json", **{"page_size": PAGE, **options})


def backfill(api, store, tmp_path, sleep=None, **options) -> dict:
    return run_backfill(config_for(api, tmp_path, **options), store, sleep=sleep or RecordedSleep(), progress=False)


def stored_totals(store) -> tuple[int, list[str], list[tuple[str, str, float]]]:
    interactions = sorted((i.user_key, i.product_id, i.weight_factor) for i in store.interactions(SHOP))
    return store.count_events(SHOP), sorted(store.products(SHOP)), interactions


COUNTED = ("products", "orders", "events", "pages", "skipped")


# --- a whole backfill --------------------------------------------------------------------------------

def test_backfill_fetches_every_page_in_order_and_stores_what_was_served(admin_api, store, tmp_path):
    admin_api.inject = {("products", 1): [500], ("orders", 1): [429]}
    admin_api.call_limit = {("orders", 0): "39/40"}
    sleep = RecordedSleep()

    summary = backfill(admin_api, store, tmp_path, sleep)

    assert [page for page in admin_api.served if page[0] != "inventory_levels"] == [
        ("products", 0), ("products", 1), ("products", 2), ("orders", 0), ("orders", 1), ("orders", 2)]
    main_requests = [seen for seen in admin_api.requests if seen.resource != "inventory_levels"]
    first_products, first_orders = main_requests[0], main_requests[4]
    assert first_products.query == {"limit": ["2"]}
    assert first_orders.query == {"limit": ["2"], "status": ["any"], "created_at_min": ["2025-01-01T00:00:00+00:00"]}
    cursor_requests = [seen for seen in main_requests if "page_info" in seen.query]
    assert len(cursor_requests) == 6  # pages 2 and 3 of each, and the two retried ones
    assert all(set(seen.query) == {"page_info", "limit"} for seen in cursor_requests)
    assert all(seen.headers["x-shopify-access-token"] == TOKEN for seen in admin_api.requests)
    assert [seen.answered for seen in main_requests] == [200, 500, 200, 200, 200, 429, 200, 200]
    assert sleep.calls == [BACKOFF_SECONDS, 1.5, 2.5]  # the 500's backoff, the 39/40 bucket drain, Retry-After
    assert summary == {"shop": SHOP, "products": 5, "inventory_levels": EXPECTED_LEVELS, "orders": 6,
                       "events": EXPECTED_EVENTS, "duplicates": 0, "skipped": 0, "redacted": 0, "pages": 6 + 5,
                       "retries": 2, "resumed": False}  # 5 pages of levels: 4 and 3 levels in pages of 2, then 1
    assert store.count_events(SHOP) == EXPECTED_EVENTS
    catalog = store.products(SHOP)
    assert sorted(catalog) == ["8001", "8002", "8003", "8004", "8005"]
    assert catalog["8004"].status == "draft" and catalog["8001"].price == 12.5
    counting = store.interactions(SHOP)
    assert len(counting) == EXPECTED_COUNTING
    assert {i.order_id for i in counting} == {"5001", "5002", "5003", "5005", "5006"}  # 5004 was cancelled
    assert [i.weight_factor for i in counting if i.order_id == "5005"] == [0.5]  # one of two units refunded
    assert [i.user_key for i in counting if i.order_id == "5003"] == ["a:cart-guest"]
    assert store.is_shop_installed(SHOP)
    assert not (tmp_path / "state.json").exists()


def test_running_again_stores_nothing_new(admin_api, store, tmp_path):
    backfill(admin_api, store, tmp_path)
    before = stored_totals(store)

    again = backfill(admin_api, store, tmp_path)

    assert stored_totals(store) == before
    assert (again["products"], again["inventory_levels"], again["orders"], again["events"], again["duplicates"]) == (
        0, 0, 0, 0, 11 + EXPECTED_LEVELS)


def test_an_order_already_received_by_webhook_is_not_counted_twice(admin_api, store, tmp_path):
    received = ORDERS[1]
    webhook_id = str(uuid.uuid4())
    store.apply(Delivery(SHOP, webhook_id, "orders/create"),
                order_created(TopicContext(SHOP, "orders/create", webhook_id), received))

    summary = backfill(admin_api, store, tmp_path)

    assert store.count_events(SHOP) == EXPECTED_EVENTS
    assert summary["events"] == EXPECTED_EVENTS - len(received["line_items"])
    assert summary["orders"] == 6  # the order is stored as a backfill delivery too, with no new events


def test_bug_a_refund_received_by_webhook_before_the_backfill_of_its_order_still_counts(admin_api, store, tmp_path):
    # Arrange: order 5005 was placed before the install and refunded after it: refunds/create came, with no line to
    # shrink yet (the backfill then skipped the same refund in the order's record as applied: the line stayed whole)
    [refund] = REFUNDED["refunds"]
    store.apply(Delivery(SHOP, "wh-refund-77", "refunds/create"),
                refund_created(TopicContext(SHOP, "refunds/create", "wh-refund-77"), refund))

    # Act
    backfill(admin_api, store, tmp_path)

    # Assert: one of two units refunded, once, as without the webhook
    assert [i.weight_factor for i in store.interactions(SHOP) if i.order_id == "5005"] == [0.5]


# --- stock levels -------------------------------------------------------------------------------------

@pytest.fixture
def either_store(event_store_url):
    """The event store at conftest's `event_store_url`: SQLite, and PostgreSQL when TEST_POSTGRES_URL is set."""
    from recommender.store import open_event_store

    opened = open_event_store(event_store_url)
    yield opened
    opened.close()


def stock(store) -> dict[str, int]:
    return {pid: product.variants[0].inventory_quantity for pid, product in store.products(SHOP).items()}


def stock_webhook(store, webhook_id: str, item: int, location: int, available: int) -> None:
    changes = inventory_level_updated(TopicContext(SHOP, "inventory_levels/update", webhook_id),
                                      {"inventory_item_id": item, "location_id": location, "available": available})
    store.apply(Delivery(SHOP, webhook_id, "inventory_levels/update"), changes)


def test_bug_the_backfill_reads_every_locations_level_so_a_stock_webhook_then_sums_them_exactly(
        admin_api, either_store, tmp_path):
    # Arrange: product 8001's item holds 3 at location 1 and 0 at location 2 (the payload's total: 3). Before the
    # fix, the backfill read no level: location 2's first webhook (0) became the variant's whole stock
    store = either_store

    # Act
    summary = backfill(admin_api, store, tmp_path)

    # Assert: each page of products brought its items' levels, by inventory_item_ids, paged by its cursors, whatever
    # --since says (it limits orders)
    assert stock(store) == EXPECTED_STOCK
    assert "8002" in store.unsellable_product_ids(SHOP)  # the payload said 3; every location says 0
    level_requests = [seen for seen in admin_api.requests if seen.resource == "inventory_levels"]
    firsts = [seen.query for seen in level_requests if "page_info" not in seen.query]
    assert firsts == [{"inventory_item_ids": ["800100,800200"], "limit": ["2"]},
                      {"inventory_item_ids": ["800300,800400"], "limit": ["2"]},
                      {"inventory_item_ids": ["800500"], "limit": ["2"]}]
    assert len(level_requests) == 5 and summary["inventory_levels"] == EXPECTED_LEVELS

    # Act / Assert: location 2 counts 0 again: location 1 still holds 3; then location 1 sells out: none left
    stock_webhook(store, "wh-8001-at-2", 800100, 2, 0)
    assert stock(store)["8001"] == 3 and "8001" not in store.unsellable_product_ids(SHOP)
    stock_webhook(store, "wh-8001-at-1", 800100, 1, 0)
    assert stock(store)["8001"] == 0 and "8001" in store.unsellable_product_ids(SHOP)
    stock_webhook(store, "wh-8001-at-2-again", 800100, 2, 4)
    assert stock(store)["8001"] == 4 and "8001" not in store.unsellable_product_ids(SHOP)


def test_levels_are_requested_50_inventory_items_at_a_time(admin_api, store, tmp_path):
    # Arrange: one page of 120 products, two variants each (240 items), three locations stocking the first item
    admin_api.products = [{**product(9000 + n), "variants": [
        {"id": (9000 + n) * 10 + k, "price": "1.00", "inventory_item_id": (9000 + n) * 100 + k,
         "inventory_quantity": 3} for k in (1, 2)]} for n in range(120)]
    admin_api.levels = [level(900001, location, 1) for location in (1, 2, 3)]
    admin_api.orders = []

    # Act
    summary = backfill(admin_api, store, tmp_path, page_size=250)

    # Assert
    batches = [seen.query["inventory_item_ids"][0].split(",") for seen in admin_api.requests
               if seen.resource == "inventory_levels"]
    assert [len(batch) for batch in batches] == [50, 50, 50, 50, 40]
    assert [item for batch in batches for item in batch] == [
        str((9000 + n) * 100 + k) for n in range(120) for k in (1, 2)]
    assert summary["inventory_levels"] == 3
    assert store.products(SHOP)["9000"].variants[0].inventory_quantity == 3  # the three locations' 1 each


def test_a_token_that_may_not_read_inventory_is_told_which_scope_it_needs(admin_api, store, tmp_path):
    admin_api.inject = {("inventory_levels", 0): [403]}

    with pytest.raises(BackfillError, match="read_inventory scope") as raised:
        backfill(admin_api, store, tmp_path)

    assert raised.value.status == 403
    assert store.products(SHOP) == {}  # the page's levels are read before the page is stored


# --- interruption and resuming ------------------------------------------------------------------------

def test_a_backfill_cut_off_by_the_server_resumes_from_the_state_file(admin_api, store, tmp_path):
    reference_store = SQLiteEventStore(tmp_path / "reference.sqlite3")
    reference = backfill(admin_api, reference_store, tmp_path / "reference")
    admin_api.requests.clear()
    admin_api.drop_after_pages = len(admin_api.served) + 9  # products' three pages, their levels', the first of orders
    state_file = tmp_path / "state.json"

    with pytest.raises(BackfillError, match="gave up after 5 retries"):
        backfill(admin_api, store, tmp_path)
    state = json.loads(state_file.read_text())
    assert state["cursors"]["products"] is None  # done
    assert "page_info=" in state["cursors"]["orders"]
    assert TOKEN not in state_file.read_text()

    admin_api.drop_after_pages = None
    admin_api.requests.clear()
    resumed = backfill(admin_api, store, tmp_path)

    assert admin_api.requests[0].resource == "orders" and "page_info" in admin_api.requests[0].query
    assert all(seen.resource == "orders" for seen in admin_api.requests)
    assert resumed["resumed"] is True
    assert {k: resumed[k] for k in COUNTED} == {k: reference[k] for k in COUNTED}
    assert stored_totals(store) == stored_totals(reference_store)
    assert not state_file.exists()
    reference_store.close()


class CtrlC:
    """A delivery's changes that press Ctrl-C as soon as the store reads them."""

    def __getattr__(self, name):
        raise KeyboardInterrupt


class InterruptedStore:
    """The real store, with Ctrl-C pressed while it stores its `interrupt_at`-th delivery, inside the transaction
    of that delivery's page."""

    def __init__(self, store, interrupt_at: int):
        self._store, self._left = store, interrupt_at

    def apply_many(self, items):
        if 0 < self._left <= len(items):
            delivery, _ = items[self._left - 1]
            items = [*items[:self._left - 1], (delivery, CtrlC()), *items[self._left:]]
        self._left -= len(items)
        return self._store.apply_many(items)

    def __getattr__(self, name):
        return getattr(self._store, name)


def test_a_state_file_written_before_redactions_were_counted_resumes(admin_api, store, tmp_path):
    # Arrange: a backfill cut off after its products, its state file as the code before `redacted` wrote it
    admin_api.drop_after_pages = 3 + 5  # products' three pages and their levels'
    with pytest.raises(BackfillError):
        backfill(admin_api, store, tmp_path)
    state_file = tmp_path / "state.json"
    state = json.loads(state_file.read_text())
    del state["totals"]["redacted"]
    state_file.write_text(json.dumps(state))
    admin_api.drop_after_pages = None

    # Act
    resumed = backfill(admin_api, store, tmp_path)

    # Assert
    assert (resumed["resumed"], resumed["redacted"], resumed["orders"]) == (True, 0, 6)


def test_ctrl_c_in_the_middle_of_a_page_resumes_with_the_same_totals(admin_api, store, tmp_path):
    reference_store = SQLiteEventStore(tmp_path / "reference.sqlite3")
    reference = backfill(admin_api, reference_store, tmp_path / "reference")

    with pytest.raises(KeyboardInterrupt):  # the 5 products and their 8 levels, then the first orders page's 2nd
        backfill(admin_api, InterruptedStore(store, interrupt_at=5 + EXPECTED_LEVELS + 2), tmp_path)
    assert (tmp_path / "state.json").exists()
    assert len(store.products(SHOP)) == 5 and store.count_events(SHOP) == 0  # the page was rolled back whole
    resumed = backfill(admin_api, store, tmp_path)

    assert {k: resumed[k] for k in COUNTED} == {k: reference[k] for k in COUNTED}
    assert resumed["duplicates"] == 0  # the interrupted page, fetched again, was stored whole
    assert stored_totals(store) == stored_totals(reference_store)
    reference_store.close()


def test_a_state_file_of_other_options_is_refused_by_name(admin_api, store, tmp_path):
    with pytest.raises(KeyboardInterrupt):  # in the first page of orders, the products stored
        backfill(admin_api, InterruptedStore(store, interrupt_at=5 + EXPECTED_LEVELS + 2), tmp_path)

    with pytest.raises(BackfillError, match="belongs to a backfill with .*since='2025-01-01T00:00:00\\+00:00'"):
        run_backfill(BackfillConfig.from_options(SHOP, {"SHOPIFY_ADMIN_TOKEN": TOKEN}, since="2024-01-01",
                                                 base_url=admin_api.base_url, state_path=tmp_path / "state.json"),
                     store, sleep=RecordedSleep(), progress=False)


# --- refusals ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("status, words", [
    (401, "refused the access token (401"), (403, "read_products scope"), (404, "check the shop domain"),
])
def test_a_status_retrying_cannot_fix_is_a_clear_error(admin_api, store, tmp_path, status, words):
    admin_api.inject = {("products", 0): [status]}

    with pytest.raises(BackfillError) as raised:
        backfill(admin_api, store, tmp_path)

    assert raised.value.status == status and words in str(raised.value)
    assert TOKEN not in str(raised.value)
    assert len(admin_api.requests) == 1 and store.count_events(SHOP) == 0
    assert not (tmp_path / "state.json").exists()  # nothing was stored, so nothing to resume


def test_a_next_link_to_another_host_never_receives_the_token(admin_api, store, tmp_path):
    admin_api.foreign_next = True

    with pytest.raises(BackfillError, match="refusing to send the access token to http://127.0.0.2:9"):
        backfill(admin_api, store, tmp_path)

    assert len(admin_api.requests) == 1


def test_the_token_variable_and_the_base_url_are_checked_before_any_request(tmp_path):
    with pytest.raises(BackfillError, match="SHOPIFY_ADMIN_TOKEN is not set"):
        BackfillConfig.from_options(SHOP, {})
    with pytest.raises(BackfillError, match="must be https://"):
        BackfillConfig(SHOP, Secret(TOKEN), base_url="http://example.com")
    assert check_base_url("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"
    assert BackfillConfig(SHOP, Secret(TOKEN)).base_url == f"https://{SHOP}"
    assert TOKEN not in repr(BackfillConfig(SHOP, Secret(TOKEN)))


def test_call_limit_and_retry_after_headers_are_read_as_shopify_sends_them():
    assert parse_call_limit("39/40") == (39, 40) and parse_call_limit("junk") is None and parse_call_limit(None) is None
    assert bucket_pause("10/40") == 0.0
    assert bucket_pause("38/40") == 1.0  # two calls over the headroom of four, at 2 calls/s
    assert bucket_pause("80/80") == 2.0
    assert retry_after_seconds("2.0") == 2.0 and retry_after_seconds("0.5") == 0.5
    assert retry_after_seconds(None) == retry_after_seconds("soon") == 2.0


# --- the command line ----------------------------------------------------------------------------------

def cli(env, api, tmp_path, monkeypatch, *extra) -> int:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return cli_main(["backfill", "--shop", SHOP, "--base-url", api.base_url, "--state",
                     str(tmp_path / "cli-state.json"), *extra])


def test_cli_prints_the_summary_as_json(admin_api, env, tmp_path, monkeypatch, capsys, store_of):
    code = cli({**env, "SHOP_TOKEN": TOKEN}, admin_api, tmp_path, monkeypatch,
               "--token-env", "SHOP_TOKEN", "--since", SINCE)

    out = capsys.readouterr()
    assert code == 0, out.err
    summary = json.loads(out.out)
    assert (summary["products"], summary["inventory_levels"], summary["orders"], summary["events"],
            summary["pages"]) == (5, EXPECTED_LEVELS, 6, EXPECTED_EVENTS, 3)  # one page each of all three
    assert admin_api.requests[0].query["limit"] == ["250"]
    assert store_of(None).count_events(SHOP) == EXPECTED_EVENTS
    assert TOKEN not in out.out + out.err


def test_cli_exits_2_with_a_clear_message_on_401(admin_api, env, tmp_path, monkeypatch, capsys):
    code = cli({**env, "SHOPIFY_ADMIN_TOKEN": "shpat_wrong_token"}, admin_api, tmp_path, monkeypatch)

    out = capsys.readouterr()
    assert code == 2
    assert "Shopify refused the access token (401 Unauthorized)" in out.err
    assert "shpat_wrong_token" not in out.out + out.err
    assert out.out == ""


def test_bug_a_backfill_of_an_installed_shop_leaves_a_late_uninstall_standing(admin_api, env, tmp_path, monkeypatch,
                                                                               capsys, event_store_url):
    """BUG webhooks/backfill.py (`set_shop_installed(shop, True)` after every run): the backfill dated an installed
    shop's install by the machine's clock, now, over the time Shopify's clock gave its first webhook. An
    app/uninstalled triggered before the backfill ended but delivered after it (Shopify retries; the merchant's own
    custom-app token stays valid) was then taken for a stale retry and ignored: the shop stayed served."""
    import os
    from datetime import datetime, timedelta, timezone

    from functions_framework import create_app

    from tests.conftest import ROOT, as_body, order_payload, signed_headers

    # Arrange: installed by an order triggered ten minutes ago; the merchant removes the app a minute ago
    os.environ.update({**env, "EVENT_STORE_URL": event_store_url})
    client = create_app(target="app", source=str(ROOT / "main.py")).test_client()
    now = datetime.now(timezone.utc)
    placed = as_body(order_payload(1, 5, [8001]))
    assert client.post("/webhooks", data=placed, headers={**signed_headers(placed, "orders/create"),
                       "X-Shopify-Triggered-At": (now - timedelta(minutes=10)).isoformat()}).status_code == 200
    code = cli({**env, "EVENT_STORE_URL": event_store_url, "SHOPIFY_ADMIN_TOKEN": TOKEN}, admin_api, tmp_path,
               monkeypatch)
    assert code == 0, capsys.readouterr().err

    # Act: the uninstall, triggered before the backfill ended, delivered after it
    body = as_body({"id": 548380009, "name": "Super Toys", "myshopify_domain": SHOP})
    uninstalled = client.post("/webhooks", data=body, headers={**signed_headers(body, "app/uninstalled"),
                              "X-Shopify-Triggered-At": (now - timedelta(minutes=1)).isoformat()})

    # Assert
    assert (uninstalled.status_code, uninstalled.json["status"], uninstalled.json["serving"]) == (200, "done", False)
    assert client.get(f"/recommend?shop={SHOP}&intent=trending").status_code == 404


def test_a_backfill_marks_a_shop_it_has_not_heard_of_installed(admin_api, store, tmp_path):
    assert not store.is_shop_installed(SHOP)

    backfill(admin_api, store, tmp_path)

    assert store.is_shop_installed(SHOP)


def test_bug_a_connection_cut_in_the_middle_of_a_page_is_retried(admin_api, store, tmp_path):
    """BUG webhooks/backfill.py (`AdminApiClient._get` retried requests.ConnectionError and Timeout only): a connection
    dropped while a page's body was arriving (requests' ChunkedEncodingError, 'Connection broken: IncompleteRead')
    was not retried but ended the whole run, where one dropped before the answer was retried."""
    # Arrange: the second page of orders is cut off after a few bytes, once
    admin_api.truncate = {("orders", 1): 1}
    sleep = RecordedSleep()

    # Act
    summary = backfill(admin_api, store, tmp_path, sleep)

    # Assert: retried after the first backoff, and everything stored
    assert summary["retries"] == 1 and sleep.calls == [BACKOFF_SECONDS]
    assert (summary["orders"], summary["events"]) == (6, EXPECTED_EVENTS)
    assert store.count_events(SHOP) == EXPECTED_EVENTS


def test_bug_a_token_read_with_its_line_ending_works_and_a_malformed_one_is_never_printed(
        admin_api, env, tmp_path, monkeypatch, capsys, store_of):
    """BUG webhooks/backfill.py (`BackfillConfig.from_options` took the variable as it was): a token exported from a
    file with Windows line endings ends in '\\r', which requests refuses in a header with InvalidHeader, whose message
    quotes the header's value: the command printed the access token on stderr, and stopped."""
    # Act: the token with the line ending a CRLF .env file leaves on it
    code = cli({**env, "SHOPIFY_ADMIN_TOKEN": TOKEN + "\r"}, admin_api, tmp_path, monkeypatch)

    # Assert: the token is the token
    out = capsys.readouterr()
    assert code == 0, out.err
    assert TOKEN not in out.out + out.err
    assert store_of(None).count_events(SHOP) == len([line for o in ORDERS for line in o["line_items"]
                                                    if line["product_id"] is not None])

    # Act: a value no header can carry (two lines pasted together)
    code = cli({**env, "SHOPIFY_ADMIN_TOKEN": f"{TOKEN}\nshpat_other"}, admin_api, tmp_path, monkeypatch)

    # Assert: named by its variable, never printed, nothing requested
    out = capsys.readouterr()
    assert code == 2 and "SHOPIFY_ADMIN_TOKEN" in out.err and "one line" in out.err
    assert TOKEN not in out.out + out.err and "shpat_other" not in out.out + out.err
