"""Synthetic shops for the performance benchmark: artifacts, histories, catalogs, event logs, webhooks.

Everything is deterministic from a seed and built through the product's own types
(`ModelArtifact.build`, `LocalModelStore.publish`, `Event`, `CatalogProduct`), so what is
measured reads exactly what production would read.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlencode

import numpy as np

from recommender.artifact import CoPurchaseLists, ModelArtifact
from recommender.changes import Event
from recommender.events import CatalogProduct, CatalogVariant, EventKind
from recommender.model_store import LocalModelStore, Manifest
from webhooks.verification import sign_webhook_body

SHOP = "bench-shop.myshopify.com"
SECRET = "bench-secret-not-a-real-one"
FACTORS = 64
COPURCHASE_K = 20  # as TrainingConfig.copurchase_k
EVENT_WEIGHTS = {"view": 1.0, "add_to_cart": 4.0, "purchase": 10.0}
PRODUCT_BASE = 8_000_000_000_000  # Shopify-shaped ids: 13 digits (product_id)
CUSTOMER_BASE = 7_000_000_000_000
HISTORY_EVENTS = 20  # events per benchmark shopper, as the issue asks
REQUEST_VARIETY = 2_000  # distinct related products and carts to ask about


_PRODUCT_IDS = np.zeros(0, dtype=np.int64)


def product_id(row: int) -> str:
    """Ascending with the row, with random gaps of 1 to 2 million as a shop's ids have: Shopify numbers
    products across all shops, so one shop's ids are far from consecutive (and compress as real ones do)."""
    global _PRODUCT_IDS
    if row >= len(_PRODUCT_IDS):
        size = max(2 * row + 1, 1 << 16)
        gaps = np.random.default_rng(99).integers(1, 2_000_000, size, dtype=np.int64)
        _PRODUCT_IDS = PRODUCT_BASE + np.cumsum(gaps)
    return str(int(_PRODUCT_IDS[row]))


def customer_id(k: int) -> str:
    return str(CUSTOMER_BASE + k)


def build_artifact(n_items: int, seed: int = 0, factors: int = FACTORS,
                   item_factors: np.ndarray | None = None) -> ModelArtifact:
    """A model of `n_items` with random float factors (or `item_factors`) and a realistic sparse co-purchase table.

    Factors: N(0, 0.1²) float32 [n_items, factors]: of nearly equal norms, unlike a trained model's
    (`trained_factors`). Popularity: whole numbers with a Pareto(1.2) tail (training sums event weights 1,
    4 and 10). Support: 0..49 shoppers. Co-purchase: a geometric number of neighbours per item (mean ≈ 2.3,
    capped at K), scores in [0, 1].
    """
    rng = np.random.default_rng(seed)
    random_factors = rng.standard_normal((n_items, factors), dtype=np.float32) * np.float32(0.1)
    item_factors = random_factors if item_factors is None else np.asarray(item_factors, dtype=np.float32)
    popularity = np.floor(rng.pareto(1.2, n_items) * 10).astype(np.float32)
    support = rng.integers(0, 50, n_items, dtype=np.int32)
    counts = np.minimum(rng.geometric(0.3, n_items) - 1, COPURCHASE_K)
    nnz = int(counts.sum())
    together = CoPurchaseLists.from_counts(counts, rng.integers(0, n_items, nnz, dtype=np.int32),
                                           rng.random(nnz, dtype=np.float32), (counts * 3).astype(np.int32))
    metadata = {
        "version": f"bench-{n_items}-{seed}",
        "shop": SHOP,
        "algorithm": "als",
        "hyperparameters": {"factors": factors, "regularization": 0.05, "alpha": 2.0, "iterations": 15, "seed": seed},
        "event_weights": EVENT_WEIGHTS,
        "counts": {"items": n_items, "synthetic": True},
    }
    return ModelArtifact.build([product_id(i) for i in range(n_items)], item_factors, popularity, 0.05, 2.0,
                               metadata, item_support=support, copurchase=together)


