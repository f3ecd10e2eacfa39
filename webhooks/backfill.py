"""Backfill a shop's past products and orders, and its stock, through Shopify's REST Admin API (`--api rest`, the
default) or its GraphQL Admin API (`--api graphql`: webhooks/backfill_graphql.py, which maps each node to the REST
record these translators take, so both store the same rows).

`python -m recommender backfill --shop X` pages through `products.json` and
`orders.json` and stores each record through the webhook translators
(`product_upserted`, `order_created`, plus `refund_created` for an order's
refunds) with `EventStore.apply_many`, a page in one transaction. Each record is
one delivery whose webhook id is derived from the record
(`backfill:orders:<id>:<updated_at>`), so a re-run stores nothing new, a record
changed since the last run is applied again, and an order already received by
webhook adds no events (its lines dedupe on their keys). An order customers/redact erased, by its id or as one
of its customer's created at or before their redaction (`EventStore.redacted`, read once a run), is not stored
again: it is counted as `redacted` (the store withholds its events all the same, `REDACTED_EVENT`, should the
redaction come while the run goes on: such an order counts as stored, with no events).

Each page of products brings every location's stock level of its variants' inventory items
(`inventory_levels.json?inventory_item_ids=`, 50 items a request, paged), stored after the page
as `inventory_levels/update` stores one (`inventory_level_updated`), each marked as read with
all of its item's locations: from then on the item's stock is the sum of its levels, exactly,
where webhooks alone, one location at a time, cannot know the locations never heard from
(`recommender.store.STOCK_OF_VARIANT`). Levels are read in the products pass so that a resumed
run needs no cursor of its own for them: a page's levels are fetched before the page is stored.
`--since` limits orders only: a level is the current count, however long ago it last changed.

Pages follow the `Link: <...>; rel="next"` URL exactly as given: a page_info
request may carry only `limit` and `fields`, so the filters live in the first
request. The next page's URL is saved to a state file after each page, which is
how an interrupted backfill resumes. Requests keep within Shopify's leaky bucket
(`X-Shopify-Shop-Api-Call-Limit`), wait `Retry-After` on 429 and back off on 5xx.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlencode, urlsplit

import requests

from recommender.errors import InvalidEvent, RecommenderError
from recommender.changes import ChangeSet, Delivery
from recommender.events import parse_timestamp
from recommender.model_store import check_shop_domain
from recommender.settings import Secret
from recommender.store import EventStore, Redactions
from webhooks import MalformedPayload, WebhookError
from webhooks.topics import (
    TopicContext, has_gift_card_line, hidden_reason, inventory_level_updated, merchant_picks, order_created,
    order_occurred_at, product_upserted, refund_created, shopify_id,
)

log = logging.getLogger(__name__)

DEFAULT_API_VERSION = "2026-04"
DEFAULT_TOKEN_ENV = "SHOPIFY_ADMIN_TOKEN"
RESOURCES = ("products", "orders")  # the catalog first, so orders land on known products
PAGE_SIZE = 250  # Shopify's maximum: fewer pages, fewer calls against the bucket
LEVELS = "inventory_levels"  # read with each page of products, for its inventory items (not a pass of its own)
ITEMS_PER_LEVELS_REQUEST = 50  # Shopify's maximum of inventory_item_ids in one inventory_levels.json request
LEAK_PER_SECOND = 2.0  # the standard plan's REST bucket drains 2 calls/s (higher plans drain faster)
BUCKET_HEADROOM = 4  # keep this many calls free in the bucket; a fuller bucket means a pause first
DEFAULT_RETRY_AFTER = 2.0  # seconds, when a 429 comes without Retry-After
MAX_THROTTLED = 20  # 429s tolerated per request before giving up
MAX_RETRIES = 5  # 5xx answers or dropped connections per request
BACKOFF_SECONDS, BACKOFF_CAP = 1.0, 30.0  # 1, 2, 4, 8, 16 s
TIMEOUT = (10.0, 120.0)  # connect, read (seconds): a page of 250 orders can be large
STATE_FORMAT = 1
APIS = ("rest", "graphql")  # which Admin API the backfill reads; REST stays the default for now
_API_VERSION = re.compile(r"^(\d{4}-\d{2}|unstable)$")
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}

Sleep = Callable[[float], None]


class BackfillError(WebhookError):
    """The backfill cannot go on; the message says why and what to fix, and never contains the token."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status  # the HTTP status Shopify answered with, when there was one


