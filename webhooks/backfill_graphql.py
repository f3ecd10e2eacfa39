"""The backfill's pages read through Shopify's GraphQL Admin API (`python -m recommender backfill --api graphql`).

Each page is one POST to `/admin/api/{version}/graphql.json`: `products` or `orders` (`first`/`after`, the
`pageInfo { hasNextPage endCursor }` cursor saved in the state file), each node with the first page of its nested
connections (a product's variants, an order's line items, a refund's lines). A nested connection with more pages is
read to its end by queries of its own (`product(id:) { variants(after:) }`, `order(id:) { lineItems(after:) }`,
`refund(id:) { refundLineItems(after:) }`), so a product keeps all of its variants (the REST API returns 100). A
page of products then reads every location's level of its variants' inventory items (`nodes(ids:)` on
InventoryItem, `inventoryLevels`, `quantities(names: ["available"])`, paged by `inventoryItem(id:)`), as the REST
backfill reads `inventory_levels.json`.

Every node becomes the REST record the webhook translators take (`product_record`, `order_record`,
`level_record`): GIDs (`gid://shopify/Product/123`) become the numeric ids, enums and money the REST strings. The
stores cannot tell which API a row came from, and the two backfills' webhook ids for a record are the same
(`backfill.record_version`), so one run after the other stores nothing twice. Shopify's changelog adds `cartToken`
(REST's `cart_token`) to GraphQL's Order in API version 2026-07; from that version on the orders query asks for it,
and with an older `--api-version` (the default, 2026-04) a guest order is keyed by `order-<id>`, as REST keys a
guest order without a cart token.

What the GraphQL Admin API reference documents of the queries below:
- `products(sortKey: ID)` and `orders(sortKey: CREATED_AT)`: values of ProductSortKeys and OrderSortKeys (which has
  ID too; the orders connection's default is PROCESSED_AT).
- `orders` documents no default status filter, unlike REST's `status=open`: its `query` filter `status` takes open,
  closed, cancelled or not_closed (`any` is not one of them), so the backfill gives none. What the Order object
  limits by default is age: only the last 60 days of orders are accessible unless the app is granted
  `read_all_orders`. The orders query filters by `--since` alone (`created_at:>='...'`: the search syntax wants a
  date in quotes).
- The roots `product(id:)`, `order(id:)`, `refund(id:)`, `inventoryItem(id:)` take an `ID!` (the GID), and
  `nodes(ids: [ID!]!)` returns `[Node]!`; an array argument holds at most 250 values.
- Order: `createdAt`, `updatedAt`, `cancelledAt` (null unless cancelled), `customer` (nullable), `lineItems` (a
  connection), `refunds` (`[Refund!]!`: a list, not a connection; its optional `first` only truncates it, so none
  is given). Refund: `refundLineItems` (a connection); RefundLineItem: `quantity`, `lineItem`. LineItem: `quantity`,
  `isGiftCard`, `product` and `variant` (nullable), `originalUnitPriceSet { shopMoney { amount } }`.
- Product: `status`, `publishedAt`, `productType`, `vendor`, `tags` (`[String!]!`), `isGiftCard`, `featuredMedia`
  (the Media interface, whose `preview { image }` is null until the preview is ready), `variants` (a connection).
  ProductVariant: `price`, `inventoryPolicy`, `inventoryQuantity`, `inventoryItem`. InventoryItem: `tracked`, `inventoryLevels` (a
  connection). InventoryLevel: `updatedAt`, `location`, `quantities(names:)`, which replaced its `available` field
  (deprecated in 2023-04, removed in 2024-04).

Shopify refuses a query that requests more than 1,000 points (MAX_COST_EXCEEDED), counted from the query before it
runs. Its rate-limits page prices a field by what it returns: a scalar or an enum 0, an object 1, an interface or a
union the most of its possible selections, a connection by its `first` (or `last`); Shopify's account of the model
gives a connection 2 points and `first` times one node's cost. Counted here: every object 1, the media interface
and each connection's `pageInfo` included (PageInfo is an object), a connection 2 and `first` times its node. A
page holds at most 25 products (728 points with nested first pages of 10) and as many orders as fit (12: 951
points; 25 would request 1,978), and a nested connection's later pages as many nodes as fit under their parent
(199 line items: 999).

Not documented, so left for a real shop to show: whether `pageInfo` is charged (counted, which can only
over-estimate); how a list that is not a connection is priced: an order's `refunds` is counted as one refund (a
shop that prices it higher answers MAX_COST_EXCEEDED, which names the page sizes), `nodes(ids:)` as one item per id,
`quantities` as its one name. And what a token without `read_all_orders` gets for older orders: the Order object
calls them not accessible, which reads as left out of `orders` rather than refused (so the backfill cannot tell).

Shopify limits GraphQL by cost: each answer's `extensions.cost` gives the query's `requestedQueryCost` and the
bucket's `throttleStatus` (`currentlyAvailable`, `restoreRate` a second). Before a query the client waits until the
bucket holds that query's last requested cost (a query never sent yet: the last query's), and a `THROTTLED` error
is waited out (`requestedQueryCost - currentlyAvailable` over `restoreRate`) and retried, at most MAX_THROTTLED
times in a row. HTTP 429s, 5xx and dropped connections are retried as the REST client retries them.
"""

