"""One `/recommend` contract: an intent, a fixed fallback chain, filters, reasons, rich items.

    intent            chain (each step runs only if the previous ones left the list short)
    personalized      personalized → related (to the shopper's history) → trending → popular
    buy_it_again      buy_it_again → personalized → trending → popular
    recently_viewed   recently_viewed → related → trending → popular
    related           merchant's picks → related → same type → trending → popular
    complementary     merchant's picks → complementary → related (to the cart) → trending → popular
    trending          trending → popular

A step that lacks the data to answer says why (`no_history`, `thin_history`, `unknown_product`,
`thin_product_data`, `no_copurchase_data`, `no_recent_activity`, `no_purchases`, `no_views`,
`no_model`, `model_below_baseline`); the first such reason is reported
as `fallback_from`/`fallback_reason`, and every item names the strategy that served it.

The merchant's picks (`merchant_pick`) come first where the merchant chose products for the page in Shopify's Search &
Discovery app (`recommender.events.MerchantPicks`, kept with the catalog snapshot): a product's related picks on its
page, and each cart item's complementary picks, taken in turn (each item's first, then each one's second, ...), for
the cart. They pass the same filters as any item and never count as a fallback: with none, the chain starts at its
model's step, as it did before picks were read.

A model the quality gate published below a baseline (a shop's first, say, where best sellers ranked the
holdout's purchases better) never answers `personalized`, the ranking the gate judged: that step says
`model_below_baseline` and the baseline that won (`popular` for best sellers, or `trending`) follows it,
then the other (BELOW_BASELINE_CHAINS). Its related and complementary answers are the model's as usual.

A control group (CONTROL_PERCENT): that share of the answers of every intent but trending, drawn at random answer by
answer, is answered by best sellers (CONTROL_CHAIN: popular, then trending) with the same filters and exclusions, so
that the attribution report can set what the model's answers earned beside what the baseline's did. The arm is
written into the answer's `recommendation_id` (CONTROL_ID_PREFIX), which the storefront's views and clicks carry
back: nothing is stored per answer, and a theme needs no change.
"""

from __future__ import annotations

import logging
import os
import random
import re
import time
from datetime import datetime, timezone
from typing import Callable, Mapping, NamedTuple

import numpy as np

from recommender.catalog import CARD_PRODUCT_TYPE, CatalogCache, CatalogSnapshot
from recommender.errors import ArtifactError, InvalidParameter, ModelNotReady, ShopNotInstalled
from recommender.events import EventKind, user_key
from recommender.model_store import check_shop_domain
from recommender.serving import ModelHolder, ServingModel
from recommender.store import ARM_CONTROL, ARM_MODEL, CONTROL_ID_PREFIX, EventStore, Interaction
from recommender.trending import TrendingCache

log = logging.getLogger(__name__)

MAX_RESULTS = 50
# How long a trending answer waits for a new instance's first load of the shop's model (a 1M-item model from gs://
# loads well within it) before it answers from the events alone, the load going on for the next answers.
TRENDING_MODEL_WAIT_SECONDS = 2.0
MAX_PRODUCT_IDS = 50
MIN_HISTORY_ITEMS = 2  # distinct known products before fold-in is trusted over "related to what you saw"
MIN_ITEM_SUPPORT = 2  # shoppers who touched a product before its factors are trusted for "related"
SAME_TYPE_BEST_SELLERS = 1_000  # the best sellers `same_type` looks among for the page's type (their cards kept)
MERCHANT_PICK = "merchant_pick"  # the strategy of the merchant's own picks for a page (module docstring)
CHAINS = {
    "personalized": ("personalized", "related", "trending", "popular"),
    "buy_it_again": ("buy_it_again", "personalized", "trending", "popular"),
    "recently_viewed": ("recently_viewed", "related", "trending", "popular"),
    "related": (MERCHANT_PICK, "related", "same_type", "trending", "popular"),
    "complementary": (MERCHANT_PICK, "complementary", "related", "trending", "popular"),
    "trending": ("trending", "popular"),
}