def item_popularity(n_items: int) -> np.ndarray:
    """The probability of drawing item r in the benchmark's event logs: ∝ 1/(r + 10)^0.9, summing to 1."""
    weights = 1.0 / (np.arange(n_items) + 10.0) ** 0.9
    return weights / weights.sum()


def trained_factors(n_items: int, factors: int = FACTORS, seed: int = 4) -> np.ndarray:
    """Item factors as our training makes them (`fit_item_factors`, the shipped regularization, alpha and
    iterations) from 20 lines per item drawn as `event_log` draws them (item r ∝ 1/(r + 10)^0.9) by 2 × n_items
    users: popular items get long vectors and rare ones short, as in a trained shop's model."""
    import scipy.sparse as sp

    from recommender.settings import TrainingConfig
    from recommender.training import fit_item_factors

    rng = np.random.default_rng(seed)
    lines = 20 * n_items
    items = rng.choice(n_items, size=lines, p=item_popularity(n_items))
    users = rng.integers(0, 2 * n_items, lines)
    matrix = sp.csr_matrix((np.ones(lines, dtype=np.float32), (users, items)), shape=(2 * n_items, n_items))
    matrix.sum_duplicates()
    return fit_item_factors(matrix, TrainingConfig(factors=factors)).astype(np.float32)


def publish_artifact(models_dir: Path, artifact: ModelArtifact) -> Manifest:
    return LocalModelStore(models_dir).publish(SHOP, artifact)


@dataclass(frozen=True)
class Shoppers:
    """Benchmark shoppers: each has HISTORY_EVENTS recent events over known products."""

    customer_ids: list[str]
    events: list[Event]
    history_rows: dict[str, list[tuple[int, str]]]  # customer → [(item row, kind)] as stored


def shoppers(n_items: int, n_customers: int, seed: int = 1, now: datetime | None = None) -> Shoppers:
    """Histories of views, carts and purchases over random items, all within the last three days."""
    rng = np.random.default_rng(seed)
    now = now or datetime.now(timezone.utc)
    kinds = [EventKind.VIEW] * 14 + [EventKind.ADD_TO_CART] * 4 + [EventKind.PURCHASE] * 2
    ids, events, rows_of = [], [], {}
    for k in range(n_customers):
        cid = customer_id(k)
        rows = rng.choice(n_items, size=HISTORY_EVENTS, replace=n_items < HISTORY_EVENTS * 4)
        ids.append(cid)
        rows_of[cid] = []
        for j, row in enumerate(rows.tolist()):
            kind = kinds[j % len(kinds)]
            events.append(Event(kind=kind, shop=SHOP, product_id=product_id(row), customer_id=cid,
                                occurred_at=now - timedelta(minutes=int(rng.integers(1, 3 * 24 * 60))),
                                order_id=f"bench-order-{k}" if kind is EventKind.PURCHASE else None,
                                source_topic="bench"))
            rows_of[cid].append((row, kind.value))
    return Shoppers(ids, events, rows_of)


def catalog(n_items: int, now: datetime | None = None) -> tuple[CatalogProduct, ...]:
    """Every model item as an active, published, in-stock product with one tracked variant."""
    now = now or datetime.now(timezone.utc)
    return tuple(
        CatalogProduct(SHOP, product_id(i), f"Product {i}", f"product-{i}", "active", now, 10.0 + i % 90,
                       f"https://cdn.shopify.com/s/files/bench/product-{i}.jpg", f"Type {i % 12}", f"Vendor {i % 7}",
                       now, (CatalogVariant(str(45_000_000_000_000 + i), str(46_000_000_000_000 + i), 5, True, False),))
        for i in range(n_items)
    )


