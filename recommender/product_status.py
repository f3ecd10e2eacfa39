"""Why a product is or is not recommended: what the catalog, the model and the recent events say of it.

`product_status` answers one merchant's question about one product, as `python -m recommender product` prints it:

- the catalog's verdict, the `sellable` flag the store keeps (`recommender.store.NOT_FOR_SALE`), which every answer's
  filter reads: a product not for sale is deleted, not `active`, unpublished, sold out (it has variants and none can
  be bought) or hidden (`CatalogProduct.hidden`: a gift card, tagged HIDE_TAG, or free). The reasons are read from
  the row and its variants; a product without a row is given the benefit of the doubt, as answers give it. Its
  `backordered` flag says whether it is for sale with nothing on hand (sold past zero only), which complementary
  answers leave out (`recommender.store.NOTHING_ON_HAND`), though every other answer may show it;
- the shop's latest published model: a product it does not know (no event of it weighed anything when it was
  trained) is in no personalized, related, complementary or best-seller answer until a training sees it viewed,
  carted or bought. Trending, recently viewed and buy it again read the events themselves, and may show it sooner;
- the product's events of the last EVENTS_WINDOW_DAYS days, what trending reads.

`shown` says whether the model's answers can show it: the shop is installed, the catalog does not rule it out, and
the model knows it. `reasons` gives each reason they do not, one an entry ([] when nothing stops them).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from recommender.errors import InvalidParameter
from recommender.events import HIDE_TAG, CatalogProduct, EventKind
from recommender.intents import parse_product_id
from recommender.model_store import ModelStore, check_shop_domain
from recommender.store import EventStore

EVENTS_WINDOW_DAYS = 30

NOT_INSTALLED = "the shop has not installed the app, or has uninstalled it: /recommend answers nothing for it"
DELETED = "deleted in Shopify (products/delete)"
UNPUBLISHED = "unpublished: published_at is null"
SOLD_OUT = ("sold out: none of its variants can be bought (each is tracked at 0 or below, and none continues"
            " selling when out of stock)")
HIDDEN = {
    "gift_card": "a gift card: no answer shows gift cards",
    "tag": f"tagged {HIDE_TAG}: removing the tag shows it again",
    "free": "free: every variant is priced 0",
}
GIFT_CARD_NOT_SYNCED = ("a gift card, as an order's line said: no answer shows gift cards (the catalog has not synced"
                        " its own row yet)")
STALE_FLAG = ("not for sale by the store's last stock reading, though its row and variants show no reason now: the"
              " flag is recomputed by the next delivery that changes the product, its variants or their stock")
NO_MODEL = ("no model is published for the shop yet: only trending answers, from recent events, until"
            " `python -m recommender train` publishes one")


def product_status(store: EventStore, model_store: ModelStore, shop: str, product_id: str, now: datetime) -> dict:
    """What stops answers from showing `product_id` in `shop` at `now` (an aware datetime): a JSON-serialisable dict
    of `shown`, `reasons`, `installed`, `catalog`, `model` and `events_last_30_days` (module docstring)."""
    shop = check_shop_domain(shop)
    if not product_id:  # /recommend's parser reads an empty id as none named; here one must be
        raise InvalidParameter("product_id", "product_id is missing")
    product_id = parse_product_id(product_id)
    installed = store.is_shop_installed(shop)
    catalog, catalog_reasons = _catalog(store, shop, product_id)
    model, model_reason = _model(model_store, shop, product_id)
    reasons = ([] if installed else [NOT_INSTALLED]) + catalog_reasons + ([model_reason] if model_reason else [])
    return {
        "shop": shop,
        "product_id": product_id,
        "shown": not reasons,
        "reasons": reasons,
        "installed": installed,
        "catalog": catalog,
        "model": model,
        f"events_last_{EVENTS_WINDOW_DAYS}_days": _recent_events(store, shop, product_id, now),
    }


def _catalog(store: EventStore, shop: str, product_id: str) -> tuple[dict | None, list[str]]:
    """The product's catalog fields and the reasons it is not for sale: (None, []) without a row."""
    cards = store.product_cards(shop, [product_id])
    row = store.products(shop, [product_id]).get(product_id)
    card = cards.get(product_id)
    if row is None or card is None:
        if product_id in store.deleted_product_ids(shop):
            return {"deleted": True}, [DELETED]
        return None, []
    if _from_an_order(row):  # the row an order's gift card line made: nothing of it is the catalog's yet
        return {"synced": False, "hidden": row.hidden, "for_sale": card.available}, [GIFT_CARD_NOT_SYNCED]
    fields = {
        "title": row.title,
        "status": row.status,
        "published_at": row.published_at.isoformat() if row.published_at else None,
        "price": row.price,
        "product_type": row.product_type,
        "vendor": row.vendor,
        "hidden": row.hidden,
        "variants": len(row.variants),
        "variants_available": sum(variant.available for variant in row.variants),
        "for_sale": card.available,
        "backordered": product_id in store.catalog_state(shop).backordered,
        "picks": row.picks._asdict() if row.picks else None,  # the merchant's, for its page (Search & Discovery)
    }
    # The flag is what every answer's filter reads: a product it says is for sale is shown, whatever else is said.
    if card.available:
        return fields, []
    return fields, not_for_sale_reasons(row) or [STALE_FLAG]