@dataclass(frozen=True)
class BackfillConfig:
    shop: str
    token: Secret
    api_version: str = DEFAULT_API_VERSION
    since: datetime | None = None  # orders created at or after this (UTC); None: every order the token may read
    # (products and stock levels are always read whole)
    base_url: str = ""  # "" means https://{shop}; tests point it at a loopback server
    state_path: Path | None = None  # None means ./data/backfill-<shop>.json
    page_size: int = PAGE_SIZE  # GraphQL: at most GRAPHQL_PAGE_SIZE products or orders a page (query cost)
    api: str = "rest"  # "rest" or "graphql"
    nested_page_size: int = 10  # GraphQL only: a nested connection's first page inside a page (variants, line
    # items, refund lines, levels); more of it is read by its own queries, page_size at a time

    def __post_init__(self) -> None:
        check_shop_domain(self.shop)
        if self.api not in APIS:
            raise BackfillError(f"--api must be one of {', '.join(APIS)}, got {self.api!r}")
        if not 1 <= self.nested_page_size <= PAGE_SIZE:
            raise BackfillError(f"nested_page_size must be from 1 to {PAGE_SIZE}, got {self.nested_page_size}")
        if not _API_VERSION.match(self.api_version):
            raise BackfillError(f"--api-version must look like 2026-04, got {self.api_version!r}")
        if not 1 <= self.page_size <= PAGE_SIZE:
            raise BackfillError(f"page_size must be from 1 to {PAGE_SIZE}, got {self.page_size}")
        object.__setattr__(self, "base_url", check_base_url(self.base_url or f"https://{self.shop}"))

    @property
    def state_file(self) -> Path:
        return self.state_path or Path("data") / f"backfill-{self.shop}.json"

    @classmethod
    def from_options(cls, shop: str, env: Mapping[str, str], token_env: str = DEFAULT_TOKEN_ENV,
                     since: str | None = None, **options: Any) -> "BackfillConfig":
        """Read the token from the variable `token_env` of `env` and validate every option once."""
        # A file with Windows line endings leaves '\r' on the value, which no header can carry (and requests'
        # error would quote the token): surrounding whitespace is not part of a token.
        token = (env.get(token_env) or "").strip()
        if not token:
            raise BackfillError(f"{token_env} is not set: export the Admin API access token of an app installed on "
                                f"the shop (with read_products, read_inventory and read_orders) in {token_env}")
        if not all(" " < char <= "~" for char in token):
            raise BackfillError(f"{token_env} must hold the access token alone, on one line: its value has spaces, "
                                f"line breaks or other characters no access token has (not shown)")
        try:
            since_at = parse_timestamp(since, "--since") if since else None
        except InvalidEvent as exc:
            raise BackfillError(f"{exc} (use a date such as 2025-01-01)") from None
        return cls(shop=check_shop_domain(shop.lower()), token=Secret(token), since=since_at, **options)


def check_base_url(url: str) -> str:
    """https only, except plain http to this machine (tests): the access token must never cross a network in clear."""
    parts = urlsplit(url.rstrip("/"))
    if parts.scheme != "https" and not (parts.scheme == "http" and parts.hostname in _LOOPBACK):
        raise BackfillError(f"the Admin API base URL must be https:// (http only to loopback), got {url!r}")
    if not parts.hostname or parts.path or parts.query or parts.fragment:
        raise BackfillError(f"the Admin API base URL must be scheme://host[:port] only, got {url!r}")
    return f"{parts.scheme}://{parts.netloc}"