def event_log(n_users: int, n_items: int, n_events: int, seed: int = 2,
              now: datetime | None = None) -> list[Event]:
    """A shop's history for training: power-law item popularity, views → carts → orders.

    Item r is drawn with probability ∝ 1/(r + 10)^0.9; each user's events are 70% views,
    20% carts, 10% purchases; a user's purchases form orders of up to three lines.
    """
    rng = np.random.default_rng(seed)
    now = now or datetime.now(timezone.utc)
    items = rng.choice(n_items, size=n_events, p=item_popularity(n_items))
    users = rng.integers(0, n_users, n_events)
    kinds = rng.choice(3, size=n_events, p=[0.7, 0.2, 0.1])
    ages = rng.integers(0, 60 * 86400, n_events)
    by_kind = (EventKind.VIEW, EventKind.ADD_TO_CART, EventKind.PURCHASE)
    lines: dict[int, int] = {}
    events = []
    for item, user, kind, age in zip(items.tolist(), users.tolist(), kinds.tolist(), ages.tolist()):
        order = None
        if kind == 2:
            line = lines.get(user, 0)
            lines[user] = line + 1
            order = f"o{user}-{line // 3}"
        events.append(Event(kind=by_kind[kind], shop=SHOP, product_id=product_id(item), customer_id=customer_id(user),
                            occurred_at=now - timedelta(seconds=age), order_id=order, source_topic="bench"))
    return events


def order_payload(order_id: int, customer: str, product_rows: list[int]) -> dict:
    """An orders/create body in Shopify's shape, one line per product."""
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return {
        "id": order_id, "created_at": stamp, "processed_at": stamp, "currency": "USD", "financial_status": "paid",
        "cart_token": None, "customer": {"id": int(customer)}, "test": False,
        "line_items": [{"id": order_id * 100 + j, "product_id": int(product_id(row)), "variant_id": 45_000_000_000_000 + row,
                        "quantity": 1, "price": "19.00", "title": f"Product {row}"} for j, row in enumerate(product_rows)],
    }


@dataclass(frozen=True)
class SignedDelivery:
    body: bytes
    headers: dict[str, str]


def signed_orders(count: int, n_items: int, first_order_id: int, seed: int = 3,
                  secret: str = SECRET, shop: str = SHOP) -> list[SignedDelivery]:
    """`count` distinct orders/create deliveries of three lines each, signed as Shopify signs them."""
    rng = np.random.default_rng(seed)
    deliveries = []
    for k in range(count):
        body = json.dumps(order_payload(first_order_id + k, customer_id(int(rng.integers(0, 10_000))),
                                        rng.integers(0, n_items, 3).tolist()), separators=(",", ":")).encode()
        deliveries.append(SignedDelivery(body, {
            "Content-Type": "application/json",
            "X-Shopify-Topic": "orders/create",
            "X-Shopify-Shop-Domain": shop,
            "X-Shopify-Webhook-Id": str(uuid.UUID(int=int(rng.integers(0, 2**63)) << 64 | k, version=4)),
            "X-Shopify-Event-Id": str(uuid.UUID(int=int(rng.integers(0, 2**63)) << 64 | k, version=4)),
            "X-Shopify-API-Version": "2026-04",
            "X-Shopify-Hmac-Sha256": sign_webhook_body(body, secret),
        }))
    return deliveries


# The floor: the same framework serving a function that imports numpy and returns a constant.
FLOOR_SOURCE = '''"""Benchmark floor: functions-framework serving a constant; imports numpy like the real one."""
import functions_framework
import numpy as np

ANSWER = {"recommendations": [], "numpy": np.__version__}


@functions_framework.http
def floor(request):
    request.get_data()  # read the body as the webhook handler does
    return ANSWER
'''