def below_baseline_chain(chain: tuple[str, ...], baseline: str) -> tuple[str, ...]:
    """`chain` for a model published below `baseline` (`popular` or `trending`): personalized, which such a model
    refuses, is followed by that baseline and then the other one, in place of what followed it (for the personalized
    intent, related to the shopper's history: the model's view of the shopper, which the gate found wanting)."""
    if "personalized" not in chain:
        return chain
    other = "trending" if baseline == "popular" else "popular"
    return chain[:chain.index("personalized") + 1] + (baseline, other)


BELOW_BASELINE_CHAINS = {baseline: {intent: below_baseline_chain(chain, baseline) for intent, chain in CHAINS.items()}
                         for baseline in ("popular", "trending")}
SHOPPER_INTENTS = ("personalized", "buy_it_again", "recently_viewed")  # answers that depend on one shopper
CONTROL_CHAIN = ("popular", "trending")  # the control group's answers: best sellers, whatever the intent
# Strategies that score the model's rows and leave out the catalog's blocked rows and the request's excluded ones
# themselves: their candidates need no second look by product id.
MASKED_STRATEGIES = frozenset({"personalized", "related", "complementary", "popular", "same_type"})
REBUY_HALF_LIFE_DAYS = 90.0  # an order this old counts half toward "buy it again"
VIEW_HALF_LIFE_DAYS = 7.0
_DIGITS = re.compile(r"^[0-9]{1,20}$")
_TOKEN = re.compile(r"^[A-Za-z0-9_\-:.]{1,128}$")


def model_answer_id() -> str:
    """A random recommendation id (32 hex digits) not marked as the control group's."""
    while True:
        drawn = os.urandom(16).hex()
        if not drawn.startswith(CONTROL_ID_PREFIX):
            return drawn


