"""A deterministic, realistic demo store, emitted as signed Shopify webhooks.

The structure is planted so the model has something true to find:
- six categories, each with its own price range; popularity inside a category
  follows a power law (a few best sellers, a long tail);
- every customer has one or two favourite categories and shops there 85% of the time;
- each visit is a funnel: views → cart → order (views are history rows, since
  storefront views never arrive by webhook);
- products come in complementary pairs across categories (beans ↔ grinder,
  shoes ↔ socks): an order holding one often holds the other.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from webhooks.verification import sign_webhook_body

CATEGORIES: dict[str, tuple[tuple[str, ...], tuple[float, float], str]] = {
    # category: (product nouns, price range, vendor)
    "Coffee": (("Espresso Beans", "Filter Roast", "Decaf Beans", "Cold Brew Pack", "Single Origin"), (9, 24), "Roastery Co"),
    "Brewing": (("Burr Grinder", "Pour-Over Kit", "Moka Pot", "Milk Frother", "Scale"), (25, 160), "Brew Lab"),
    "Running": (("Trail Shoes", "Road Shoes", "Racing Flats", "Running Jacket", "Running Shorts"), (40, 180), "Stride"),
    "Socks": (("Running Socks", "Merino Socks", "Compression Socks", "Ankle Socks", "Hiking Socks"), (8, 25), "Stride"),
    "Yoga": (("Yoga Mat", "Cork Block", "Yoga Strap", "Meditation Cushion", "Yoga Towel"), (15, 120), "Calm Studio"),
    "Tea": (("Green Tea", "Earl Grey", "Chai Blend", "Rooibos", "Matcha"), (6, 30), "Leaf & Co"),
}
ADJECTIVES = ("Classic", "Organic", "Everyday", "Premium", "Limited")
# Complementary categories: a product's partner lies in the paired category.
PAIRED = {"Coffee": "Brewing", "Brewing": "Coffee", "Running": "Socks", "Socks": "Running", "Yoga": "Tea", "Tea": "Yoga"}


@dataclass(frozen=True)
class DemoConfig:
    shop: str = "demo-store.myshopify.com"
    customers: int = 400
    visits_per_customer: float = 5.0  # mean of a Poisson
    days: int = 60
    seed: int = 7
    now: datetime = field(default_factory=lambda: datetime.now(timezone.utc).replace(hour=0, minute=0, second=0,
                                                                                       microsecond=0))


@dataclass(frozen=True)
class DemoProduct:
    product_id: str
    variant_id: str
    title: str
    category: str
    price: float
    partner_id: str = ""


@dataclass(frozen=True)
class DemoCustomer:
    customer_id: str
    favourites: tuple[str, ...]


@dataclass(frozen=True)
class WebhookRequest:
    topic: str
    body: bytes
    headers: dict[str, str]


@dataclass
class DemoStore:
    """The generated store: ground truth, history rows (views) and webhook bodies."""

    config: DemoConfig
    products: list[DemoProduct]
    customers: list[DemoCustomer]
    history_rows: list[dict[str, str]]  # customer_id, product_id, kind, occurred_at, quantity
    webhooks: list[tuple[str, dict, datetime]]  # topic, payload, when

    def category_of(self, product_id: str) -> str:
        return next(p.category for p in self.products if p.product_id == product_id)

    def signed_requests(self, secret: str) -> list[WebhookRequest]:
        """Each webhook as Shopify would deliver it, signed with `secret`; ids are deterministic."""
        rng = random.Random(self.config.seed * 1_000_003)
        requests = []
        for topic, payload, when in self.webhooks:
            body = json.dumps(payload, separators=(",", ":")).encode()
            headers = {
                "Content-Type": "application/json",
                "X-Shopify-Topic": topic,
                "X-Shopify-Shop-Domain": self.config.shop,
                "X-Shopify-API-Version": "2026-04",
                "X-Shopify-Webhook-Id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "X-Shopify-Event-Id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "X-Shopify-Triggered-At": when.isoformat(),
                "X-Shopify-Hmac-Sha256": sign_webhook_body(body, secret),
            }
            requests.append(WebhookRequest(topic, body, headers))
        return requests


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def _catalog(rng: random.Random, start: datetime) -> list[DemoProduct]:
    products = []
    for c, (category, (nouns, (low, high), _vendor)) in enumerate(CATEGORIES.items()):
        for n, noun in enumerate(nouns):
            for a, adjective in enumerate(ADJECTIVES):
                index = c * 100 + n * 10 + a
                products.append(DemoProduct(
                    product_id=str(8_000_000_000_000 + index), variant_id=str(45_000_000_000_000 + index),
                    title=f"{adjective} {noun}", category=category, price=round(rng.uniform(low, high), 2),
                ))
    by_category: dict[str, list[DemoProduct]] = {}
    for p in products:
        by_category.setdefault(p.category, []).append(p)
    paired = []
    for p in products:
        own = by_category[p.category]
        partner = by_category[PAIRED[p.category]][own.index(p)]  # same position in the paired category
        paired.append(DemoProduct(p.product_id, p.variant_id, p.title, p.category, p.price, partner.product_id))
    return paired


def _product_payload(p: DemoProduct, created: datetime) -> dict:
    handle = p.title.lower().replace(" ", "-").replace("&", "and")
    return {
        "id": int(p.product_id), "title": p.title, "handle": handle, "status": "active",
        "product_type": p.category, "vendor": CATEGORIES[p.category][2],
        "created_at": _iso(created), "updated_at": _iso(created), "published_at": _iso(created),
        "variants": [{
            "id": int(p.variant_id), "product_id": int(p.product_id), "title": "Default Title",
            "price": f"{p.price:.2f}", "inventory_policy": "deny", "inventory_quantity": 100,
            "inventory_item_id": int(p.variant_id) + 1_000_000, "inventory_management": "shopify",
        }],
        "image": {"src": f"https://cdn.shopify.com/s/files/demo/{handle}.jpg"},
        "images": [{"src": f"https://cdn.shopify.com/s/files/demo/{handle}.jpg"}],
    }


def _line(p: DemoProduct, line_id: int, quantity: int = 1) -> dict:
    return {"id": line_id, "product_id": int(p.product_id), "variant_id": int(p.variant_id), "quantity": quantity,
            "price": f"{p.price:.2f}", "title": p.title}


def generate_demo_store(config: DemoConfig = DemoConfig()) -> DemoStore:
    rng = random.Random(config.seed)
    start = config.now - timedelta(days=config.days)
    products = _catalog(rng, start)
    by_id = {p.product_id: p for p in products}
    by_category: dict[str, list[DemoProduct]] = {}
    for p in products:
        by_category.setdefault(p.category, []).append(p)
    # Power-law popularity inside each category: rank r gets weight 1 / (r + 1)^1.1.
    popularity = {}
    for items in by_category.values():
        order = items[:]
        rng.shuffle(order)
        for rank, p in enumerate(order):
            popularity[p.product_id] = 1.0 / (rank + 1) ** 1.1
    categories = list(CATEGORIES)
    customers = [
        DemoCustomer(str(7_000_000_000_000 + k), tuple(rng.sample(categories, rng.choice((1, 2)))))
        for k in range(config.customers)
    ]
    webhooks: list[tuple[str, dict, datetime]] = [
        ("products/create", _product_payload(p, start), start) for p in products
    ]
    history: list[dict[str, str]] = []
    order_id, line_id, cart_id = 5_000_000_000_000, 14_000_000_000_000, 0

    def pick(category: str, k: int) -> list[DemoProduct]:
        items = by_category[category]
        weights = [popularity[p.product_id] for p in items]
        chosen: list[DemoProduct] = []
        while len(chosen) < k:
            p = rng.choices(items, weights)[0]
            if p not in chosen:
                chosen.append(p)
        return chosen

    for customer in customers:
        visits = max(1, _poisson(rng, config.visits_per_customer))
        for _ in range(visits):
            when = start + timedelta(seconds=rng.uniform(3600, config.days * 86400 - 3600))
            category = rng.choice(customer.favourites) if rng.random() < 0.85 else rng.choice(categories)
            viewed = pick(category, rng.randint(3, 6))
            for i, p in enumerate(viewed):
                history.append({"customer_id": customer.customer_id, "product_id": p.product_id, "kind": "view",
                                "occurred_at": _iso(when + timedelta(seconds=30 * i)), "quantity": "1"})
            if rng.random() > 0.55:
                continue
            carted = viewed[: rng.choice((1, 1, 2))]
            if rng.random() < 0.6:  # a complementary product joins the cart
                carted.append(by_id[carted[0].partner_id])
            cart_id += 1
            token = f"demo{config.seed:02d}{cart_id:08d}c0ffee"
            cart_time = when + timedelta(minutes=5)
            for step in range(1, len(carted) + 1):  # carts/create then carts/update as items are added
                line_id += 1
                cart = {"id": token, "token": token, "created_at": _iso(cart_time),
                        "updated_at": _iso(cart_time + timedelta(minutes=step)),
                        "line_items": [_line(p, line_id + j) for j, p in enumerate(carted[:step])]}
                webhooks.append(("carts/create" if step == 1 else "carts/update", cart,
                                 cart_time + timedelta(minutes=step)))
            if rng.random() > 0.6:
                continue
            order_id += 1
            placed = cart_time + timedelta(minutes=15)
            lines = []
            for p in carted:
                line_id += 1
                lines.append(_line(p, line_id, quantity=rng.choice((1, 1, 1, 2))))
            order = {
                "id": order_id, "created_at": _iso(placed), "processed_at": _iso(placed), "cart_token": token,
                "currency": "USD", "financial_status": "paid", "test": False, "line_items": lines,
                "customer": {"id": int(customer.customer_id), "email": f"shopper{customer.customer_id[-4:]}@example.com"},
                "total_price": f"{sum(float(line['price']) * line['quantity'] for line in lines):.2f}",
            }
            webhooks.append(("orders/create", order, placed))
    webhooks.sort(key=lambda item: item[2])
    history.sort(key=lambda row: row["occurred_at"])
    return DemoStore(config, products, customers, history, webhooks)


def _poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method; fine for small means."""
    limit, k, product = pow(2.718281828459045, -mean), 0, 1.0
    while True:
        product *= rng.random()
        if product <= limit:
            return k
        k += 1