def write_floor_source(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "floor_main.py"
    path.write_text(FLOOR_SOURCE)
    return path


@dataclass(frozen=True)
class ShopFiles:
    """A benchmark deployment on disk: a published model, an event store holding shoppers, request inputs."""

    n_items: int
    models_dir: Path
    events_path: Path
    customers: list[str]
    related_products: list[str]  # distinct items with support ≥ 2: `related` answers from the model
    carts: list[list[str]]  # distinct carts of three, one with co-purchases: `complementary` answers
    history_rows: dict[str, list[tuple[int, str]]]
    catalog_rows: int

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "SHOPIFY_API_SECRET": SECRET,
            "EVENT_STORE_URL": f"sqlite:///{self.events_path}",
            "MODEL_STORE_URL": f"file://{self.models_dir}",
            **extra,
        }

    def storefront_query(self, intent: str, i: int, **overrides: str) -> str:
        """The i-th request as the storefront sends it: through Shopify's app proxy, signed, customer logged in.

        Shopify forwards `shop`, `logged_in_customer_id`, `path_prefix` and `timestamp` and signs the whole
        query; `/recommend` accepts a customer id only that way. Signed at call time (the timestamp must be fresh).
        `overrides` replace query parameters (e.g. another product_id).
        """
        from webhooks.app_proxy import app_proxy_signature

        params = {**self.query(intent, i), **overrides}
        customer = params.pop("customer_id", None)
        params.update({"logged_in_customer_id": customer or "", "path_prefix": "/apps/recommendations",
                       "timestamp": str(int(time.time()))})
        params["signature"] = app_proxy_signature(params.items(), SECRET)
        return urlencode(params)

    def query(self, intent: str, i: int) -> dict[str, str]:
        """The query string of the i-th benchmark request for `intent`."""
        params = {"shop": SHOP, "intent": intent, "n": "10"}
        if intent == "personalized":
            params["customer_id"] = self.customers[i % len(self.customers)]
        elif intent == "related":
            params["product_id"] = self.related_products[i % len(self.related_products)]
        elif intent == "complementary":
            params["product_ids"] = ",".join(self.carts[i % len(self.carts)])
        return params


def prepare_shop(folder: Path, artifact: ModelArtifact, models_dir: Path, n_customers: int = 200,
                 with_catalog: bool = False, seed: int = 1) -> ShopFiles:
    """An event store in `folder` with `n_customers` benchmark shoppers (and the whole catalog if asked).

    `models_dir` must already hold `artifact` published for SHOP.
    """
    from recommender.changes import ChangeSet, Delivery
    from recommender.store import SQLiteEventStore

    n_items = len(artifact.item_ids)
    folder.mkdir(parents=True, exist_ok=True)
    events_path = folder / "events.sqlite3"
    people = shoppers(n_items, n_customers, seed)
    store = SQLiteEventStore(events_path)
    try:
        store.add_events(people.events)
        if hasattr(store, "set_shop_installed"):  # the app is installed: /recommend serves installed shops only
            store.set_shop_installed(SHOP, True)
        if with_catalog:
            store.apply(Delivery(SHOP, f"bench-catalog-{uuid.uuid4()}", "products/create"),
                        ChangeSet(upsert_products=catalog(n_items)))
    finally:
        store.close()
    rng = np.random.default_rng(seed + 100)
    supported = np.flatnonzero(artifact.item_support >= 2)
    bought = np.flatnonzero(artifact.copurchase.orders > 0)
    # Distinct requests: answers that depend on no shopper are cached per request, and the benchmark
    # measures computing them (a repeated request is timed on its own as `cached_answer`).
    related = [product_id(int(r)) for r in rng.choice(supported, size=min(REQUEST_VARIETY, len(supported)),
                                                        replace=False)]
    carts = [[product_id(int(rng.choice(bought))), *(product_id(int(r)) for r in rng.integers(0, n_items, 2))]
             for _ in range(REQUEST_VARIETY)]
    return ShopFiles(n_items, models_dir, events_path, people.customer_ids, related, carts, people.history_rows,
                     n_items if with_catalog else 0)