def first_page_url(config: BackfillConfig, resource: str) -> str:
    """The one request that carries the filters; the cursors Shopify hands back keep them."""
    params: dict[str, Any] = {"limit": config.page_size}
    if resource == "orders":
        params["status"] = "any"  # the default is open orders only
        if config.since is not None:
            params["created_at_min"] = config.since.isoformat()
    return f"{config.base_url}/admin/api/{config.api_version}/{resource}.json?{urlencode(params)}"


def levels_url(config: BackfillConfig, inventory_item_ids: list[str]) -> str:
    """The first request for every location's level of up to 50 inventory items; later pages follow its cursors."""
    if not 1 <= len(inventory_item_ids) <= ITEMS_PER_LEVELS_REQUEST:
        raise ValueError(f"1 to {ITEMS_PER_LEVELS_REQUEST} inventory items a request, got {len(inventory_item_ids)}")
    params = {"inventory_item_ids": ",".join(inventory_item_ids), "limit": config.page_size}
    return f"{config.base_url}/admin/api/{config.api_version}/{LEVELS}.json?{urlencode(params)}"


def parse_call_limit(header: str | None) -> tuple[int, int] | None:
    """'39/40' → (39, 40): calls in the bucket, bucket size; None when absent or unreadable."""
    used, sep, size = (header or "").partition("/")
    if sep and used.strip().isdigit() and size.strip().isdigit() and int(size) > 0:
        return int(used), int(size)
    return None


def bucket_pause(header: str | None, leak_per_second: float = LEAK_PER_SECOND,
                 headroom: int = BUCKET_HEADROOM) -> float:
    """Seconds to wait so the bucket drains back to `headroom` free calls (0 when it has room)."""
    limit = parse_call_limit(header)
    if limit is None:
        return 0.0
    used, size = limit
    excess = used - (size - headroom)
    return max(0.0, excess / leak_per_second)


def retry_after_seconds(header: str | None, default: float = DEFAULT_RETRY_AFTER) -> float:
    """Shopify sends Retry-After as seconds, possibly fractional ('2.0')."""
    try:
        value = float(header) if header is not None else default
    except ValueError:
        return default
    return value if 0 <= value < 3600 else default


@dataclass(frozen=True)
class Page:
    records: list[dict]
    next_url: str | None