def control_answer_id() -> str:
    """A random recommendation id marked as the control group's (CONTROL_ID_PREFIX)."""
    return CONTROL_ID_PREFIX + os.urandom(16 - len(CONTROL_ID_PREFIX) // 2).hex()


class RecommendRequest(NamedTuple):
    """What a storefront asked for, validated; a named tuple (hashable: the answer cache's key)."""

    shop: str
    intent: str = "personalized"
    customer_id: str | None = None
    anonymous_id: str | None = None  # a cart token or other stored anonymous id
    product_id: str | None = None  # the product on the page: `related`'s seed, and never recommended
    product_ids: tuple[str, ...] = ()  # cart items (complementary) or recently viewed, newest first (SHOPPER_INTENTS)
    exclude: tuple[str, ...] = ()
    n: int = 10
    repurchase: bool = False  # keep already-bought items (consumables)
    include_seen: bool = False  # keep items the shopper viewed or carted (personalized excludes them by default)
    product_type: str | None = None
    vendor: str | None = None

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> "RecommendRequest":
        shop = query.get("shop")
        if not shop:
            raise InvalidParameter("shop", "shop is required, e.g. shop=example.myshopify.com")
        intent = query.get("intent") or "personalized"
        if intent not in CHAINS:
            raise InvalidParameter("intent", f"intent must be one of {', '.join(CHAINS)}, got {intent!r}")
        request = cls(
            shop=check_shop_domain(shop.lower()),
            intent=intent,
            customer_id=parse_customer_id(query.get("customer_id")),
            anonymous_id=_token(query.get("anonymous_id"), "anonymous_id"),
            product_id=parse_product_id(query.get("product_id")),
            product_ids=_id_list(query.get("product_ids"), "product_ids"),
            exclude=_id_list(query.get("exclude"), "exclude"),
            n=parse_count(query.get("n")),
            repurchase=_flag(query.get("repurchase"), "repurchase"),
            include_seen=_flag(query.get("include_seen"), "include_seen"),
            product_type=query.get("product_type") or None,
            vendor=query.get("vendor") or None,
        )
        if intent == "related" and request.product_id is None:
            raise InvalidParameter("product_id", "intent=related needs product_id (the product on the page)")
        if intent == "complementary" and not request.product_ids:
            raise InvalidParameter("product_ids", "intent=complementary needs product_ids (the cart, comma-separated)")
        return request

    @property
    def personal(self) -> bool:
        """Whether the answer depends on one shopper (and must not be cached publicly)."""
        return self.intent in SHOPPER_INTENTS and bool(self.customer_id or self.anonymous_id or self.product_ids)


class RecommendedItem(NamedTuple):
    """One recommended product; a named tuple: ten are made per request, and `_asdict()` is the JSON item."""

    product_id: str
    score: float
    strategy: str
    because: str | None = None
    title: str | None = None
    handle: str | None = None
    price: float | None = None
    image_url: str | None = None
    available: bool | None = None
    product_type: str | None = None
    vendor: str | None = None


class RecommendResponse(NamedTuple):
    """One answer to a RecommendRequest (a named tuple, like its items: made on every request)."""

    recommendation_id: str
    intent: str
    strategy: str | None  # the strategy of the first item
    fallback_from: str | None
    fallback_reason: str | None
    model_version: str | None
    items: tuple[RecommendedItem, ...] = ()
    arm: str | None = None  # ARM_MODEL or ARM_CONTROL; None for trending, which no control group is drawn from


class _Candidates(NamedTuple):
    """A strategy's ranked answer: product ids, scores and reasons, best first."""

    product_ids: list[str]
    scores: list[float]
    because: list[str | None]


class AnswerCache:
    """Answers that depend on no shopper (related, complementary, trending, popular), per request, for a while.

    An entry is keyed by the whole request and remembers the model version it was computed with,
    so a swapped model never serves a stale answer. Bounded; thread-safe (dict operations are atomic).
    An entry is one flat tuple of strings and numbers, which Python's cyclic collector stops tracking
    after two passes; kept as named tuples, a full cache would be ~26k objects for every full pass to walk.
    An answer with ten catalog cards takes ~8 KB, so the cache holds at most 2,000 (~17 MB); when it is
    full, the entries past their TTL go, and if that does not free half of it, all of them.
    """

    _ITEM_WIDTH = len(RecommendedItem._fields)

    def __init__(self, ttl_seconds: float, max_entries: int = 2_000, clock: Callable[[], float] = time.monotonic):
        self._ttl, self._max, self._clock = ttl_seconds, max_entries, clock
        # tuple(request) -> (stored at, the response's fields but its id and items, its items' fields in a row)
        self._entries: dict[tuple, tuple] = {}

    def get(self, request: RecommendRequest, model_version: str | None,
            new_id: Callable[[], str], control: bool = False) -> RecommendResponse | None:
        """The cached answer, if fresh, under a recommendation id of its own (`new_id()`); `control`: the control
        group's answer to the request, which is kept apart from the model's."""
        # a named tuple equals, and hashes as, the plain tuple of its fields
        entry = self._entries.get(tuple(request) + (ARM_CONTROL,) if control else request)
        if entry is None or entry[5] != model_version or self._clock() - entry[0] >= self._ttl:
            return None
        flat, width = entry[7], self._ITEM_WIDTH
        items = tuple(RecommendedItem._make(flat[i:i + width]) for i in range(0, len(flat), width))
        return RecommendResponse(new_id(), *entry[1:6], items, entry[6])

    def put(self, request: RecommendRequest, response: RecommendResponse, since: float | None = None) -> None:
        """Keep `response` for the TTL, counted from `since` (by default now): the time of what it relied on."""
        if self._ttl <= 0:
            return
        entries, now = self._entries, self._clock()
        if len(entries) >= self._max:  # list() copies the items in one step, however many threads put at once
            fresh = [(key, entry) for key, entry in list(entries.items()) if now - entry[0] < self._ttl]
            entries = self._entries = dict(fresh) if len(fresh) <= self._max // 2 else {}
        flat = sum(response.items, ())  # the items' fields in a row
        key = tuple(request) + (ARM_CONTROL,) if response.arm == ARM_CONTROL else tuple(request)
        entries[key] = (now if since is None else since, *response[1:6], response.arm, flat)


class Recommender:
    """Answers RecommendRequests from a model, the shopper's events, trending and the catalog."""

    def __init__(self, store: EventStore, models: ModelHolder, catalog: CatalogCache, trending: TrendingCache,
                 history_limit: int, new_id: Callable[[], str] = model_answer_id,
                 cache_seconds: float = 0.0, clock: Callable[[], float] = time.monotonic,
                 control_percent: float = 0.0, draw: Callable[[], float] = random.random):
        self._store = store
        self._models = models
        self._catalog = catalog
        self._trending = trending
        self._history_limit = history_limit
        self._new_id = new_id
        self._control_share = control_percent / 100.0  # of the answers of every intent but trending
        self._draw = draw  # a number in [0, 1), drawn for each answer when there is a control group
        self._answers = AnswerCache(cache_seconds, clock=clock)
        self._cache_seconds, self._clock = cache_seconds, clock
        # shop -> (when the store was last asked, whether it said installed); a shop it never said was installed
        # gets no entry, so names of shops that never installed the app fill nothing here
        self._checked: dict[str, tuple[float, bool]] = {}

    def recommend(self, request: RecommendRequest) -> RecommendResponse:
        control = (self._control_share > 0 and request.intent != "trending"
                   and self._draw() < self._control_share)
        if not request.personal:
            # An answer for everyone cached less than `cache_seconds` ago was made for an installed shop: it is
            # served without asking the store again (on PostgreSQL, a round trip an answer). After app/uninstalled
            # such answers go on at most that long (browsers and CDNs may keep them their max-age beyond). A
            # trending answer made with no model yet (version None) is served as long, though a first model may
            # have been published since. The model's refresh check is started only for an answer served (a shop
            # that uninstalled starts none once its answers have run out).
            model = self._models.in_memory(request.shop, refresh=False)
            cached = self._answers.get(request, model.version if model else None,
                                       control_answer_id if control else self._new_id, control)
            if cached is not None:
                self._models.in_memory(request.shop)
                return cached
        # A shopper's answer checks the shop in the round trip that reads the shopper's stored events, so
        # app/uninstalled stops it at once. An answer for everyone is made without asking again within
        # `cache_seconds` of the store last saying the shop is installed, and cached until that time is up: such
        # answers outlive an uninstall by `cache_seconds` at most, as cached ones do.
        keys = self._history_keys(request) if request.personal else []
        now = self._clock()
        last = self._checked.get(request.shop)
        stored = snapshot = None
        if not request.personal and last is not None and last[1] and now - last[0] < self._cache_seconds:
            installed, asked_at = True, last[0]
        else:
            # When the catalog's snapshot is due too (a quiet shop's answers), it is read with the check (on a new
            # instance before the model's first load, so as old as that load took when the answer is made: within
            # its TTL, which counts from before the read).
            taken_at = self._catalog.now() if self._catalog.due(request.shop) else None
            sale = None
            if keys and taken_at is not None:
                installed, stored, sale = self._store.installed_with_histories_and_unsellable(
                    request.shop, keys, self._history_limit)
            elif keys:
                installed, stored = self._store.installed_with_histories(request.shop, keys, self._history_limit)
            elif taken_at is not None:
                installed, sale = self._store.installed_with_unsellable(request.shop)
            else:
                installed = self._store.is_shop_installed(request.shop)
            if installed and sale is not None:
                snapshot = self._catalog.put(request.shop, sale, taken_at)
            asked_at = now
            # Only a newer answer replaces an older one: a slow "installed" never undoes a later "not installed".
            last = self._checked.get(request.shop)
            if (installed or last is not None) and (last is None or asked_at >= last[0]):
                self._checked[request.shop] = (asked_at, installed)
        if not installed:
            raise ShopNotInstalled(f"{request.shop} has not installed the app (or has uninstalled it)")
        model = self._model(request)
        if not request.personal:
            answer = self._answer(request, model, catalog=snapshot, control=control)
            self._answers.put(request, answer, since=asked_at)
            return answer
        return self._answer(request, model, stored, snapshot, control)

    def _answer(self, request: RecommendRequest, model: ServingModel | None,
                stored: list[list[Interaction]] | None = None, catalog: CatalogSnapshot | None = None,
                control: bool = False) -> RecommendResponse:
        if catalog is None:
            catalog = self._catalog.get(request.shop)
        history = self._history(request, stored)
        named = _named_exclusions(request)  # what is on screen or in the cart already
        # History positions that personalized leaves out: what the shopper bought, or saw, unless asked to keep it. A
        # product kept as bought is kept whatever else the shopper did with it: a web order is viewed and carted first.
        keep_bought, keep_seen = request.repurchase, request.include_seen
        bought = {event.product_id for event in history if event.kind is EventKind.PURCHASE} if keep_bought else ()
        shown_again = [position for position, event in enumerate(history)
                       if not (keep_bought if event.kind is EventKind.PURCHASE else
                               keep_seen or event.product_id in bought)
                       ] if request.intent == "personalized" else []
        # The model's row of each history event, looked up once for the exclusions and the fold-in.
        history_rows = model.item_ids.rows_array([event.product_id for event in history]) if model else None
        blocked = excluded_rows = None
        on_hand = request.intent == "complementary"  # a cart's add-on ships with it: nothing backordered
        if model is not None:  # the catalog's mask is shared (read only); this request's own exclusions are rows
            blocked = catalog.blocked_mask(model.item_ids, model.version, request.product_type, request.vendor,
                                           on_hand)
            excluded_rows = history_rows[shown_again]
            if named:
                excluded_rows = np.concatenate([excluded_rows, model.item_ids.rows_array(sorted(named))])
            excluded_rows = excluded_rows[excluded_rows >= 0]
        excluded: set[str] | None = None  # the same exclusions as product ids, made for the strategies that need them

        def allowed(pid: str) -> bool:
            return (pid not in excluded and catalog.sellable(pid, on_hand)
                    and catalog.matches(pid, request.product_type, request.vendor))

        picked: list[tuple[str, float, str, str | None]] = []
        seen: set[str] = set()
        fallback_from = fallback_reason = None
        chain = (CONTROL_CHAIN if control else CHAINS[request.intent] if model is None or model.below_baseline is None
                 else BELOW_BASELINE_CHAINS[model.below_baseline][request.intent])
        for strategy in chain:
            candidates, reason = self._run(strategy, request, model, history, history_rows,
                                           blocked, excluded_rows, catalog)
            if candidates is None:
                if fallback_from is None:
                    fallback_from, fallback_reason = strategy, reason
                continue
            # The model's strategies left out the blocked and excluded rows already; the others' ids are checked here.
            checked = strategy in MASKED_STRATEGIES
            if not checked and excluded is None:
                excluded = named.union(history[position].product_id for position in shown_again)
            for pid, score, because in zip(candidates.product_ids, candidates.scores, candidates.because):
                if pid in seen or not (checked or allowed(pid)):
                    continue
                seen.add(pid)
                picked.append((pid, score, strategy, because))
                if len(picked) == request.n:
                    break
            if len(picked) == request.n:
                break
        primary = chain[1] if chain[0] == MERCHANT_PICK else chain[0]  # the merchant's picks are no fallback's cause
        if fallback_from is not None and next((p[2] for p in picked if p[2] != MERCHANT_PICK), None) == primary:
            fallback_from = fallback_reason = None  # the primary strategy answered after all
        return RecommendResponse(
            recommendation_id=control_answer_id() if control else self._new_id(), intent=request.intent,
            strategy=picked[0][2] if picked else None, fallback_from=fallback_from,
            fallback_reason=fallback_reason, model_version=model.version if model else None,
            items=self._rich(catalog, picked),
            arm=None if request.intent == "trending" else ARM_CONTROL if control else ARM_MODEL,
        )

    @staticmethod
    def _rich(catalog: CatalogSnapshot,
              picked: list[tuple[str, float, str, str | None]]) -> tuple[RecommendedItem, ...]:
        """The picked items with the catalog fields a storefront renders (kept with the catalog snapshot)."""
        cards = catalog.cards([pid for pid, *_ in picked]) if picked else {}
        items = []
        for pid, score, strategy, because in picked:
            card = cards.get(pid)
            items.append(RecommendedItem(pid, score, strategy, because) if card is None else
                         RecommendedItem(pid, score, strategy, because, *card))
        return tuple(items)

    def _model(self, request: RecommendRequest) -> ServingModel | None:
        try:
            if request.intent == "trending":  # its answer needs the model only to fill up with popular products
                return self._models.model_within(request.shop, TRENDING_MODEL_WAIT_SECONDS)
            return self._models.get(request.shop)
        except (ModelNotReady, ArtifactError) as exc:
            if request.intent != "trending":
                raise
            # trending reads events alone: none trained yet, or the model store out of reach, it answers all the same
            if isinstance(exc, ArtifactError):
                log.warning("model for %s unavailable (%s); trending answered from the events alone", request.shop,
                            exc)
            return None

    @staticmethod
    def _history_keys(request: RecommendRequest) -> list[str]:
        """The stored identities whose events make the shopper's history: the customer's, then the cart token's."""
        keys = [user_key(request.customer_id)] if request.customer_id else []
        if request.anonymous_id:
            keys.append(user_key(None, request.anonymous_id))
        return keys

    def _history(self, request: RecommendRequest, stored: list[list[Interaction]] | None = None) -> list[Interaction]:
        """The shopper's stored events (`stored`: already read, one list per `_history_keys`), then what is on screen."""
        if stored is None:
            stored = [self._store.history(request.shop, key, self._history_limit) for key in self._history_keys(request)]
        history = [event for events in stored for event in events]
        if request.intent in SHOPPER_INTENTS and request.product_ids:
            now = datetime.now(timezone.utc)
            history += [Interaction("request", pid, EventKind.VIEW, now) for pid in request.product_ids]
        return history

    def _run(self, strategy: str, request: RecommendRequest, model: ServingModel | None, history: list[Interaction],
             history_rows: np.ndarray | None, blocked: np.ndarray | None,
             excluded_rows: np.ndarray | None, catalog: CatalogSnapshot) -> tuple[_Candidates | None, str | None]:
        if strategy == "trending":
            ranked = self._trending.get(request.shop)
            if not ranked:
                return None, "no_recent_activity"
            top = ranked[0][1]
            limit = request.n + len(request.exclude) + len(request.product_ids) + 200
            return _Candidates([p for p, _ in ranked[:limit]], [s / top for _, s in ranked[:limit]],
                               [None] * min(limit, len(ranked))), None
        if strategy == "buy_it_again":
            return _decayed(history, (EventKind.PURCHASE,), REBUY_HALF_LIFE_DAYS, "no_purchases")
        if strategy == "recently_viewed":
            return _newest_first(history, request.product_ids)
        if strategy == MERCHANT_PICK:
            return _merchant_picks(request, catalog), None
        if model is None:
            return None, "no_model"
        if strategy == "popular":
            rows = model.popular_rows_allowed(request.n, blocked, excluded_rows)
            return _from_rows(model, rows, model.popularity_score, None), None
        if strategy == "same_type":
            return _same_type(request, model, catalog, blocked, excluded_rows)
        if strategy == "personalized":
            if model.below_baseline is not None:  # the gate's baseline answers in its place (BELOW_BASELINE_CHAINS)
                return None, "model_below_baseline"
            rows, weights = model.history_weights(history, history_rows)
            if len(rows) == 0:
                return None, "no_history"
            if len(rows) < MIN_HISTORY_ITEMS:
                return None, "thin_history"
            terms = model.fold_in_terms(rows, weights)
            top, scores = model.personalized_top(terms, request.n, blocked, excluded_rows)
            because = model.explain(rows, terms, np.asarray(top, dtype=np.int64)) if top else []
            return _Candidates(model.item_ids.ids_of(top), scores.tolist(), model.item_ids.ids_of(because)), None
        if strategy == "related":
            seeds = self._related_seeds(request, model, history)
            if not seeds:
                return None, "unknown_product"
            seeds = [row for row in seeds if model.item_support[row] >= MIN_ITEM_SUPPORT]
            if not seeds:
                return None, "thin_product_data"
            return _from_seeds(model, model.related_scores(seeds), model.related_parts, seeds, request.n, blocked,
                               excluded_rows), None
        if strategy == "complementary":
            cart_rows = model.rows_of(request.product_ids)
            if not cart_rows:
                return None, "unknown_product"
            if not any(model.copurchase_orders[row] > 0 for row in cart_rows):
                return None, "no_copurchase_data"
            return _from_seeds(model, model.complementary_scores(cart_rows), model.complementary_parts, cart_rows,
                               request.n, blocked, excluded_rows), None
        raise ValueError(f"unknown strategy {strategy!r}")

    @staticmethod
    def _related_seeds(request: RecommendRequest, model: ServingModel, history: list[Interaction]) -> list[int]:
        if request.intent == "related":
            return model.rows_of([request.product_id]) if request.product_id else []
        if request.intent == "complementary":
            return model.rows_of(list(request.product_ids))
        newest_first = list(dict.fromkeys(e.product_id for e in history))
        return model.rows_of(newest_first)[:5]


def _merchant_picks(request: RecommendRequest, catalog: CatalogSnapshot) -> _Candidates:
    """The merchant's picks for the page (a product's related ones) or the cart (each item's complementary ones, taken
    in turn), in the merchant's order, scored 1/(1 + their place in it), each owed to the product it was picked for;
    none (not a fallback) where the merchant picked nothing. The caller filters them as any strategy's by id."""
    seeds = [request.product_id] if request.intent == "related" else list(request.product_ids)
    lists = []
    for seed in seeds:
        picks = catalog.picks.get(seed)
        chosen = () if picks is None else picks.related if request.intent == "related" else picks.complementary
        if chosen:
            lists.append((seed, chosen))
    found = _Candidates([], [], [])
    for place in range(max((len(chosen) for _, chosen in lists), default=0)):
        for seed, chosen in lists:
            if place < len(chosen):
                found.product_ids.append(chosen[place])
                found.scores.append(1.0 / (1 + place))
                found.because.append(seed)
    return found


def _same_type(request: RecommendRequest, model: ServingModel, catalog: CatalogSnapshot, blocked: np.ndarray | None,
               excluded_rows: np.ndarray | None) -> tuple[_Candidates | None, str | None]:
    """The best sellers of the page's product type, for a product "related" cannot answer for (new since the model
    was trained, or bought by too few shoppers): a new tea's page shows the teas that sell rather than the shop's
    best sellers. The type is the product's catalog row's, compared case-insensitively; none without one, and none
    where the request names a type of its own (`popular` then answers within it). It looks among the shop's
    SAME_TYPE_BEST_SELLERS best sellers for sale, best first, a hundred at a time until it has enough; the catalog
    snapshot reads their cards once and keeps them for every type's answers until its next read (a type with none
    among them gets no answer of its own)."""
    card = catalog.cards([request.product_id]).get(request.product_id) if request.product_id else None
    product_type = card[CARD_PRODUCT_TYPE].lower() if card else ""
    if not product_type or request.product_type is not None:  # nothing to add: not a strategy lacking data
        return _Candidates([], [], []), None
    ranked = model.popular_ranking(blocked)
    skip = set() if excluded_rows is None else set(excluded_rows.tolist())
    same: list[int] = []
    for start in range(0, min(len(ranked), SAME_TYPE_BEST_SELLERS), 100):
        rows = ranked[start:min(start + 100, SAME_TYPE_BEST_SELLERS)].tolist()
        ids = model.item_ids.ids_of(rows)
        cards = catalog.cards(ids)
        same += [row for row, pid in zip(rows, ids) if row not in skip
                 and (card := cards.get(pid)) is not None and card[CARD_PRODUCT_TYPE].lower() == product_type]
        if len(same) >= request.n:
            break
    return _from_rows(model, same[:request.n], model.popularity_score, None), None


def _named_exclusions(request: RecommendRequest) -> set[str]:
    """The products the request itself names that must not be recommended: exclude=, the product on screen, the
    cart (for recently_viewed, the ids it is given are the answer, not the context; exclude= and the product on
    screen are still left out: a product page does not list itself as recently viewed)."""
    named = set(request.exclude)
    if request.product_id:
        named.add(request.product_id)
    if request.intent == "recently_viewed":
        return named
    return named.union(request.product_ids)


def _decay(now: datetime, at: datetime, half_life_days: float) -> float:
    """0.5^(age in days / half-life): 1 for an event now (or dated after it), a half for one a half-life old."""
    return 0.5 ** (max(0.0, (now - at).total_seconds() / 86400) / half_life_days)


def _decayed(history: list[Interaction], kinds: tuple[EventKind, ...], half_life_days: float,
             reason: str) -> tuple[_Candidates | None, str | None]:
    """The shopper's own products of these kinds, each scored Σ weight_factor · 0.5^(age / half-life)."""
    now = datetime.now(timezone.utc)
    scores: dict[str, float] = {}
    for event in history:
        if event.kind in kinds:
            scores[event.product_id] = (scores.get(event.product_id, 0.0)
                                        + event.weight_factor * _decay(now, event.occurred_at, half_life_days))
    if not scores:
        return None, reason
    ranked = sorted(scores.items(), key=lambda item: (-item[1], item[0]))
    top = ranked[0][1] or 1.0
    return _Candidates([p for p, _ in ranked], [v / top for _, v in ranked], [p for p, _ in ranked]), None


def _newest_first(history: list[Interaction], given: tuple[str, ...]) -> tuple[_Candidates | None, str | None]:
    """The shopper's own viewed and carted products, newest first: the ids the request gives (what the storefront
    saw the shopper view, in its order) as seen now, then the stored ones by each product's latest view or cart.
    Each is scored 0.5^(age_days / VIEW_HALF_LIFE_DAYS) of that latest event."""
    now = datetime.now(timezone.utc)
    latest = dict.fromkeys(given, now)
    stored: dict[str, datetime] = {}
    for event in history:
        if event.kind in (EventKind.VIEW, EventKind.ADD_TO_CART) and event.product_id not in latest:
            stored[event.product_id] = max(event.occurred_at, stored.get(event.product_id, event.occurred_at))
    latest.update(sorted(stored.items(), key=lambda item: item[1], reverse=True))  # ties: in the history's order
    if not latest:
        return None, "no_views"
    scores = [_decay(now, at, VIEW_HALF_LIFE_DAYS) for at in latest.values()]
    return _Candidates(list(latest), scores, list(latest)), None


def _from_seeds(model: ServingModel, scores: np.ndarray, parts: Callable[[list[int], list[int]], np.ndarray],
                seed_rows: list[int], n: int, blocked: np.ndarray | None,
                excluded_rows: np.ndarray | None) -> _Candidates:
    """Related and complementary: the best-scored items but the seeds (or cart items) themselves, and for
    each, `because`: the seed whose part of its score (`parts(seeds, items)`) was largest."""
    also = np.asarray(seed_rows, dtype=np.int64)
    if excluded_rows is not None:
        also = np.concatenate([also, excluded_rows])
    top = model.top_rows(scores, n, blocked, also)
    because = model.best_rows(parts(seed_rows, top), seed_rows) if top else []
    return _from_rows(model, top, scores, model.item_ids.ids_of(because))


def _from_rows(model: ServingModel, rows: list[int], scores: np.ndarray, because: list[str] | None) -> _Candidates:
    return _Candidates(model.item_ids.ids_of(rows), scores[np.asarray(rows, dtype=np.int64)].tolist(),
                       because if because is not None else [None] * len(rows))


def parse_count(raw: str | None, default: int = 10) -> int:
    if raw is None or raw == "":
        return default
    if not _DIGITS.match(raw) or not 1 <= int(raw) <= MAX_RESULTS:
        raise InvalidParameter("n", f"n must be an integer from 1 to {MAX_RESULTS}, got {raw!r}")
    return int(raw)


def parse_customer_id(raw: str | None) -> str | None:
    """Shopify customer ids are positive integers; anything else is a caller error."""
    if raw is None or raw == "":
        return None
    if not _DIGITS.match(raw):
        raise InvalidParameter("customer_id", f"customer_id must be a Shopify customer id (digits), got {raw!r}")
    return raw


def parse_product_id(raw: str | None, name: str = "product_id") -> str | None:
    """A Shopify product id (digits) as a request names it, None when absent, else InvalidParameter naming `name`."""
    if raw is None or raw == "":
        return None
    if not _DIGITS.match(raw):
        raise InvalidParameter(name, f"{name} must be a Shopify product id (digits), got {raw!r}")
    return raw


def _id_list(raw: str | None, name: str) -> tuple[str, ...]:
    if raw is None or raw == "":
        return ()
    parts = [part.strip() for part in raw.split(",") if part.strip()]
    if len(parts) > MAX_PRODUCT_IDS:
        raise InvalidParameter(name, f"{name} takes at most {MAX_PRODUCT_IDS} ids, got {len(parts)}")
    bad = [part for part in parts if not _DIGITS.match(part)]
    if bad:
        raise InvalidParameter(name, f"{name} must be comma-separated product ids (digits), got {bad[0]!r}")
    return tuple(dict.fromkeys(parts))


def _token(raw: str | None, name: str) -> str | None:
    if raw is None or raw == "":
        return None
    if not _TOKEN.match(raw):
        raise InvalidParameter(name, f"{name} must be 1-128 letters, digits or -_:. characters")
    return raw


def _flag(raw: str | None, name: str) -> bool:
    if raw is None or raw == "":
        return False
    lowered = raw.lower()
    if lowered in ("1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no"):
        return False
    raise InvalidParameter(name, f"{name} must be true or false, got {raw!r}")