from __future__ import annotations

import re
from typing import Any

import requests

from recommender.events import PICKS_KEYS, PICKS_NAMESPACE
from webhooks.backfill import (
    DEFAULT_RETRY_AFTER, ITEMS_PER_LEVELS_REQUEST, LEVELS, MAX_THROTTLED, PAGE_SIZE, TIMEOUT, AdminApiClient,
    BackfillConfig, BackfillError, Batch, PageSource, Sleep, inventory_item_ids,
)

GRAPHQL_PAGE_SIZE = 25  # products or orders a page at most; fewer where the query would cost more than
MAX_QUERY_COST = 1000  # the most one query may request (Shopify's "GraphQL Admin API rate limits" page)
_GID = re.compile(r"^gid://shopify/(\w+)/(\d+)$")

_PAGE_INFO = "pageInfo { hasNextPage endCursor }"
_VARIANT = "id price inventoryPolicy inventoryQuantity inventoryItem { id tracked }"
_LEVEL = 'updatedAt location { id } quantities(names: ["available"]) { name quantity }'
_LINE = "id quantity isGiftCard product { id } variant { id } originalUnitPriceSet { shopMoney { amount } }"
_REFUND_LINE = "quantity lineItem { id }"
# The merchant's picks for the product's page (recommender.events.PICKS_NAMESPACE), one aliased metafield a kind.
_PICKS = " ".join(f'{key}: metafield(namespace: "{PICKS_NAMESPACE}", key: "{key}") {{ value }}' for key in PICKS_KEYS)

# What one node of each selection above requests, counted as Shopify's rate-limits page counts it: an object 1, a
# scalar or an enum 0 (a list, which the page does not price, as one element).
_VARIANT_COST = 2  # ProductVariant, InventoryItem
_LEVEL_COST = 3  # InventoryLevel, Location, its quantities (of one name)
_LINE_COST = 5  # LineItem, Product, ProductVariant, MoneyBag, MoneyV2
_REFUND_LINE_COST = 2  # RefundLineItem, LineItem
_PAGE_INFO_COST = 1  # every connection's `pageInfo`: a PageInfo object, 1 as any object (the page sets no other cost)
_CONNECTION_COST = 2 + _PAGE_INFO_COST  # a connection's own 2 points, and its pageInfo


def connection_cost(first: int, node_cost: int) -> int:
    """A connection's requested cost: 2, its `pageInfo` (an object), and `first` times one node's."""
    return _CONNECTION_COST + first * node_cost