class AdminApiClient:
    """GETs pages of one shop's Admin API: the token header, the bucket, 429s, 5xx and dropped connections."""

    def __init__(self, config: BackfillConfig, session: requests.Session, sleep: Sleep = time.sleep,
                 max_retries: int = MAX_RETRIES):
        self._config = config
        self._session = session
        self._sleep = sleep
        self._max_retries = max_retries
        self.retries = 0

    def get_page(self, url: str, resource: str) -> Page:
        self._check_same_origin(url)
        response = self._get(url, resource)
        try:
            body = response.json()
        except ValueError:
            raise BackfillError(f"{resource}: Shopify's answer from {url} is not JSON") from None
        records = body.get(resource) if isinstance(body, dict) else None
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise BackfillError(f"{resource}: the answer from {url} has no {resource!r} list")
        next_url = response.links.get("next", {}).get("url")
        if next_url:
            self._check_same_origin(next_url)
        return Page(records, next_url)

    def _check_same_origin(self, url: str) -> None:
        """A next link (or a saved cursor) to any other host would receive the access token: refuse it."""
        parts = urlsplit(url)
        if f"{parts.scheme}://{parts.netloc}" != self._config.base_url or not parts.path.startswith("/admin/api/"):
            raise BackfillError(f"refusing to send the access token to {parts.scheme}://{parts.netloc}{parts.path}: "
                                f"it is not {self._config.base_url}/admin/api/")

    def _get(self, url: str, resource: str) -> requests.Response:
        # Redirects are refused: requests would resend the token header to wherever they point.
        return self._send(resource, lambda headers: self._session.get(url, headers=headers, timeout=TIMEOUT,
                                                                      allow_redirects=False))

    def _send(self, resource: str, request: Callable[[dict[str, str]], requests.Response]) -> requests.Response:
        """`request(headers)` until Shopify answers 200: 429s waited out, 5xx and dropped connections backed off,
        any other status a BackfillError saying what to fix."""
        failures = throttled = 0
        headers = {"X-Shopify-Access-Token": self._config.token.reveal(), "Accept": "application/json"}
        while True:
            try:
                response = request(headers)
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
                # ChunkedEncodingError: the connection broke while the body was arriving (IncompleteRead)
                failures = self._back_off(failures, f"{resource}: cannot reach {self._config.base_url} "
                                                    f"({type(exc).__name__})")
                continue
            pause = bucket_pause(response.headers.get("X-Shopify-Shop-Api-Call-Limit"))
            if response.status_code == 429:
                throttled += 1
                if throttled > MAX_THROTTLED:
                    raise BackfillError(f"{resource}: Shopify kept answering 429 (too many requests) "
                                        f"{MAX_THROTTLED} times in a row", 429)
                self.retries += 1
                self._sleep(retry_after_seconds(response.headers.get("Retry-After")))
                continue
            if response.status_code >= 500:
                failures = self._back_off(failures, f"{resource}: Shopify answered {response.status_code}",
                                          response.status_code)
                continue
            if response.status_code != 200:
                raise BackfillError(_refusal(response, resource, self._config), response.status_code)
            if pause:
                self._sleep(pause)
            return response

    def _back_off(self, failures: int, problem: str, status: int | None = None) -> int:
        if failures >= self._max_retries:
            raise BackfillError(f"{problem}; gave up after {self._max_retries} retries (the state file keeps the "
                                f"progress: run the same command again to resume)", status)
        self.retries += 1
        self._sleep(min(BACKOFF_CAP, BACKOFF_SECONDS * 2 ** failures))
        return failures + 1


def _refusal(response: requests.Response, resource: str, config: BackfillConfig) -> str:
    """A status retrying cannot fix, explained with what to check."""
    status, shop = response.status_code, config.shop
    if status == 401:
        return (f"Shopify refused the access token (401 Unauthorized) for {shop}: the token must be the Admin API "
                f"access token of an app installed on this shop")
    if status == 403:
        scope = {"products": "read_products", LEVELS: "read_inventory"}.get(
            resource, "read_orders (and read_all_orders for orders older than 60 days)")
        return f"the access token may not read {resource} on {shop} (403 Forbidden): the app needs the {scope} scope"
    if status == 404:
        return (f"{resource} not found (404) at {config.base_url}/admin/api/{config.api_version}/: check the shop "
                f"domain ({shop}) and the API version ({config.api_version})")
    if 300 <= status < 400:
        return (f"Shopify redirected {resource} to {response.headers.get('Location')!r} ({status}): use the shop's "
                f"myshopify.com domain")
    detail = response.text[:200].strip()
    return f"{resource}: Shopify answered {status}" + (f": {detail}" if detail else "")


# --- records → changes (values in, values out) -----------------------------------------------

ORDERS_TOPIC, PRODUCTS_TOPIC, LEVELS_TOPIC = "backfill/orders", "backfill/products", "backfill/inventory_levels"


def record_version(updated_at: Any) -> str:
    """A record's `updated_at` as it names the record's version in a webhook id, the same instant written once:
    REST gives it in the shop's offset ('2025-03-01T05:00:00-05:00'), GraphQL in UTC ('2025-03-01T10:00:00Z'), so
    the two backfills of one record store it once. '' when absent; an unreadable value is kept as it came."""
    if not isinstance(updated_at, str) or not updated_at:
        return ""
    try:
        return parse_timestamp(updated_at, "updated_at").isoformat().replace("+00:00", "Z")
    except InvalidEvent:
        return updated_at


