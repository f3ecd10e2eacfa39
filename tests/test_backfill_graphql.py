"""Backfill through the GraphQL Admin API, against a real HTTP server on loopback that answers in Shopify's shape,
serving the same planted shop as tests/test_backfill.py's REST stand-in: both backfills must store the same rows."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections import Counter
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from recommender.events import PICKS_KEYS, PICKS_NAMESPACE, MerchantPicks, parse_timestamp
from recommender.store import open_event_store
from tests.conftest import SHOP
from tests.postgres_schema import temporary_schema
from tests.test_backfill import (
    API, EXPECTED_EVENTS, EXPECTED_LEVELS, EXPECTED_STOCK, LEVELS, ORDERS, PRODUCTS, SINCE, TOKEN, FakeAdminApi,
    RecordedSleep, _Handler as RestHandler, cli, level, order, product, served,
)
from recommender.changes import ChangeSet, Delivery
from webhooks.backfill import (
    BACKOFF_SECONDS, BackfillConfig, BackfillError, backfill_webhook_id, order_changes, product_changes, record_version,
    run_backfill,
)
from webhooks.backfill_graphql import (
    connection_cost, numeric_id, order_cost, order_record, product_cost, product_record, throttle_wait,
)

MAX_AVAILABLE, RESTORE_RATE = 1000.0, 50.0
COSTS = {"BackfillProducts": 60, "BackfillOrders": 80}  # requestedQueryCost; every other query 10
MAX_QUERY_COST = 1000  # Shopify refuses a query that requests more (MAX_COST_EXCEEDED), before running it
_TOKEN = re.compile(r'\.\.\.|[{}():,\[\]!]|"[^"]*"|\$?\w+')


def requested_cost(query: str, variables: dict) -> int:
    """A query's requested cost counted as Shopify's rate-limits page counts it: a scalar or an enum 0, an object 1
    (a connection's `pageInfo` too: PageInfo is an object), a connection (a field with `first`) 2 plus `first` times
    one node's cost. A list (Order.refunds, `nodes(ids:)`, InventoryLevel.quantities) counts as one element: the
    page does not say how Shopify prices one."""
    tokens = _TOKEN.findall(query[query.index("{"):])

    def selection(i: int) -> tuple[list[tuple[str, dict, list | None]], int]:
        assert tokens[i] == "{"
        fields, i = [], i + 1
        while tokens[i] != "}":
            if tokens[i] == "...":  # an inline fragment: its fields are the node's own
                inner, i = selection(i + 3)  # past `... on Type`
                fields.extend(inner)
                continue
            name, args, children, i = tokens[i], {}, None, i + 1
            if tokens[i] == "(":
                i += 1
                while tokens[i] != ")":
                    key, value, i = tokens[i], tokens[i + 2], i + 3
                    if value == "[":
                        while tokens[i - 1] != "]":
                            i += 1
                    args[key] = variables.get(value[1:]) if value.startswith("$") else value
                    if tokens[i] == ",":
                        i += 1
                i += 1
            if tokens[i] == "{":
                children, i = selection(i)
            fields.append((name, args, children))
        return fields, i + 1

    def cost(field: tuple[str, dict, list | None]) -> int:
        name, args, children = field
        if children is None:
            return 0
        if "first" in args:
            nodes = next(c for c in children if c[0] == "nodes")[2]
            rest = [c for c in children if c[0] != "nodes"]  # its pageInfo
            return 2 + sum(map(cost, rest)) + int(args["first"]) * (1 + sum(map(cost, nodes)))
        return 1 + sum(map(cost, children))

    return sum(map(cost, selection(0)[0]))


def gid(kind: str, value) -> str | None:
    return None if value is None else f"gid://shopify/{kind}/{value}"


def utc(value: str | None) -> str | None:
    """A DateTime as GraphQL gives it, in UTC ('...Z'), where REST gives the shop's offset."""
    return None if value is None else parse_timestamp(value).isoformat().replace("+00:00", "Z")


# --- the planted shop as GraphQL nodes -----------------------------------------------------------------

def variant_node(variant: dict) -> dict:
    return {"id": gid("ProductVariant", variant["id"]), "price": variant["price"],
            "inventoryPolicy": variant.get("inventory_policy", "deny").upper(),
            "inventoryQuantity": variant["inventory_quantity"],
            "inventoryItem": {"id": gid("InventoryItem", variant["inventory_item_id"]), "tracked": True}}


def product_node(record: dict) -> dict:
    image = record.get("image")
    return {"id": gid("Product", record["id"]), "title": record["title"], "handle": record["handle"],
            "status": record["status"].upper(), "publishedAt": utc(record["published_at"]),
            "updatedAt": utc(record["updated_at"]), "productType": record["product_type"], "vendor": record["vendor"],
            "featuredMedia": {"preview": {"image": {"url": image["src"]}}} if image else None,
            "tags": [tag.strip() for tag in record.get("tags", "").split(",") if tag.strip()],
            "isGiftCard": record.get("gift_card", False),
            "variants": [variant_node(v) for v in record["variants"]],
            # the aliased metafields of the merchant's picks: null where the product has none set
            **{key: next(({"value": field["value"]} for field in record.get("metafields", ())
                          if (field["namespace"], field["key"]) == (PICKS_NAMESPACE, key)), None)
               for key in PICKS_KEYS}}


def line_node(line: dict) -> dict:
    return {"id": gid("LineItem", line["id"]), "quantity": line["quantity"], "isGiftCard": line.get("gift_card", False),
            "product": {"id": gid("Product", line["product_id"])} if line["product_id"] else None,
            "variant": {"id": gid("ProductVariant", line["variant_id"])} if line.get("variant_id") else None,
            "originalUnitPriceSet": {"shopMoney": {"amount": line["price"], "currencyCode": "EUR"}}}


def order_node(record: dict) -> dict:
    customer = record.get("customer")
    return {"id": gid("Order", record["id"]), "createdAt": utc(record["created_at"]),
            "updatedAt": utc(record["updated_at"]), "cancelledAt": utc(record.get("cancelled_at")),
            "customer": {"id": gid("Customer", customer["id"])} if customer else None,
            "lineItems": [line_node(line) for line in record["line_items"]],
            "refunds": [{"id": gid("Refund", refund["id"]),
                         "refundLineItems": [{"quantity": line["quantity"],
                                              "lineItem": {"id": gid("LineItem", line["line_item_id"])}}
                                             for line in refund["refund_line_items"]]}
                        for refund in record.get("refunds", [])]}


def asked_for(node: dict, query: str, *names: str) -> dict:
    """The node without those of `names` the query does not ask for: GraphQL answers with the fields asked for alone."""
    return {key: value for key, value in node.items() if key not in names or re.search(rf"\b{key}\b", query)}


def level_node(record: dict) -> dict:
    return {"updatedAt": utc(record["updated_at"]), "location": {"id": gid("Location", record["location_id"])},
            "quantities": [{"name": "available", "quantity": record["available"]}]}


# The planted shop of tests/test_backfill.py, plus a product of three variants (two locations each) and an order of
# three lines refunded on two of them, so that nested connections have more than one page when pages are small.
# Their REST timestamps carry the shop's offset, as REST gives them; GraphQL gives the same instants in UTC.
# GraphQL's Order carries no cart token: here the guest order has none, so both APIs key it by `order-5003`.
WIDE = {**product(8006), "updated_at": "2024-06-01T20:00:00-04:00", "variants": [
    {"id": 80060 + k, "price": f"{10 + k}.00", "inventory_item_id": 800600 + k, "inventory_quantity": 2,
     "inventory_policy": "continue"} for k in (1, 2, 3)]}
SHOP_PRODUCTS = [*PRODUCTS, WIDE]
SHOP_LEVELS = [*LEVELS, *(level(800600 + k, location, k + location, "2025-02-01T09:00:00+09:00")
                          for k in (1, 2, 3) for location in (1, 2))]
BIG = order(5007, 4, [8006, 8001, 8002], "2025-03-07T05:00:00-05:00")  # REST: the shop's offset; GraphQL: UTC
BIG["refunds"] = [{"id": 78, "order_id": 5007, "refund_line_items": [
    {"line_item_id": BIG["line_items"][0]["id"], "quantity": 1}, {"line_item_id": BIG["line_items"][2]["id"],
                                                                   "quantity": 1}]}]
SHOP_ORDERS = [{**o, "cart_token": None} for o in ORDERS] + [BIG]
SHOP_EVENTS = EXPECTED_EVENTS + 3
SHOP_LEVEL_COUNT = EXPECTED_LEVELS + 6


# --- a local GraphQL Admin API -------------------------------------------------------------------------------

@dataclass
class SeenQuery:
    operation: str
    variables: dict
    headers: dict[str, str]
    path: str
    text: str = ""  # the query
    answered: int | str | None = None  # an HTTP status, "THROTTLED", or None: the connection was dropped


@dataclass
class FakeGraphQLApi:
    """Shopify's GraphQL Admin API over the planted REST records: cursor pagination at every connection,
    `extensions.cost`, injected THROTTLED answers, statuses and dropped connections; records every request."""

    products: list[dict]
    orders: list[dict]
    levels: list[dict]
    port: int = 0
    requests: list[SeenQuery] = field(default_factory=list)
    available: dict[tuple[str, int], float] = field(default_factory=dict)  # (operation, nth answer) → reported
    throttled: dict[tuple[str, int], list[float]] = field(default_factory=dict)  # → currentlyAvailable per THROTTLED
    inject: dict[tuple[str, int], list[int]] = field(default_factory=dict)  # → HTTP statuses first
    denied: dict[str, str] = field(default_factory=dict)  # operation → the error code it is answered with
    version: str = "2026-04"  # cartToken is a field of Order from 2026-07 on
    drop_after_answers: int | None = None
    answered: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def of(self, operation: str) -> list[SeenQuery]:
        return [seen for seen in self.requests if seen.operation == operation]

    def answer(self, path: str, body: dict, headers: dict[str, str]) -> tuple[int, dict] | None:
        operation = re.match(r"^query (\w+)", body["query"]).group(1)
        seen = SeenQuery(operation, body.get("variables") or {}, headers, path, body["query"])
        self.requests.append(seen)
        if self.drop_after_answers is not None and sum(self.answered.values()) >= self.drop_after_answers:
            return None
        if headers.get("x-shopify-access-token") != TOKEN:
            seen.answered = 401
            return 401, {"errors": "[API] Invalid API key or access token (unrecognized login or wrong password)"}
        if path != f"/admin/api/{self.version}/graphql.json":
            seen.answered = 404
            return 404, {"errors": "Not Found"}
        if "cartToken" in body["query"] and self.version < "2026-07":
            seen.answered = "undefinedField"
            return 200, {"errors": [{"message": "Field 'cartToken' doesn't exist on type 'Order'",
                                     "extensions": {"code": "undefinedField", "typeName": "Order"}}]}
        requested = requested_cost(body["query"], seen.variables)
        if requested > MAX_QUERY_COST:
            seen.answered = "MAX_COST_EXCEEDED"
            return 200, {"errors": [{"message": f"Query cost is {requested}, which exceeds the single query max cost "
                                                f"limit ({MAX_QUERY_COST}).", "extensions": {
                "code": "MAX_COST_EXCEEDED", "cost": requested, "maxCost": MAX_QUERY_COST}}]}
        nth = (operation, self.answered[operation])
        if self.inject.get(nth):
            seen.answered = self.inject[nth].pop(0)
            return seen.answered, {"errors": "injected"}
        cost = COSTS.get(operation, 10)
        if self.throttled.get(nth):
            seen.answered = "THROTTLED"
            return 200, {"errors": [{"message": "Throttled", "extensions": {
                "code": "THROTTLED", "documentation": "https://shopify.dev/api/usage/rate-limits"}}],
                "extensions": self._cost(cost, None, self.throttled[nth].pop(0))}
        if operation in self.denied:
            seen.answered = self.denied[operation]
            return 200, {"data": None, "errors": [{"message": "refused", "extensions": {
                "code": self.denied[operation]}}]}
        data = getattr(self, operation)(seen.variables, body["query"])
        seen.answered = 200
        self.answered[operation] += 1
        return 200, {"data": data, "extensions": self._cost(cost, cost, self.available.get(nth, MAX_AVAILABLE))}

    @staticmethod
    def _cost(requested: int, actual: int | None, available: float) -> dict:
        return {"cost": {"requestedQueryCost": requested, "actualQueryCost": actual, "throttleStatus": {
            "maximumAvailable": MAX_AVAILABLE, "currentlyAvailable": available, "restoreRate": RESTORE_RATE}}}

    @staticmethod
    def _page(nodes: list[dict], first: int, after: str | None, kind: str) -> dict:
        """A connection's page: cursors name their connection, so one used on another fails the test."""
        offset = 0
        if after is not None:
            cursor_kind, _, position = after.partition("@")
            assert cursor_kind == kind, f"a cursor of {cursor_kind} used for {kind}"
            offset = int(position)
        assert 1 <= first <= 250
        end = offset + first
        return {"nodes": nodes[offset:end], "pageInfo": {"hasNextPage": end < len(nodes),
                                                          "endCursor": f"{kind}@{end}" if nodes[offset:end] else None}}

    def _product(self, record: dict, nested: int, query: str) -> dict:
        node = asked_for(product_node(record), query, "tags", "isGiftCard")
        node["variants"] = self._page(node["variants"], nested, None, f"variants:{record['id']}")
        return node

    def _item_levels(self, item: str) -> list[dict]:
        return [level_node(lvl) for lvl in self.levels if str(lvl["inventory_item_id"]) == item]

    def _order(self, record: dict, nested: int, query: str) -> dict:
        node = order_node(record)
        if "cartToken" in query:
            node["cartToken"] = record.get("cart_token")
        lines = [asked_for(line, query, "isGiftCard") for line in node["lineItems"]]
        node["lineItems"] = self._page(lines, nested, None, f"lines:{record['id']}")
        for refund, raw in zip(node["refunds"], record.get("refunds", [])):
            refund["refundLineItems"] = self._page(refund["refundLineItems"], nested, None, f"refund:{raw['id']}")
        return node

    def BackfillProducts(self, v: dict, query: str) -> dict:  # noqa: N802 (the operation's name)
        page = self._page(self.products, v["first"], v["after"], "products")
        page["nodes"] = [self._product(record, v["nested"], query) for record in page["nodes"]]
        return {"products": page}

    def BackfillVariants(self, v: dict, query: str) -> dict:  # noqa: N802
        record = next(p for p in self.products if gid("Product", p["id"]) == v["id"])
        variants = [variant_node(variant) for variant in record["variants"]]
        return {"product": {"variants": self._page(variants, v["first"], v["after"], f"variants:{record['id']}")}}

    def BackfillLevels(self, v: dict, query: str) -> dict:  # noqa: N802
        assert 'quantities(names: ["available"])' in query and 1 <= len(v["ids"]) <= 250
        nodes = []
        for item_gid in v["ids"]:
            item = item_gid.rsplit("/", 1)[-1]
            nodes.append({"id": item_gid, "inventoryLevels": self._page(self._item_levels(item), v["nested"], None,
                                                                       f"levels:{item}")})
        return {"nodes": nodes}

    def BackfillItemLevels(self, v: dict, query: str) -> dict:  # noqa: N802
        item = v["id"].rsplit("/", 1)[-1]
        return {"inventoryItem": {"inventoryLevels": self._page(self._item_levels(item), v["first"], v["after"],
                                                               f"levels:{item}")}}

    def BackfillOrders(self, v: dict, query: str) -> dict:  # noqa: N802
        records = self.orders
        if v.get("query"):
            since = re.fullmatch(r"created_at:>='(.+)'", v["query"]).group(1)
            records = [o for o in records if o["created_at"] >= since.replace("+00:00", "Z")]
        page = self._page(records, v["first"], v["after"], "orders")
        page["nodes"] = [self._order(record, v["nested"], query) for record in page["nodes"]]
        return {"orders": page}

    def BackfillOrderLines(self, v: dict, query: str) -> dict:  # noqa: N802
        record = next(o for o in self.orders if gid("Order", o["id"]) == v["id"])
        lines = [asked_for(line_node(line), query, "isGiftCard") for line in record["line_items"]]
        return {"order": {"lineItems": self._page(lines, v["first"], v["after"], f"lines:{record['id']}")}}

    def BackfillRefundLines(self, v: dict, query: str) -> dict:  # noqa: N802
        raw = next(r for o in self.orders for r in o.get("refunds", []) if gid("Refund", r["id"]) == v["id"])
        lines = [{"quantity": line["quantity"], "lineItem": {"id": gid("LineItem", line["line_item_id"])}}
                 for line in raw["refund_line_items"]]
        return {"refund": {"refundLineItems": self._page(lines, v["first"], v["after"], f"refund:{raw['id']}")}}


class _GraphQLHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        api: FakeGraphQLApi = self.server.api  # type: ignore[attr-defined]
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with api.lock:
            answer = api.answer(self.path, body, {k.lower(): v for k, v in self.headers.items()})
        if answer is None:
            self.close_connection = True
            return
        status, payload = answer
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def graphql_api():
    with served(FakeGraphQLApi(SHOP_PRODUCTS, SHOP_ORDERS, SHOP_LEVELS), _GraphQLHandler) as api:
        yield api


@pytest.fixture
def rest_api():
    """tests/test_backfill.py's REST stand-in, serving the same shop."""
    with served(FakeAdminApi(SHOP_PRODUCTS, SHOP_ORDERS, SHOP_LEVELS), RestHandler) as api:
        yield api


def backfill(api, store, tmp_path: Path, api_name: str = "graphql", sleep=None, **options) -> dict:
    config = BackfillConfig.from_options(SHOP, {"SHOPIFY_ADMIN_TOKEN": TOKEN}, since=SINCE, base_url=api.base_url,
                                         state_path=tmp_path / f"state-{api_name}.json", api=api_name,
                                         **{"page_size": 2, **options})
    return run_backfill(config, store, sleep=sleep or RecordedSleep(), progress=False)


# --- what a store holds, table by table --------------------------------------------------------------------

TABLES = ("deliveries", "events", "products", "variants", "inventory_levels", "adjustments", "pending_refunds",
          "identity_links")
VOLATILE = {"id", "received_at", "changed_at", "created_at"}  # when a row was written, not what it says


def stored_rows(url: str) -> dict[str, list[tuple]]:
    """Every row of the shop's tables at `url`, without the columns that say when it was written, sorted."""
    if url.startswith("sqlite:///"):
        connection = sqlite3.connect(url[len("sqlite:///"):])
    else:
        import psycopg

        connection = psycopg.connect(url)
    try:
        rows = {}
        for table in TABLES:
            cursor = connection.execute(f"SELECT * FROM {table}")
            names = [column[0] for column in cursor.description]
            keep = [i for i, name in enumerate(names) if name not in VOLATILE]
            # `picks`: GraphQL says "none picked" ('') where REST, which reads no metafields, says nothing (NULL);
            # every read takes both as none
            none_said = names.index("picks") if "picks" in names else -1
            rows[table] = sorted((tuple(None if i == none_said and row[i] == "" else row[i] for i in keep)
                                  for row in cursor.fetchall()), key=repr)
        return rows
    finally:
        connection.close()


@pytest.fixture
def two_store_urls(event_store_url, tmp_path):
    """Two empty stores of the same backend (conftest's `event_store_url`, and one more like it): (rest, graphql)."""
    if event_store_url.startswith("sqlite:///"):
        yield f"sqlite:///{tmp_path}/rest.sqlite3", event_store_url
    else:
        with temporary_schema() as other:
            yield other, event_store_url


# --- the same shop through both APIs ------------------------------------------------------------------------

def test_the_same_shop_through_rest_and_graphql_stores_identical_rows(rest_api, graphql_api, two_store_urls,
                                                                      tmp_path):
    # Arrange
    rest_url, graphql_url = two_store_urls
    rest_store, graphql_store = open_event_store(rest_url), open_event_store(graphql_url)

    # Act
    by_rest = backfill(rest_api, rest_store, tmp_path, "rest")
    by_graphql = backfill(graphql_api, graphql_store, tmp_path, "graphql")

    # Assert: row for row the same, webhook ids included
    rest_rows = stored_rows(rest_url)
    assert stored_rows(graphql_url) == rest_rows
    assert len(rest_rows["events"]) == SHOP_EVENTS and len(rest_rows["inventory_levels"]) == SHOP_LEVEL_COUNT
    counted = ("products", "inventory_levels", "orders", "events", "duplicates", "skipped")
    assert {k: by_graphql[k] for k in counted} == {k: by_rest[k] for k in counted} == {
        "products": 6, "inventory_levels": SHOP_LEVEL_COUNT, "orders": 7, "events": SHOP_EVENTS, "duplicates": 0,
        "skipped": 0}
    weights = {(i.order_id, i.product_id): i.weight_factor for i in graphql_store.interactions(SHOP)}
    assert ("5004", "8004") not in weights  # cancelled: stored at weight 0, counted nowhere
    assert weights[("5005", "8005")] == 0.5  # one of two units refunded, once
    assert {key: weights.get(key) for key in (("5007", "8006"), ("5007", "8001"), ("5007", "8002"))} == {
        ("5007", "8006"): None, ("5007", "8001"): 1.0, ("5007", "8002"): None}  # its lines 1 and 3 refunded whole
    assert {i.user_key for i in graphql_store.interactions(SHOP) if i.order_id == "5003"} == {"a:order-5003"}
    stock = {pid: p.variants[0].inventory_quantity for pid, p in graphql_store.products(SHOP).items()}
    assert stock == {**EXPECTED_STOCK, "8006": 2 + 3}  # its first variant's item: 2 at location 1, 3 at location 2
    rest_store.close()
    graphql_store.close()


@pytest.mark.parametrize("first, then", [("rest", "graphql"), ("graphql", "rest")])
def test_one_api_after_the_other_stores_nothing_twice(rest_api, graphql_api, either_store, tmp_path, first, then):
    apis = {"rest": rest_api, "graphql": graphql_api}
    backfill(apis[first], either_store, tmp_path, first)
    before = (either_store.count_events(SHOP), either_store.products(SHOP),
              sorted(map(repr, either_store.interactions(SHOP))))

    again = backfill(apis[then], either_store, tmp_path, then)

    assert (either_store.count_events(SHOP), either_store.products(SHOP),
            sorted(map(repr, either_store.interactions(SHOP)))) == before
    assert (again["products"], again["inventory_levels"], again["orders"], again["events"], again["duplicates"]) == (
        0, 0, 0, 0, 6 + 7 + SHOP_LEVEL_COUNT)


def test_a_guest_order_keyed_by_its_cart_through_rest_keeps_that_key_when_graphql_reads_it_again(
        rest_api, graphql_api, store, tmp_path):
    # Arrange: REST (or orders/create) stored the guest's order under its cart token, which GraphQL cannot read
    rest_api.orders = [order(5003, None, [8001], "2025-03-03T10:00:00Z", cart="cart-guest")]
    graphql_api.orders = rest_api.orders
    backfill(rest_api, store, tmp_path, "rest")

    # Act
    again = backfill(graphql_api, store, tmp_path, "graphql")

    # Assert: the order's line is stored once, still the cart's
    assert again["events"] == 0 and again["duplicates"] >= 1
    assert [i.user_key for i in store.interactions(SHOP)] == ["a:cart-guest"]


def test_from_api_version_2026_07_a_guest_order_is_keyed_by_its_cart_token_as_rest_keys_it(rest_api, graphql_api,
                                                                                           tmp_path):
    # Arrange: the planted shop with its guest's cart token, as REST serves it
    guest_orders = [*ORDERS, BIG]
    rest_api.orders = graphql_api.orders = guest_orders
    rest_api_version, graphql_api.version = "2026-07", "2026-07"
    rest_url, graphql_url = f"sqlite:///{tmp_path}/rest.sqlite3", f"sqlite:///{tmp_path}/graphql.sqlite3"
    rest_store, graphql_store = open_event_store(rest_url), open_event_store(graphql_url)

    # Act: REST at 2026-04 (its stand-in's version), GraphQL at 2026-07
    backfill(rest_api, rest_store, tmp_path, "rest")
    backfill(graphql_api, graphql_store, tmp_path, "graphql", api_version=rest_api_version)

    # Assert
    assert all("cartToken" in s.text for s in graphql_api.of("BackfillOrders"))
    assert {i.user_key for i in graphql_store.interactions(SHOP) if i.order_id == "5003"} == {"a:cart-guest"}
    assert stored_rows(graphql_url) == stored_rows(rest_url)
    rest_store.close()
    graphql_store.close()


def test_before_2026_07_the_orders_query_does_not_ask_for_a_cart_token(graphql_api, store, tmp_path):
    backfill(graphql_api, store, tmp_path)

    orders = graphql_api.of("BackfillOrders")
    assert orders and all(s.answered == 200 and "cartToken" not in s.text for s in orders)


@pytest.fixture
def either_store(event_store_url):
    opened = open_event_store(event_store_url)
    yield opened
    opened.close()


# --- nested connections and wide products --------------------------------------------------------------------

def test_nested_connections_are_read_to_their_last_page(rest_api, graphql_api, store, tmp_path):
    # Arrange: one node a nested page, two a page read on its own
    reference_url = f"sqlite:///{tmp_path}/reference.sqlite3"
    reference = open_event_store(reference_url)
    backfill(rest_api, reference, tmp_path, "rest")

    # Act
    summary = backfill(graphql_api, store, tmp_path, "graphql", nested_page_size=1)

    # Assert: the same rows as REST's, from these queries
    assert stored_rows(f"sqlite:///{tmp_path}/events.sqlite3") == stored_rows(reference_url)
    variants = graphql_api.of("BackfillVariants")
    assert [(s.variables["id"], s.variables["after"], s.variables["first"]) for s in variants] == [
        ("gid://shopify/Product/8006", "variants:8006@1", 2)]  # its other two in one page of page_size
    assert [s.variables["after"] for s in graphql_api.of("BackfillOrderLines")] == [
        "lines:5001@1", "lines:5002@1", "lines:5003@1", "lines:5006@1", "lines:5007@1"]
    assert [(s.variables["id"], s.variables["after"]) for s in graphql_api.of("BackfillRefundLines")] == [
        ("gid://shopify/Refund/78", "refund:78@1")]
    level_follow_ups = [s.variables["after"] for s in graphql_api.of("BackfillItemLevels")]
    assert sorted(level_follow_ups) == sorted(f"levels:{item}@1" for item in (
        800100, 800200, 800300, 800601, 800602, 800603))  # the items stocked at two locations
    assert summary["pages"] == len(graphql_api.requests)
    reference.close()


def test_a_product_with_more_than_100_variants_keeps_every_one(graphql_api, either_store, tmp_path):
    # Arrange: 230 variants, each its own inventory item stocked at one location
    wide = {**product(9100), "variants": [{"id": 910000 + k, "price": "5.00", "inventory_item_id": 9100000 + k,
                                           "inventory_quantity": 1} for k in range(230)]}
    graphql_api.products, graphql_api.orders = [wide], []
    graphql_api.levels = [level(9100000 + k, 1, k % 3) for k in range(230)]

    # Act
    summary = backfill(graphql_api, either_store, tmp_path, page_size=100)

    # Assert
    stored = either_store.products(SHOP)["9100"]
    assert sorted(int(v.variant_id) for v in stored.variants) == [910000 + k for k in range(230)]
    assert summary["inventory_levels"] == 230
    assert [s.variables["after"] for s in graphql_api.of("BackfillVariants")] == [
        "variants:9100@10", "variants:9100@110", "variants:9100@210"]  # 10 with the product, then 100 a page
    # 230 items, 29 a query: each id priced as one item with its first page of 10 levels (34 points)
    assert [len(s.variables["ids"]) for s in graphql_api.of("BackfillLevels")] == [29] * 7 + [27]
    assert {v.variant_id: v.inventory_quantity for v in stored.variants}["910004"] == 1  # 4 % 3 at its location


# --- the cost bucket ----------------------------------------------------------------------------------------

def test_no_query_requests_more_than_shopify_allows_one_query(graphql_api, store, tmp_path):
    # Arrange: the default page sizes, and an order of more lines than a nested first page holds
    wide = order(5100, 4, [8001] * 15, "2025-03-08T10:00:00Z")
    graphql_api.orders = [*SHOP_ORDERS, wide]

    # Act
    summary = backfill(graphql_api, store, tmp_path, page_size=250)

    # Assert: every query answered (the products query's 728 points, the orders query's at most 1,000)
    assert {s.answered for s in graphql_api.requests} == {200}
    assert all(requested_cost(s.text, s.variables) <= MAX_QUERY_COST for s in graphql_api.requests)
    assert graphql_api.of("BackfillProducts")[0].variables["first"] == 25
    assert graphql_api.of("BackfillOrders")[0].variables["first"] == 12  # 3 + 12 × 79 = 951 points
    assert [s.variables["first"] for s in graphql_api.of("BackfillOrderLines")] == [199]  # 1 + 3 + 199 × 5 = 999
    assert summary["orders"] == 7 + 1 and summary["skipped"] == 0
    assert requested_cost(graphql_api.of("BackfillOrders")[0].text, {"first": 25, "nested": 10}) == 1978


def test_bug_each_page_size_is_priced_with_the_pageinfo_its_query_asks_for(graphql_api, store, tmp_path):
    # Arrange: an order of more lines than a nested first page holds, so a later page of its lines is read
    graphql_api.orders = [*SHOP_ORDERS, order(5100, 4, [8001] * 15, "2025-03-08T10:00:00Z")]

    # Act
    backfill(graphql_api, store, tmp_path, page_size=250)

    # Assert: what each page size was chosen at is what the query asks for, each connection's pageInfo (an object,
    # 1 point) included, where it was left out (702, 926 and 998 points priced; 728, 951 and 999 asked for)
    products, orders = graphql_api.of("BackfillProducts")[0], graphql_api.of("BackfillOrders")[0]
    lines = graphql_api.of("BackfillOrderLines")[0]
    assert requested_cost(products.text, products.variables) == connection_cost(25, product_cost(10)) == 728
    assert requested_cost(orders.text, orders.variables) == connection_cost(12, order_cost(10)) == 951
    assert requested_cost(lines.text, lines.variables) == 1 + connection_cost(199, 5) == 999


def test_without_since_the_orders_query_has_no_filter_and_reads_orders_of_every_status(graphql_api, store, tmp_path):
    # Arrange: no --since. The orders connection documents no default status filter (REST's status=open) to lift
    config = BackfillConfig.from_options(SHOP, {"SHOPIFY_ADMIN_TOKEN": TOKEN}, base_url=graphql_api.base_url,
                                         state_path=tmp_path / "state.json", api="graphql", page_size=2)

    # Act
    summary = run_backfill(config, store, sleep=RecordedSleep(), progress=False)

    # Assert: no filter at all, and every order (the cancelled one too) read
    orders = graphql_api.of("BackfillOrders")
    assert orders and all(s.variables["query"] is None and "status" not in s.text for s in orders)
    assert summary["orders"] == len(SHOP_ORDERS)


def test_queries_wait_for_the_bucket_and_a_throttled_query_is_retried_after_the_wait_it_needs(graphql_api, store,
                                                                                             tmp_path):
    # Arrange: after the first page of products 20 points are left; after the first page of orders 55; the second
    # page of orders is THROTTLED once with 30 points left
    graphql_api.available = {("BackfillProducts", 0): 20.0, ("BackfillOrders", 0): 55.0}
    graphql_api.throttled = {("BackfillOrders", 1): [30.0]}
    sleep = RecordedSleep()

    # Act
    summary = backfill(graphql_api, store, tmp_path, sleep=sleep)

    # Assert: the levels query (never sent yet: the products query's 60 taken as its cost) waits (60 - 20) / 50;
    # the second page of orders (80 last time) (80 - 55) / 50; its THROTTLED answer (80 - 30) / 50, then retried
    assert sleep.calls == [pytest.approx(0.8), pytest.approx(0.5), pytest.approx(1.0)]
    assert [s.answered for s in graphql_api.of("BackfillOrders")] == [200, "THROTTLED", 200, 200, 200]
    assert summary["retries"] == 1 and summary["events"] == SHOP_EVENTS
    assert throttle_wait(80, 30, 50) == 1.0 and throttle_wait(10, 900, 50) == 0.0 and throttle_wait(10, None, 50) == 0


def test_a_query_throttled_again_and_again_gives_up_and_keeps_the_progress(graphql_api, store, tmp_path):
    graphql_api.throttled = {("BackfillOrders", 0): [0.0] * 21}
    sleep = RecordedSleep()

    with pytest.raises(BackfillError, match="kept answering THROTTLED 20 times") as raised:
        backfill(graphql_api, store, tmp_path, sleep=sleep)

    assert raised.value.status == 429
    assert sleep.calls == [pytest.approx(80 / 50)] * 20
    assert json.loads((tmp_path / "state-graphql.json").read_text())["cursors"] == {"products": None, "orders": ""}


def test_5xx_and_429_are_retried_as_rest_retries_them(graphql_api, store, tmp_path):
    graphql_api.inject = {("BackfillProducts", 1): [503], ("BackfillOrders", 0): [429]}
    sleep = RecordedSleep()

    summary = backfill(graphql_api, store, tmp_path, sleep=sleep)

    assert sleep.calls == [BACKOFF_SECONDS, 2.0]  # the backoff, then a 429 without Retry-After
    assert summary["retries"] == 2 and summary["events"] == SHOP_EVENTS


# --- refusals -------------------------------------------------------------------------------------------------

def test_a_refused_token_is_the_same_clear_error_and_exit_code_as_rest(graphql_api, env, tmp_path, monkeypatch,
                                                                       capsys):
    code = cli({**env, "SHOPIFY_ADMIN_TOKEN": "shpat_wrong_token"}, graphql_api, tmp_path, monkeypatch,
               "--api", "graphql")

    out = capsys.readouterr()
    assert code == 2 and out.out == ""
    assert "Shopify refused the access token (401 Unauthorized)" in out.err
    assert "shpat_wrong_token" not in out.err


@pytest.mark.parametrize("operation, scope", [("BackfillProducts", "read_products"),
                                              ("BackfillLevels", "read_inventory"), ("BackfillOrders", "read_orders")])
def test_a_missing_scope_is_named(graphql_api, store, tmp_path, operation, scope):
    graphql_api.denied = {operation: "ACCESS_DENIED"}

    with pytest.raises(BackfillError, match=f"needs the {scope}") as raised:
        backfill(graphql_api, store, tmp_path)

    assert raised.value.status == 403


def test_a_query_over_shopifys_cost_limit_or_with_other_errors_stops_with_shopifys_words(graphql_api, store,
                                                                                          tmp_path):
    graphql_api.denied = {"BackfillOrders": "MAX_COST_EXCEEDED"}
    with pytest.raises(BackfillError, match="MAX_COST_EXCEEDED.*page sizes"):
        backfill(graphql_api, store, tmp_path)

    graphql_api.denied = {"BackfillProducts": "undefinedField"}
    with pytest.raises(BackfillError, match="answered with errors: refused"):
        backfill(graphql_api, store, tmp_path / "other")


def test_a_403_names_the_scope_as_rest_does(graphql_api, store, tmp_path):
    graphql_api.inject = {("BackfillLevels", 0): [403]}

    with pytest.raises(BackfillError, match="read_inventory scope") as raised:
        backfill(graphql_api, store, tmp_path)

    assert raised.value.status == 403 and store.products(SHOP) == {}


def test_cli_backfills_through_graphql(graphql_api, env, tmp_path, monkeypatch, capsys, store_of):
    code = cli({**env, "SHOPIFY_ADMIN_TOKEN": TOKEN}, graphql_api, tmp_path, monkeypatch, "--api", "graphql",
               "--since", SINCE)

    out = capsys.readouterr()
    assert code == 0, out.err
    summary = json.loads(out.out)
    assert (summary["products"], summary["orders"], summary["events"]) == (6, 7, SHOP_EVENTS)
    first = graphql_api.requests[0]
    assert first.path == f"{API}/graphql.json" and first.headers["x-shopify-access-token"] == TOKEN
    assert first.variables["first"] == 25  # at most 25 products a page, whatever the page size
    orders = graphql_api.of("BackfillOrders")[0]
    assert orders.variables["query"] == "created_at:>='2025-01-01T00:00:00+00:00'"
    assert store_of(None).count_events(SHOP) == SHOP_EVENTS


# --- resuming -------------------------------------------------------------------------------------------------

def test_a_graphql_backfill_cut_off_resumes_from_its_cursor(graphql_api, store, tmp_path):
    # Arrange: the reference run, then one cut off after the products, their levels and the first page of orders
    reference_store = open_event_store(f"sqlite:///{tmp_path}/reference.sqlite3")
    reference = backfill(graphql_api, reference_store, tmp_path / "reference")
    graphql_api.requests.clear()
    graphql_api.answered.clear()
    graphql_api.drop_after_answers = 3 + 3 + 1  # 3 pages of products, their 3 of levels, 1 of orders

    with pytest.raises(BackfillError, match="gave up after 5 retries"):
        backfill(graphql_api, store, tmp_path)
    state = json.loads((tmp_path / "state-graphql.json").read_text())
    assert state["api"] == "graphql" and state["cursors"] == {"products": None, "orders": "orders@2"}
    assert TOKEN not in json.dumps(state)

    # Act
    graphql_api.drop_after_answers = None
    graphql_api.requests.clear()
    resumed = backfill(graphql_api, store, tmp_path)

    # Assert: only orders, from the saved cursor on, and the totals of a run never cut off
    assert [s.operation for s in graphql_api.requests] == ["BackfillOrders"] * 3
    assert graphql_api.requests[0].variables["after"] == "orders@2"
    assert resumed["resumed"] is True
    counted = ("products", "inventory_levels", "orders", "events", "pages", "skipped", "duplicates")
    assert {k: resumed[k] for k in counted} == {k: reference[k] for k in counted}
    assert stored_rows(f"sqlite:///{tmp_path}/events.sqlite3") == stored_rows(
        f"sqlite:///{tmp_path}/reference.sqlite3")
    reference_store.close()


def test_a_state_file_of_the_other_api_is_refused(rest_api, graphql_api, store, tmp_path):
    # Arrange: a REST backfill cut off in its orders leaves REST URLs as its cursors
    rest_api.drop_after_pages = 3 + 8 + 1  # products, levels, orders
    with pytest.raises(BackfillError):
        backfill(rest_api, store, tmp_path, "rest")
    state = tmp_path / "state-rest.json"
    assert json.loads(state.read_text())["api"] == "rest"
    (tmp_path / "state-graphql.json").write_text(state.read_text())

    # Act / Assert: the GraphQL backfill with that file refuses it by name, before any request
    with pytest.raises(BackfillError, match="belongs to a backfill with .*api='rest'"):
        backfill(graphql_api, store, tmp_path, "graphql")
    assert graphql_api.requests == []


def test_a_state_file_written_before_there_was_an_api_option_is_taken_as_rests(rest_api, graphql_api, store,
                                                                               tmp_path):
    rest_api.drop_after_pages = 3 + 8 + 1  # products, levels, orders
    with pytest.raises(BackfillError):
        backfill(rest_api, store, tmp_path, "rest")
    state = tmp_path / "state-rest.json"
    body = json.loads(state.read_text())
    del body["api"]
    state.write_text(json.dumps(body))
    rest_api.drop_after_pages = None

    resumed = backfill(rest_api, store, tmp_path, "rest")

    assert resumed["resumed"] is True and store.count_events(SHOP) == SHOP_EVENTS
    (tmp_path / "state-graphql.json").write_text(json.dumps(body))
    with pytest.raises(BackfillError, match="api='rest'"):
        backfill(graphql_api, store, tmp_path, "graphql")


# --- nodes → records -----------------------------------------------------------------------------------------

def test_nodes_become_the_records_rest_serves():
    assert numeric_id("gid://shopify/Product/8001") == 8001
    assert numeric_id("gid://shopify/InventoryLevel/1?inventory_item_id=2") == (
        "gid://shopify/InventoryLevel/1?inventory_item_id=2")  # left for the translators to refuse by name
    node = product_node(WIDE)
    as_read = product_record(node, node["variants"])
    assert as_read == {**WIDE, "updated_at": "2024-06-02T00:00:00Z", "tags": [], "gift_card": False, "variants": [
        {**v, "inventory_management": "shopify"} for v in WIDE["variants"]],
                       "metafields": []}  # the same instant, in UTC; no picks set
    picked = {**WIDE, "metafields": [{"namespace": PICKS_NAMESPACE, "key": "complementary_products",
                                      "value": '["gid://shopify/Product/8001"]'}]}
    assert product_record(product_node(picked), node["variants"])["metafields"] == picked["metafields"]
    assert backfill_webhook_id("products", as_read) == backfill_webhook_id("products", WIDE) == (
        "backfill:products:8006:2024-06-02T00:00:00Z")
    untracked = {**variant_node(WIDE["variants"][0]), "inventoryItem": {"id": "gid://shopify/InventoryItem/1",
                                                                        "tracked": False}}
    assert product_record(node, [untracked])["variants"][0]["inventory_management"] is None  # REST's "not tracked"
    raw = order_node(BIG)
    record = order_record(raw, raw["lineItems"], [(r, r["refundLineItems"]) for r in raw["refunds"]])
    assert record["refunds"] == BIG["refunds"]
    assert [{**{k: line[k] for k in ("id", "product_id", "variant_id", "quantity", "price")}, "gift_card": False}
            for line in BIG["line_items"]] == record["line_items"]
    assert (record["customer"], record["cart_token"], record["cancelled_at"]) == ({"id": 4}, None, None)


@pytest.mark.parametrize("api_name", ["rest", "graphql"])
def test_a_backfill_stores_what_shopify_would_not_recommend_hidden_and_learns_nothing_from_a_gift_card(
        rest_api, graphql_api, either_store, tmp_path, api_name):
    # Arrange: a product tagged hidden, a free one, one for sale; an order of it and a gift card; through GraphQL also
    # the gift card's product (Product.isGiftCard: products.json documents no such field, the order's line tells)
    api = rest_api if api_name == "rest" else graphql_api
    free = product(8102)
    free["variants"] = [{**free["variants"][0], "price": "0.00"}]
    api.products = [{**product(8101), "tags": "Sale, Hide-From-Recommendations"}, free,
                    {**product(8103), "tags": "sale"}]
    if api_name == "graphql":
        api.products.append({**product(8104), "gift_card": True})
    bought = order(5101, 1, [8103, 8104], "2025-03-01T10:00:00Z")
    bought["line_items"][1]["gift_card"] = True
    api.orders, api.levels = [bought], []

    # Act
    summary = backfill(api, either_store, tmp_path, api_name)

    # Assert
    expected = {"8101": "tag", "8102": "free", "8103": None, "8104": "gift_card"}  # REST: the order's line says so
    assert {pid: row.hidden for pid, row in either_store.products(SHOP).items()} == expected
    assert either_store.unsellable_product_ids(SHOP) == {pid for pid, reason in expected.items() if reason}
    assert (summary["orders"], summary["events"]) == (1, 2)  # the gift card's line kept for the record at weight 0
    assert [(i.product_id, i.kind.value) for i in either_store.interactions(SHOP)] == [("8103", "purchase")]


def test_a_graphql_backfill_after_a_rest_one_hides_the_gift_cards_rest_cannot_tell(rest_api, graphql_api, either_store,
                                                                                   tmp_path):
    # Arrange: the shop backfilled through REST, whose products documents no gift card field
    rest_api.products, rest_api.orders, rest_api.levels = [product(8103), product(8104)], [], []
    graphql_api.products, graphql_api.orders, graphql_api.levels = [product(8103), {**product(8104),
                                                                                    "gift_card": True}], [], []
    backfill(rest_api, either_store, tmp_path, "rest")
    assert either_store.unsellable_product_ids(SHOP) == set()

    # Act: the same products, unchanged since, read through GraphQL
    summary = backfill(graphql_api, either_store, tmp_path, "graphql")

    # Assert: the gift card applied again (its delivery id names what GraphQL read more), the other one a duplicate
    assert (summary["products"], summary["duplicates"]) == (1, 1)
    assert {pid: row.hidden for pid, row in either_store.products(SHOP).items()} == {"8103": None, "8104": "gift_card"}
    assert either_store.unsellable_product_ids(SHOP) == {"8104"}


def picks_of(*pids: int) -> list[dict]:
    """A product's `metafields` naming its related picks, as Search & Discovery keeps them."""
    return [{"namespace": PICKS_NAMESPACE, "key": "related_products",
             "value": json.dumps([f"gid://shopify/Product/{pid}" for pid in pids])}]


def test_a_graphql_backfill_stores_each_products_picks_and_a_later_rest_one_keeps_them(rest_api, graphql_api,
                                                                                       either_store, tmp_path):
    # Arrange: 8103's page picks 8104 then 8101 (its metafield, which GraphQL reads and products.json does not)
    graphql_api.products = [{**product(8103), "metafields": picks_of(8104, 8101)}, product(8104), product(8101)]
    rest_api.products = [product(8103), product(8104), product(8101)]
    for api in (rest_api, graphql_api):
        api.orders, api.levels = [], []

    # Act: GraphQL, then the same products through REST, then GraphQL again with 8103's picks changed
    backfill(graphql_api, either_store, tmp_path, "graphql")
    first = either_store.products(SHOP)["8103"].picks
    backfill(rest_api, either_store, tmp_path, "rest")
    after_rest = either_store.products(SHOP)["8103"].picks
    graphql_api.products[0] = {**product(8103), "metafields": picks_of(8101)}
    summary = backfill(graphql_api, either_store, tmp_path, "graphql")

    # Assert: stored, kept by REST (which says nothing of them), replaced by the run that read new picks (its delivery
    # id names them: the product's version alone would have made it a duplicate)
    assert first == after_rest == MerchantPicks(related=("8104", "8101"))
    assert either_store.products(SHOP)["8103"].picks == MerchantPicks(related=("8101",))
    assert (summary["products"], summary["duplicates"]) == (1, 2)
    assert either_store.catalog_state(SHOP).picks == {"8103": MerchantPicks(related=("8101",))}


def test_a_backfill_after_the_upgrade_applies_what_the_earlier_code_stored_without_the_rules(rest_api, either_store,
                                                                                            tmp_path):
    """Records the code before migration 12 backfilled were stored under ids naming their id and version alone, shown
    and counted in full: the same records read again must hide what the rules hide and void the gift card's line."""
    # Arrange: a tagged and a free product and an order with a gift card's line, stored as that code stored them
    tagged = {**product(8101), "tags": "Sale, hide-from-recommendations"}
    free = product(8102)
    free["variants"] = [{**free["variants"][0], "price": "0.00"}]
    bought = order(5101, 1, [8103, 8104], "2025-03-01T10:00:00Z")
    bought["line_items"][1]["gift_card"] = True

    def earlier(resource: str, record: dict, changes: ChangeSet) -> tuple[Delivery, ChangeSet]:
        webhook_id = f"backfill:{resource}:{record['id']}:{record_version(record['updated_at'])}"
        return (Delivery(shop=SHOP, webhook_id=webhook_id, topic=f"{resource}/update"),
                ChangeSet(upsert_products=tuple(p._replace(hidden=None) for p in changes.upsert_products),
                          events=tuple(replace(e, weight_factor=1.0) for e in changes.events)))

    either_store.apply_many([earlier("products", tagged, product_changes(SHOP, tagged, "x")),
                             earlier("products", free, product_changes(SHOP, free, "x")),
                             earlier("orders", bought, order_changes(SHOP, bought, "x"))])
    assert either_store.unsellable_product_ids(SHOP) == set()
    rest_api.products, rest_api.orders, rest_api.levels = [tagged, free], [bought], []

    # Act
    summary = backfill(rest_api, either_store, tmp_path, "rest")

    # Assert
    assert (summary["products"], summary["orders"], summary["duplicates"]) == (2, 1, 0)
    assert {pid: row.hidden for pid, row in either_store.products(SHOP).items()} == {
        "8101": "tag", "8102": "free", "8104": "gift_card"}  # 8104: the order's gift card line, a row of its own
    assert either_store.unsellable_product_ids(SHOP) == {"8101", "8102", "8104"}
    assert [(i.product_id, i.weight_factor) for i in either_store.interactions(SHOP)] == [("8103", 1.0)]


# --- what customers/redact erased ----------------------------------------------------------------------------

@pytest.mark.parametrize("api_name", ["rest", "graphql"])
def test_bug_a_backfill_after_customers_redact_does_not_store_the_redacted_orders_again(
        rest_api, graphql_api, event_store_url, tmp_path, api_name):
    """BUG: customers/redact deleted customer 2's orders (5002, listed in orders_to_redact, and 5006, theirs too), and
    the next backfill read them from Shopify and stored them again: 5002 as a guest order, Shopify having removed the
    customer from it meanwhile."""
    # Arrange: the shop backfilled, customer 2 redacted; since then Shopify has changed both orders (a new version
    # each, which a backfill stores again), removing the customer from 5002, and has changed 5001 (customer 1) too
    api = rest_api if api_name == "rest" else graphql_api
    store = open_event_store(event_store_url)
    try:
        assert backfill(api, store, tmp_path, api_name)["redacted"] == 0
        assert store.redact_customer(SHOP, "2", ["5002"]) == 4
        left = store.count_events(SHOP)
        later = "2025-04-01T00:00:00Z"
        changed = {5001: {"updated_at": later}, 5002: {"customer": None, "updated_at": later},
                   5006: {"updated_at": later}}
        api.orders = [{**o, **changed.get(o["id"], {})} for o in SHOP_ORDERS]

        # Act
        summary = backfill(api, store, tmp_path, api_name)

        # Assert: 5001's new version stored (no new events: its lines dedupe), the redacted ones not
        assert (summary["redacted"], summary["orders"], summary["events"], summary["skipped"]) == (2, 1, 0, 0)
        assert store.count_events(SHOP) == left
        assert not {"5002", "5006"} & {i.order_id for i in store.interactions(SHOP)}
        assert store.history(SHOP, "c:2", 10) == [] and store.history(SHOP, "a:order-5002", 10) == []
        assert store.redacted(SHOP).order_ids == {"5002"}
    finally:
        store.close()


@pytest.mark.parametrize("api_name", ["rest", "graphql"])
def test_bug_a_backfill_stores_an_order_a_redacted_customer_placed_after_the_redaction(
        rest_api, graphql_api, event_store_url, tmp_path, api_name):
    """BUG webhooks/backfill.py `redacted_order`: every order of a customer customers/redact erased was left out,
    forever, though one placed after the redaction is new data (the webhooks store it). Now an order of theirs is left
    out when created at or before their redaction (the webhooks' rule), stored when later."""
    # Arrange: the shop backfilled, customer 2 redacted (5002 listed); since then 5006 (theirs, older) has changed and
    # customer 2 has placed order 5201
    api = rest_api if api_name == "rest" else graphql_api
    store = open_event_store(event_store_url)
    try:
        backfill(api, store, tmp_path, api_name)
        assert store.redact_customer(SHOP, "2", ["5002"]) == 4
        placed = (datetime.now(timezone.utc) + timedelta(seconds=2)).replace(microsecond=0)
        changed = order(5006, 2, [8003, 8001], "2025-03-06T10:00:00Z", updated_at="2025-04-01T00:00:00Z")
        api.orders = [*(changed if o["id"] == 5006 else o for o in SHOP_ORDERS),
                      order(5201, 2, [8002], placed.isoformat().replace("+00:00", "Z"))]

        # Act
        summary = backfill(api, store, tmp_path, api_name)

        # Assert: 5201 stored, 5006's new version not
        assert (summary["redacted"], summary["orders"], summary["events"]) == (2, 1, 1)  # 5002 read again, and 5006
        assert [(i.order_id, i.product_id, i.occurred_at) for i in store.history(SHOP, "c:2", 10)] == [
            ("5201", "8002", placed)]
    finally:
        store.close()