def product_cost(nested: int) -> int:
    """One node of PRODUCTS_QUERY: Product, featuredMedia, its preview and image, the two picks' Metafields, the
    first page of variants."""
    return 4 + len(PICKS_KEYS) + connection_cost(nested, _VARIANT_COST)


def order_cost(nested: int) -> int:
    """One node of the orders query: Order, customer, the first page of line items, its refunds (a list, counted as
    one Refund) each with the first page of its lines."""
    return 2 + connection_cost(nested, _LINE_COST) + 1 + connection_cost(nested, _REFUND_LINE_COST)


def largest_first(node_cost: int, parent_objects: int = 0) -> int:
    """The largest `first` of a connection of such nodes (under `parent_objects` objects) within MAX_QUERY_COST."""
    return max(1, (MAX_QUERY_COST - parent_objects - _CONNECTION_COST) // node_cost)

PRODUCTS_QUERY = f"""query BackfillProducts($first: Int!, $after: String, $nested: Int!) {{
  products(first: $first, after: $after, sortKey: ID) {{
    nodes {{
      id title handle status publishedAt updatedAt productType vendor tags isGiftCard
      featuredMedia {{ preview {{ image {{ url }} }} }}
      {_PICKS}
      variants(first: $nested) {{ nodes {{ {_VARIANT} }} {_PAGE_INFO} }}
    }}
    {_PAGE_INFO}
  }}
}}"""
VARIANTS_QUERY = f"""query BackfillVariants($id: ID!, $first: Int!, $after: String) {{
  product(id: $id) {{ variants(first: $first, after: $after) {{ nodes {{ {_VARIANT} }} {_PAGE_INFO} }} }}
}}"""
LEVELS_QUERY = f"""query BackfillLevels($ids: [ID!]!, $nested: Int!) {{
  nodes(ids: $ids) {{
    ... on InventoryItem {{ id inventoryLevels(first: $nested) {{ nodes {{ {_LEVEL} }} {_PAGE_INFO} }} }}
  }}
}}"""
ITEM_LEVELS_QUERY = f"""query BackfillItemLevels($id: ID!, $first: Int!, $after: String) {{
  inventoryItem(id: $id) {{ inventoryLevels(first: $first, after: $after) {{ nodes {{ {_LEVEL} }} {_PAGE_INFO} }} }}
}}"""
CART_TOKEN_SINCE = "2026-07"  # the first API version whose Order has `cartToken` (Shopify's changelog, May 2026)
ORDERS_QUERY = f"""query BackfillOrders($first: Int!, $after: String, $query: String, $nested: Int!) {{
  orders(first: $first, after: $after, query: $query, sortKey: CREATED_AT) {{
    nodes {{
      id createdAt updatedAt cancelledAt customer {{ id }}{{cart_token}}
      lineItems(first: $nested) {{ nodes {{ {_LINE} }} {_PAGE_INFO} }}
      refunds {{ id refundLineItems(first: $nested) {{ nodes {{ {_REFUND_LINE} }} {_PAGE_INFO} }} }}
    }}
    {_PAGE_INFO}
  }}
}}"""


def orders_query(api_version: str) -> str:
    """The orders query, asking for the cart token where the API version has it."""
    has_cart_token = api_version == "unstable" or api_version >= CART_TOKEN_SINCE
    return ORDERS_QUERY.replace("{cart_token}", " cartToken" if has_cart_token else "")


ORDER_LINES_QUERY = f"""query BackfillOrderLines($id: ID!, $first: Int!, $after: String) {{
  order(id: $id) {{ lineItems(first: $first, after: $after) {{ nodes {{ {_LINE} }} {_PAGE_INFO} }} }}
}}"""
REFUND_LINES_QUERY = f"""query BackfillRefundLines($id: ID!, $first: Int!, $after: String) {{
  refund(id: $id) {{ refundLineItems(first: $first, after: $after) {{ nodes {{ {_REFUND_LINE} }} {_PAGE_INFO} }} }}
}}"""
_OPERATION = re.compile(r"^query (\w+)")


# --- GraphQL nodes → the REST records the translators take (values in, values out) ------------------

def numeric_id(gid: Any) -> Any:
    """'gid://shopify/Product/123' → 123, as REST gives ids; anything else is returned as it came, for the
    translators to refuse by name (a node without an id, an id of another shape)."""
    match = _GID.match(gid) if isinstance(gid, str) else None
    return int(match.group(2)) if match else gid


def _id_of(node: Any) -> Any:
    return numeric_id(node.get("id")) if isinstance(node, dict) else None


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def variant_record(variant: dict) -> dict:
    item = variant.get("inventoryItem") if isinstance(variant.get("inventoryItem"), dict) else {}
    record = {"id": numeric_id(variant.get("id")), "price": variant.get("price"),
              "inventory_item_id": numeric_id(item.get("id")), "inventory_quantity": variant.get("inventoryQuantity"),
              "inventory_policy": _lower(variant.get("inventoryPolicy"))}
    if "tracked" in item:  # what REST's inventory_management said before newer versions dropped it
        record["inventory_management"] = "shopify" if item["tracked"] else None
    return record


def product_record(product: dict, variants: list[dict]) -> dict:
    """A Product node (and all of its variants' nodes) as products.json gives the product."""
    media = product.get("featuredMedia") if isinstance(product.get("featuredMedia"), dict) else {}
    image = ((media.get("preview") or {}).get("image") or {}) if isinstance(media.get("preview"), dict) else {}
    return {
        "id": numeric_id(product.get("id")), "title": product.get("title"), "handle": product.get("handle"),
        "status": _lower(product.get("status")), "published_at": product.get("publishedAt"),
        "updated_at": product.get("updatedAt"), "product_type": product.get("productType"),
        "vendor": product.get("vendor"), "image": {"src": image["url"]} if image.get("url") else None,
        "tags": product.get("tags"), "gift_card": product.get("isGiftCard") is True,
        "variants": [variant_record(v) for v in variants],
        # as a webhook subscribed to the namespace carries them: a metafield the product has not set is left out
        "metafields": [{"namespace": PICKS_NAMESPACE, "key": key, "value": product[key]["value"]}
                       for key in PICKS_KEYS if isinstance(product.get(key), dict)],
    }


def level_record(item_gid: Any, level: dict) -> dict:
    """An InventoryLevel node as inventory_levels.json gives it: its `available` quantity (null when not named)."""
    quantities = level.get("quantities") if isinstance(level.get("quantities"), list) else []
    available = next((q.get("quantity") for q in quantities if isinstance(q, dict) and q.get("name") == "available"),
                     None)
    location = level.get("location") if isinstance(level.get("location"), dict) else {}
    return {"inventory_item_id": numeric_id(item_gid), "location_id": numeric_id(location.get("id")),
            "available": available, "updated_at": level.get("updatedAt")}


def line_record(line: dict) -> dict:
    price_set = line.get("originalUnitPriceSet") if isinstance(line.get("originalUnitPriceSet"), dict) else {}
    shop_money = price_set.get("shopMoney") if isinstance(price_set.get("shopMoney"), dict) else {}
    return {"id": numeric_id(line.get("id")), "product_id": _id_of(line.get("product")),
            "variant_id": _id_of(line.get("variant")), "quantity": line.get("quantity"),
            "price": shop_money.get("amount"), "gift_card": line.get("isGiftCard") is True}


def order_record(order: dict, lines: list[dict], refunds: list[tuple[dict, list[dict]]]) -> dict:
    """An Order node, all of its line items and its refunds with all of their lines, as orders.json gives the order
    (its cart token None where the API version has no `cartToken`)."""
    order_id = numeric_id(order.get("id"))
    customer = order.get("customer")
    return {
        "id": order_id, "created_at": order.get("createdAt"), "updated_at": order.get("updatedAt"),
        "cancelled_at": order.get("cancelledAt"), "cart_token": order.get("cartToken"),
        "customer": {"id": numeric_id(customer.get("id"))} if isinstance(customer, dict) else None,
        "line_items": [line_record(line) for line in lines],
        "refunds": [{"id": numeric_id(refund.get("id")), "order_id": order_id,
                     "refund_line_items": [{"line_item_id": _id_of(line.get("lineItem")),
                                            "quantity": line.get("quantity")} for line in refund_lines]}
                    for refund, refund_lines in refunds],
    }


def orders_search(config: BackfillConfig) -> str | None:
    """`--since` as the orders query's filter (a date in quotes, as Shopify's search syntax wants it), and nothing
    else: the orders connection documents no default status filter to lift (REST's `status=any`), only the Order
    object's 60 days without `read_all_orders`, which no filter lifts."""
    return f"created_at:>='{config.since.isoformat()}'" if config.since is not None else None


# --- the client ------------------------------------------------------------------------------------------

def _cost(body: Any) -> tuple[float | None, float | None, float | None]:
    """(requestedQueryCost, currentlyAvailable, restoreRate) from an answer's `extensions.cost`; None where absent."""
    cost = body.get("extensions", {}).get("cost") if isinstance(body, dict) and isinstance(
        body.get("extensions"), dict) else None
    if not isinstance(cost, dict):
        return None, None, None
    status = cost.get("throttleStatus") if isinstance(cost.get("throttleStatus"), dict) else {}

    def number(value: Any) -> float | None:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    return number(cost.get("requestedQueryCost")), number(status.get("currentlyAvailable")), number(
        status.get("restoreRate"))


def throttle_wait(cost: float | None, available: float | None, restore_rate: float | None) -> float:
    """Seconds until a bucket holding `available` points, refilled at `restore_rate` a second, holds `cost`."""
    if cost is None or available is None or not restore_rate or restore_rate <= 0:
        return 0.0
    return max(0.0, (cost - available) / restore_rate)


def _error_codes(body: dict) -> list[str]:
    errors = body.get("errors")
    if not isinstance(errors, list):
        return []
    return [str(error.get("extensions", {}).get("code", "")) if isinstance(error, dict) and isinstance(
        error.get("extensions"), dict) else "" for error in errors]


class GraphQLClient(AdminApiClient):
    """POSTs queries to one shop's GraphQL Admin API, within its cost bucket (REST's retries for the rest)."""

    def __init__(self, config: BackfillConfig, session: requests.Session, sleep: Sleep):
        super().__init__(config, session, sleep)
        self._url = f"{config.base_url}/admin/api/{config.api_version}/graphql.json"
        self._costs: dict[str, float] = {}  # operation → its last requestedQueryCost
        self._last_cost: float | None = None
        self._available: float | None = None  # the bucket after the last answer
        self._restore_rate: float | None = None

    def query(self, resource: str, text: str, variables: dict[str, Any]) -> dict:
        """The `data` of `text` run with `variables`; waits for the bucket first, and out any THROTTLED answer."""
        operation = _OPERATION.match(text).group(1)  # type: ignore[union-attr]
        throttled = 0
        while True:
            pause = throttle_wait(self._costs.get(operation, self._last_cost), self._available, self._restore_rate)
            if pause:
                self._sleep(pause)
                self._available = None  # waited for: the next answer says how full the bucket is
            response = self._send(resource, lambda headers: self._session.post(
                self._url, json={"query": text, "variables": variables}, headers=headers, timeout=TIMEOUT,
                allow_redirects=False))
            try:
                body = response.json()
            except ValueError:
                raise BackfillError(f"{resource}: Shopify's answer from {self._url} is not JSON") from None
            if not isinstance(body, dict):
                raise BackfillError(f"{resource}: Shopify's answer from {self._url} is not a GraphQL response")
            requested, self._available, self._restore_rate = _cost(body)
            if requested is not None:
                self._costs[operation] = self._last_cost = requested
            codes = _error_codes(body)
            if "THROTTLED" in codes:
                throttled += 1
                if throttled > MAX_THROTTLED:
                    raise BackfillError(f"{resource}: Shopify kept answering THROTTLED {MAX_THROTTLED} times in a "
                                        f"row", 429)
                self.retries += 1
                self._sleep(throttle_wait(requested, self._available, self._restore_rate) or DEFAULT_RETRY_AFTER)
                self._available = None
                continue
            if body.get("errors"):
                raise BackfillError(self._explain(resource, body, codes), 403 if "ACCESS_DENIED" in codes else None)
            data = body.get("data")
            if not isinstance(data, dict):
                raise BackfillError(f"{resource}: Shopify's GraphQL answer has no data")
            return data

    def _explain(self, resource: str, body: dict, codes: list[str]) -> str:
        shop = self._config.shop
        if "ACCESS_DENIED" in codes:
            scope = {"products": "read_products", LEVELS: "read_inventory"}.get(
                resource, "read_orders (and read_all_orders for orders older than 60 days)")
            return (f"the access token may not read {resource} on {shop} (ACCESS_DENIED): the app needs the {scope} "
                    f"scope")
        if "MAX_COST_EXCEEDED" in codes:
            return (f"{resource}: the query asks for more than Shopify allows one query (MAX_COST_EXCEEDED): the "
                    f"backfill's GraphQL page sizes (GRAPHQL_PAGE_SIZE, BackfillConfig.nested_page_size) are too "
                    f"large for this API version; please report it")
        errors = body["errors"] if isinstance(body["errors"], list) else [body["errors"]]
        messages = "; ".join(str(e.get("message") if isinstance(e, dict) else e)[:200] for e in errors[:3])
        return f"{resource}: Shopify's GraphQL API answered with errors: {messages}"


def _connection(data: Any, resource: str, *path: str) -> tuple[list[dict], str | None]:
    """The nodes of the connection at `path` in `data`, and the cursor after them (None: no more pages)."""
    value = data
    for name in path:
        value = value.get(name) if isinstance(value, dict) else None
    nodes = value.get("nodes") if isinstance(value, dict) else None
    info = value.get("pageInfo") if isinstance(value, dict) else None
    if not isinstance(nodes, list) or not all(isinstance(n, dict) for n in nodes) or not isinstance(info, dict):
        raise BackfillError(f"{resource}: Shopify's GraphQL answer has no {'.'.join(path)} connection")
    cursor = info.get("endCursor")
    if info.get("hasNextPage") and not (isinstance(cursor, str) and cursor):
        raise BackfillError(f"{resource}: Shopify's GraphQL answer has a next page of {'.'.join(path)} but no cursor")
    return nodes, cursor if info.get("hasNextPage") else None


class GraphQLSource(PageSource):
    """The GraphQL Admin API: a cursor is the `after` of the next page of products or orders ('' for the first)."""

    def __init__(self, config: BackfillConfig, session: requests.Session, sleep: Sleep):
        self._config = config
        self._client = GraphQLClient(config, session, sleep)
        self._requests = 0
        nested = config.nested_page_size
        self._first = {resource: min(config.page_size, GRAPHQL_PAGE_SIZE, largest_first(cost)) for resource, cost in (
            ("products", product_cost(nested)), ("orders", order_cost(nested)))}
        self._more = min(config.page_size, PAGE_SIZE)  # a nested connection's later pages, read on their own

    @property
    def retries(self) -> int:  # type: ignore[override]
        return self._client.retries

    def start(self, resource: str) -> str:
        return ""

    def fetch(self, resource: str, cursor: str) -> Batch:
        self._requests = 0
        if resource == "products":
            records, next_cursor = self._products(cursor or None)
            levels = self._levels(records)
        else:
            records, next_cursor = self._orders(cursor or None)
            levels = []
        return Batch(records, levels, self._requests, next_cursor)

    def _query(self, resource: str, text: str, variables: dict[str, Any]) -> dict:
        self._requests += 1
        return self._client.query(resource, text, variables)

    def _rest_of(self, resource: str, text: str, gid: Any, path: tuple[str, ...], after: str | None,
                 node_cost: int) -> list[dict]:
        """The nodes after `after` of one node's nested connection, page by page to its end."""
        nodes: list[dict] = []
        first = min(self._more, largest_first(node_cost, parent_objects=1))
        while after is not None:
            data = self._query(resource, text, {"id": gid, "first": first, "after": after})
            page, after = _connection(data, resource, *path)
            nodes.extend(page)
        return nodes

    def _products(self, after: str | None) -> tuple[list[dict], str | None]:
        data = self._query("products", PRODUCTS_QUERY, {"first": self._first["products"], "after": after,
                                                         "nested": self._config.nested_page_size})
        products, next_cursor = _connection(data, "products", "products")
        records = []
        for product in products:
            variants, more = _connection(product, "products", "variants")
            variants = variants + self._rest_of("products", VARIANTS_QUERY, product.get("id"),
                                                ("product", "variants"), more, _VARIANT_COST)
            records.append(product_record(product, variants))
        return records, next_cursor

    def _levels(self, products: list[dict]) -> list[dict]:
        """Every location's level of the page's inventory items, each (item, location) once."""
        items = [f"gid://shopify/InventoryItem/{item}" for item in inventory_item_ids(products)]
        levels: dict[tuple[Any, Any], dict] = {}
        nested = self._config.nested_page_size
        # Each id counted as an object with its first page of levels: Shopify's page prices no list, so a list of
        # ids is taken to cost what each of its elements would (29 items a query at the default 10 levels: 34
        # points each, 989 in all).
        per_query = min(ITEMS_PER_LEVELS_REQUEST, largest_first(1 + connection_cost(nested, _LEVEL_COST)))
        for start in range(0, len(items), per_query):
            data = self._query(LEVELS, LEVELS_QUERY, {"ids": items[start:start + per_query], "nested": nested})
            nodes = data.get("nodes")
            if not isinstance(nodes, list):
                raise BackfillError(f"{LEVELS}: Shopify's GraphQL answer has no nodes")
            for item in nodes:
                if not isinstance(item, dict):  # an id that names nothing (an item deleted since) is null
                    continue
                found, more = _connection(item, LEVELS, "inventoryLevels")
                found = found + self._rest_of(LEVELS, ITEM_LEVELS_QUERY, item.get("id"),
                                              ("inventoryItem", "inventoryLevels"), more, _LEVEL_COST)
                for level in found:
                    record = level_record(item.get("id"), level)
                    levels[(str(record["inventory_item_id"]), str(record["location_id"]))] = record
        return list(levels.values())

    def _orders(self, after: str | None) -> tuple[list[dict], str | None]:
        data = self._query("orders", orders_query(self._config.api_version), {"first": self._first["orders"],
                                                     "after": after,
                                                     "query": orders_search(self._config),
                                                     "nested": self._config.nested_page_size})
        orders, next_cursor = _connection(data, "orders", "orders")
        records = []
        for order in orders:
            lines, more = _connection(order, "orders", "lineItems")
            lines = lines + self._rest_of("orders", ORDER_LINES_QUERY, order.get("id"), ("order", "lineItems"), more,
                                          _LINE_COST)
            refunds = order.get("refunds") or []
            if not isinstance(refunds, list) or not all(isinstance(r, dict) for r in refunds):
                raise BackfillError("orders: Shopify's GraphQL answer has refunds that are not a list of objects")
            with_lines = []
            for refund in refunds:
                refund_lines, more = _connection(refund, "orders", "refundLineItems")
                refund_lines = refund_lines + self._rest_of("orders", REFUND_LINES_QUERY, refund.get("id"),
                                                            ("refund", "refundLineItems"), more, _REFUND_LINE_COST)
                with_lines.append((refund, refund_lines))
            records.append(order_record(order, lines, with_lines))
        return records, next_cursor