def backfill_webhook_id(resource: str, record: dict) -> str:
    """Deterministic per record version and per what the stores keep of it: the same record stores once, a record
    updated since is applied again, and so is one that earlier code, or the other Admin API, read less of (a product
    hidden, `:hidden-<reason>`, or an order with a gift card's line, `:gift-card`, since migration 12; a gift card
    only GraphQL's `isGiftCard` tells; a product's merchant picks, `:picks-<digest>`, which only GraphQL reads): a
    backfill run again then hides what the rule hides, takes the gift card's line off training and stores the picks
    as they are now, where the same id would have been a duplicate delivery and applied nothing. (A product whose
    picks were all removed reads as one with none, whose id an earlier run may have stored: its picks go with its
    next products/update that carries metafields, or its next change.)"""
    record_id = shopify_id(record.get("id"), "id")
    version = record_version(record.get("updated_at"))
    read = ""
    if resource == "products":
        reason = hidden_reason(record)
        read = f":hidden-{reason}" if reason else ""
        picks = merchant_picks(record)
        if picks:  # the merchant's picks (GraphQL reads them), by their digest: picks changed since are applied again
            read += ":picks-" + hashlib.sha256(picks.encoded().encode()).hexdigest()[:12]
    elif resource == "orders" and has_gift_card_line(record):
        read = ":gift-card"
    return f"backfill:{resource}:{record_id}" + (f":{version}" if version else "") + read


def order_changes(shop: str, order: dict, webhook_id: str) -> ChangeSet:
    """An order's purchases as orders/create stores them, plus its refunds as refunds/create would."""
    ctx = TopicContext(shop, ORDERS_TOPIC, webhook_id)
    changes = order_created(ctx, order)
    refunds = order.get("refunds") or []
    if not isinstance(refunds, list) or not all(isinstance(r, dict) for r in refunds):
        raise MalformedPayload("refunds must be a list of objects")
    lines = tuple(line for refund in refunds
                  for line in refund_created(ctx, {"order_id": order.get("id"), **refund}).refunds)
    return ChangeSet(events=changes.events, void_order_ids=changes.void_order_ids, refunds=lines,
                     gift_card_product_ids=changes.gift_card_product_ids)


def product_changes(shop: str, product: dict, webhook_id: str) -> ChangeSet:
    return product_upserted(TopicContext(shop, PRODUCTS_TOPIC, webhook_id), product)


def level_webhook_id(level: dict) -> str:
    """A level has no id of its own: its item and location name it, its `updated_at` the version."""
    item = shopify_id(level.get("inventory_item_id"), "inventory_item_id")
    location = shopify_id(level.get("location_id"), "location_id")
    version = record_version(level.get("updated_at"))
    return f"backfill:{LEVELS}:{item}:{location}" + (f":{version}" if version else "")


def level_changes(shop: str, level: dict, webhook_id: str) -> ChangeSet:
    """The level as inventory_levels/update stores it, marked as read with every other location's of its item."""
    changes = inventory_level_updated(TopicContext(shop, LEVELS_TOPIC, webhook_id), level)
    return dataclasses.replace(changes, inventory_levels=tuple(
        dataclasses.replace(stored, all_locations=True) for stored in changes.inventory_levels))


def inventory_item_ids(products: list[dict]) -> list[str]:
    """The inventory items of a page of products' variants, each once, in the page's order (malformed ids are left
    to the products' own translation to report)."""
    items: dict[str, None] = {}
    for product in products:
        variants = product.get("variants")
        for variant in variants if isinstance(variants, list) else ():
            try:
                item = shopify_id(variant.get("inventory_item_id"), "inventory_item_id", required=False) \
                    if isinstance(variant, dict) else None
            except MalformedPayload:
                continue
            if item is not None:
                items[item] = None
    return list(items)