def _from_an_order(row: CatalogProduct) -> bool:
    """Whether this is the row an order's gift card line made for a product the catalog had not synced (every
    products payload names an update time and its variants; this row has neither)."""
    return row.hidden == "gift_card" and row.updated_at is None and not row.variants and not row.title


def not_for_sale_reasons(row: CatalogProduct) -> list[str]:
    """Each reason a catalog row (not deleted) is not for sale, as NOT_FOR_SALE reads it; [] when none applies."""
    reasons = []
    if row.status != "active":
        reasons.append(f"status is {row.status}, not active")
    if row.published_at is None:
        reasons.append(UNPUBLISHED)
    if not row.available:
        reasons.append(SOLD_OUT)
    if row.hidden is not None:
        reasons.append(HIDDEN.get(row.hidden, f"hidden ({row.hidden})"))
    return reasons


def _model(model_store: ModelStore, shop: str, product_id: str) -> tuple[dict | None, str | None]:
    """What the shop's latest published model knows of the product, and the reason it stops answers, if any."""
    manifest = model_store.latest(shop)
    if manifest is None:
        return None, NO_MODEL
    artifact = model_store.load(manifest)
    row = artifact.item_ids.row(product_id)
    facts = {"version": manifest.version, "trained_at": artifact.metadata.get("trained_at"),
             "items": len(artifact.item_ids), "known": row is not None, "popularity_rank": None, "shoppers": None,
             "bought_with": None}
    if row is None:
        return facts, (f"the model ({manifest.version}) does not know it: none of its events weighed anything when the"
                       " model was trained, so no personalized, related, complementary or best-seller answer shows"
                       " it until a training sees it viewed, carted or bought")
    popularity = artifact.popularity
    mine = popularity[row]
    # As best sellers rank them (ServingModel.popular_rows): most popular first, ties by row.
    facts["popularity_rank"] = int((popularity > mine).sum() + (popularity[:row] == mine).sum()) + 1
    facts["shoppers"] = int(artifact.item_support[row])
    facts["bought_with"] = len(artifact.copurchase.of(row)[0])
    return facts, None


def _recent_events(store: EventStore, shop: str, product_id: str, now: datetime) -> dict[str, float]:
    """The product's events of each kind over the last EVENTS_WINDOW_DAYS days, their weight factors summed (an event
    a refund took a share of counts what is left of it; a voided one, nothing)."""
    totals = dict.fromkeys((kind.value for kind in EventKind), 0.0)
    for bucket in store.activity_since(shop, now - timedelta(days=EVENTS_WINDOW_DAYS), product_id):
        totals[bucket.kind.value] += bucket.mass
    return {kind: round(mass, 3) for kind, mass in totals.items()}