_TRANSLATE = {"orders": (ORDERS_TOPIC, order_changes), "products": (PRODUCTS_TOPIC, product_changes)}


# --- the run ----------------------------------------------------------------------------------

@dataclass
class BackfillTotals:
    """What this backfill stored, summed across resumed runs."""

    products: int = 0  # catalog rows stored (new to the backfill)
    inventory_levels: int = 0  # stock levels (an item at a location) stored (new to the backfill)
    orders: int = 0  # orders stored (new to the backfill; one already received by webhook counts, its events not)
    events: int = 0  # purchase events that were new to the store
    duplicates: int = 0  # records (levels too) already stored by an earlier run
    skipped: int = 0  # records Shopify sent that the translators refuse (logged)
    redacted: int = 0  # orders not stored: customers/redact erased them, or their customer
    pages: int = 0  # pages of products, orders and stock levels
    retries: int = 0  # 429 waits, 5xx and dropped connections retried


def _state_key(config: BackfillConfig) -> dict[str, Any]:
    return {"shop": config.shop, "base_url": config.base_url, "api_version": config.api_version,
            "since": config.since.isoformat() if config.since else None, "api": config.api}


def load_state(config: BackfillConfig) -> dict | None:
    """The saved progress of an interrupted backfill with the same options, or None."""
    path = config.state_file
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BackfillError(f"cannot read the state file {path}: {exc}; delete it to start over") from None
    fields = {f.name for f in dataclasses.fields(BackfillTotals)}
    if isinstance(state, dict) and isinstance(state.get("totals"), dict):
        state["totals"].setdefault("redacted", 0)  # written before redactions were skipped: none were
    if (not isinstance(state, dict) or state.get("format") != STATE_FORMAT
            or not isinstance(state.get("cursors"), dict) or not isinstance(state.get("totals"), dict)
            or not set(state["cursors"]) <= set(RESOURCES) or set(state["totals"]) != fields
            or not all(v is None or isinstance(v, str) for v in state["cursors"].values())
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in state["totals"].values())):
        raise BackfillError(f"the state file {path} is not a backfill state file; delete it to start over")
    key = _state_key(config)
    state.setdefault("api", "rest")  # written before the GraphQL backfill: its cursors are REST URLs
    if {name: state.get(name) for name in key} != key:
        saved = ", ".join(f"{name}={state.get(name)!r}" for name in key)
        raise BackfillError(f"the state file {path} belongs to a backfill with {saved}: run it with the same "
                            f"options to resume, or delete the file to start over")
    return state


def save_state(config: BackfillConfig, cursors: dict[str, str | None], totals: BackfillTotals) -> None:
    """Written whole to a temporary file, fsynced and renamed: a crash leaves the old state or the new one."""
    path = config.state_file
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"format": STATE_FORMAT, **_state_key(config), "cursors": cursors, "totals": asdict(totals)}
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(body, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def run_backfill(config: BackfillConfig, store: EventStore, session: requests.Session | None = None,
                 sleep: Sleep = time.sleep, progress: bool | None = None) -> dict[str, Any]:
    """Fetch and store every page not stored yet; returns the summary (totals across resumed runs).

    `progress` None shows a bar on stderr when it is a terminal. Any interruption (an error,
    Ctrl-C) saves the progress first, so the same command resumes where this one stopped.
    """
    from tqdm import tqdm  # a dependency of implicit; loaded only by this command

    state = load_state(config)
    cursors: dict[str, str | None] = dict(state["cursors"]) if state else {}  # absent: not started; None: done
    totals = BackfillTotals(**state["totals"]) if state else BackfillTotals()
    http = session or requests.Session()
    if config.api == "graphql":
        from webhooks.backfill_graphql import GraphQLSource

        source: PageSource = GraphQLSource(config, http, sleep)
    else:
        source = RestSource(config, http, sleep)
    retries_before = totals.retries
    redactions = store.redacted(config.shop)
    try:
        for resource in RESOURCES:
            cursor = cursors.get(resource, source.start(resource))
            bar = tqdm(desc=resource, unit=" records", file=sys.stderr,
                       disable=None if progress is None else not progress)
            try:
                while cursor is not None:
                    try:
                        # A page of products' stock levels are all fetched before the page is stored: an error
                        # while reading them leaves nothing of the page stored, and the resumed run reads it again.
                        batch = source.fetch(resource, cursor)
                        _store_page(config, store, resource, batch.records, totals, bar, redactions)
                        if batch.levels:
                            _store_levels(config, store, batch.levels, totals)
                    except BaseException:
                        # A page is stored whole or not at all (EventStore.apply_many), and counted once stored:
                        # the resumed run fetches this page again.
                        totals.retries = retries_before + source.retries
                        if cursors or totals.products + totals.orders + totals.duplicates + totals.skipped:
                            save_state(config, {**cursors, resource: cursor}, totals)
                        raise
                    totals.pages += batch.requests
                    totals.retries = retries_before + source.retries
                    cursor = cursors[resource] = batch.next_cursor
                    save_state(config, cursors, totals)
            finally:
                bar.close()
    finally:
        if session is None:
            http.close()
    # The merchant backfills their own shop with their own token. An installed one keeps its install's time by
    # Shopify's clock, which an app/uninstalled triggered before now, delivered late, is compared with.
    if not store.is_shop_installed(config.shop):
        store.set_shop_installed(config.shop, True)
    config.state_file.unlink(missing_ok=True)
    return {"shop": config.shop, **asdict(totals), "resumed": state is not None}


@dataclass(frozen=True)
class Batch:
    """One page of records as the REST translators take them, its products' stock levels, how many requests it took
    (pages), and the cursor of the next page (None: that was the last)."""

    records: list[dict]
    levels: list[dict]
    requests: int
    next_cursor: str | None


class PageSource:
    """Pages of products and orders from one Admin API; a cursor is a string saved in the state file."""

    retries: int

    def start(self, resource: str) -> str:
        raise NotImplementedError

    def fetch(self, resource: str, cursor: str) -> Batch:
        raise NotImplementedError


class RestSource(PageSource):
    """The REST Admin API: a cursor is the URL of the page (the first carries the filters, later ones `Link`'s)."""

    def __init__(self, config: BackfillConfig, session: requests.Session, sleep: Sleep):
        self._config = config
        self._client = AdminApiClient(config, session, sleep)

    @property
    def retries(self) -> int:  # type: ignore[override]
        return self._client.retries

    def start(self, resource: str) -> str:
        return first_page_url(self._config, resource)

    def fetch(self, resource: str, cursor: str) -> Batch:
        page = self._client.get_page(cursor, resource)
        levels, level_pages = (_read_levels(self._config, self._client, page.records) if resource == "products"
                               else ([], 0))
        return Batch(page.records, levels, 1 + level_pages, page.next_url)


def _store_page(config: BackfillConfig, store: EventStore, resource: str, records: list[dict],
                totals: BackfillTotals, bar, redactions: Redactions) -> None:
    topic, translate = _TRANSLATE[resource]
    kept = [r for r in records if not redacted_order(r, redactions)] if resource == "orders" else records
    _store_records(config, store, kept, totals, topic, lambda record: backfill_webhook_id(resource, record),
                   translate, resource, lambda record: f"{resource[:-1]} {record.get('id')!r}")
    totals.redacted += len(records) - len(kept)  # counted once the page is stored, as the rest
    bar.update(len(records))


def redacted_order(order: dict, redactions: Redactions) -> bool:
    """Whether customers/redact erased the order: named in its `orders_to_redact`, or one of the customer's created
    at or before their redaction (`Redactions.withholds`, the stores' own rule; an order whose customer Shopify has
    removed since is found by its id alone; one the customer placed after it is new data, stored)."""
    try:
        order_id = shopify_id(order.get("id"), "id", required=False)
        customer = order.get("customer")
        customer_id = shopify_id(customer.get("id"), "customer.id", required=False) \
            if isinstance(customer, dict) else None
        if order_id in redactions.order_ids:
            return True
        return customer_id in redactions.customers and redactions.withholds(order_id, customer_id,
                                                                            order_occurred_at(order))
    except MalformedPayload:
        return False  # the translator reports it and skips it


def _store_records(config: BackfillConfig, store: EventStore, records: list[dict], totals: BackfillTotals, topic: str,
                   webhook_id: Callable[[dict], str], translate: Callable[[str, dict, str], ChangeSet], counter: str,
                   described: Callable[[dict], str]) -> None:
    """A page of records, each one delivery of `topic` as `translate` makes it, in one transaction (on PostgreSQL
    set-wise: `EventStore.apply_many`); each new one counted under `totals.<counter>`, a record that cannot be
    translated logged and skipped."""
    page, skipped = [], 0
    for record in records:
        try:
            record_id = webhook_id(record)
            page.append((Delivery(shop=config.shop, webhook_id=record_id, topic=topic),
                         translate(config.shop, record, record_id)))
        except (MalformedPayload, InvalidEvent) as exc:
            skipped += 1
            log.warning("skipped %s of %s: %s", described(record), config.shop, exc)
    results = store.apply_many(page) if page else []
    totals.skipped += skipped
    for stored in results:
        if stored is None:
            totals.duplicates += 1
        else:
            setattr(totals, counter, getattr(totals, counter) + 1)
            totals.events += stored


def _read_levels(config: BackfillConfig, client: AdminApiClient, products: list[dict]) -> tuple[list[dict], int]:
    """Every location's level of the page's inventory items, each (item, location) once (the last one read, should
    paging repeat one), and how many pages that took."""
    items = inventory_item_ids(products)
    levels: dict[tuple[Any, Any], dict] = {}
    pages = 0
    for start in range(0, len(items), ITEMS_PER_LEVELS_REQUEST):
        url: str | None = levels_url(config, items[start:start + ITEMS_PER_LEVELS_REQUEST])
        while url is not None:
            page = client.get_page(url, LEVELS)
            pages += 1
            for level in page.records:
                levels[(str(level.get("inventory_item_id")), str(level.get("location_id")))] = level
            url = page.next_url
    return list(levels.values()), pages


def _store_levels(config: BackfillConfig, store: EventStore, levels: list[dict], totals: BackfillTotals) -> None:
    """A page of products' stock levels, each one delivery, in one transaction (`_store_records`)."""
    _store_records(config, store, levels, totals, LEVELS_TOPIC, level_webhook_id, level_changes, "inventory_levels",
                   lambda level: f"the stock level of item {level.get('inventory_item_id')!r} at location"
                                 f" {level.get('location_id')!r}")


def run_backfill_command(args: Any, env: Mapping[str, str], store: EventStore, sleep: Sleep = time.sleep) -> int:
    """The CLI's `backfill`: the summary as JSON on stdout; an error on stderr and exit code 2."""
    try:
        options: dict[str, Any] = {"api_version": args.api_version, "base_url": args.base_url or "",
                                   "api": getattr(args, "api", "rest")}
        if args.state:
            options["state_path"] = Path(args.state)
        config = BackfillConfig.from_options(args.shop, env, args.token_env, args.since, **options)
    except (BackfillError, RecommenderError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        summary = run_backfill(config, store, sleep=sleep)
    except (BackfillError, RecommenderError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        kept = f" (the progress is kept in {config.state_file})" if config.state_file.exists() else ""
        print(f"interrupted: run the same command to resume{kept}", file=sys.stderr)
        return 130
    print(json.dumps(summary, indent=2))
    return 0
