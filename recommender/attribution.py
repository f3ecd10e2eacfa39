"""Attribution: were `/recommend`'s answers seen, clicked, and did the clicked products sell?

A theme that renders an answer publishes `recommendations_viewed` (the answer's `recommendation_id`, `intent` and
`product_ids`) and, on a click, `recommendations_clicked` (`recommendation_id`, `intent`, `product_id`, `position`);
the Web Pixel extension forwards them to `/collect` (webhooks.pixel), which keeps them in `recommendation_events`,
keyed by the pixel's client id, apart from the events training reads. Nothing is written on `/recommend`'s path.

`attribution_report` reads them back for one shop and a window of days, per intent and in total:

- answers viewed: the distinct recommendation ids viewed;
- products shown: the distinct (answer, product) pairs those views showed;
- clicks: the distinct (answer, product) pairs clicked (a product clicked twice in one answer counts once);
- click-through rate: clicks / products shown;
- by arm: the same figures for the answers the model gave and for the control group's (CONTROL_PERCENT of the
  answers of every intent but trending, given by best sellers; their recommendation ids say which), with each arm's
  attributed purchases per thousand products shown, and how much more the model's did than the control's (lift);
- attributed purchases and revenue: an order line the pixel sent (`checkout_completed`, keyed by the same client id)
  of a product that browser clicked in an answer at most `attribution_days` before it. Each line is credited to the
  last such click before it, and counted in the window, under that click's intent, if the click lies in the window.
  Revenue is price × quantity as the checkout listed the line: the variant's price before discounts, in the checkout's
  currency (a shop selling in several currencies gets a sum per currency, and one sum only where its lines were paid
  in one). The lines of cancelled orders are left out (`EventStore.attributable_purchases`), and where the signed
  webhooks stored the line's order, the refunds they recorded of the product in it are taken off: its quantity and
  revenue shrink by the refunded share of its units, and a line refunded in full earns nothing.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from recommender.store import (
    ARM_CONTROL, ARM_MODEL, CONTROL_ID_PREFIX, EventStore, PixelPurchase, RecommendationClick,
)

DEFAULT_REPORT_DAYS = 30.0
UNKNOWN_CURRENCY = "unknown"  # the key of lines whose currency is not stored (written before migration 11)


def attribution_report(store: EventStore, shop: str, days: float = DEFAULT_REPORT_DAYS,
                       attribution_days: float = 7.0, now: datetime | None = None) -> dict:
    """The shop's answers viewed, products shown, clicks, click-through rate and attributed purchases and revenue over
    the `days` before `now`, per intent (in `/recommend`'s order of intents) and in total: a JSON-serialisable dict."""
    if not days > 0 or not attribution_days > 0:
        raise ValueError(f"days and attribution_days must be > 0, got {days!r} and {attribution_days!r}")
    until = now or datetime.now(timezone.utc)
    since = until - timedelta(days=days)
    counts = {intent: (viewed, shown, clicked)
              for intent, viewed, shown, clicked in store.recommendation_summary(shop, since, until)}
    credited = credit_purchases(store.recommendation_clicks(shop, since, until),
                                store.attributable_purchases(shop, since, until), timedelta(days=attribution_days))
    by_intent: dict[str, list[PixelPurchase]] = defaultdict(list)
    by_arm: dict[str, list[PixelPurchase]] = defaultdict(list)
    bought_in: dict[str, int] = defaultdict(int)  # an answer's credited purchases
    for click, line in credited:
        by_intent[click.intent].append(line)
        if click.intent != "trending":
            by_arm[arm_of(click.recommendation_id)].append(line)
            bought_in[click.recommendation_id] += 1
    # each answer of every intent but trending: (products shown, clicks, purchases), per arm
    answers: dict[str, list[tuple[int, int, int]]] = {ARM_MODEL: [], ARM_CONTROL: []}
    for answer, shown, clicked in store.recommendation_answers(shop, since, until):
        answers[arm_of(answer)].append((shown, clicked, bought_in.get(answer, 0)))
    arms = {arm: _figures((sum(1 for shown, _, _ in rows if shown), sum(shown for shown, _, _ in rows),
                           sum(clicked for _, clicked, _ in rows)), by_arm.get(arm, []), per_thousand=True)
            for arm, rows in answers.items()}
    total = _figures(counts.get(None, (0, 0, 0)), [line for _, line in credited])
    return {
        "shop": shop,
        "since": since.isoformat(),
        "until": until.isoformat(),
        "days": days,
        "attribution_days": attribution_days,
        "total": total,
        "by_intent": {intent: _figures(counts.get(intent, (0, 0, 0)), by_intent.get(intent, []))
                      for intent in _ordered({i for i in counts if i is not None} | set(by_intent))},
        "by_arm": {**arms, **_lifts(arms[ARM_MODEL], arms[ARM_CONTROL], answers[ARM_MODEL], answers[ARM_CONTROL])},
    }


def arm_of(recommendation_id: str) -> str:
    """The arm an answer was in, read from its id: the control group's ids start with CONTROL_ID_PREFIX ('00'), and
    no other answer's does (`recommender.intents.control_answer_id`, `model_answer_id`)."""
    return ARM_CONTROL if recommendation_id.startswith(CONTROL_ID_PREFIX) else ARM_MODEL


def _lifts(model: dict, control: dict, model_answers: list[tuple[int, int, int]],
           control_answers: list[tuple[int, int, int]]) -> dict:
    """`lift` and `lift_interval` of the model's arm over the control's, on click-through rate (clicks of products
    shown) and on purchases per thousand shown; the answers are each arm's (products shown, clicks, purchases)."""
    return {
        "lift": {measure: _lift(model[measure], control[measure])
                 for measure in ("click_through_rate", "purchases_per_thousand_shown")},
        "lift_interval": {
            "click_through_rate": _lift_interval([(c, s) for s, c, _ in model_answers],
                                                 [(c, s) for s, c, _ in control_answers], proportions=True),
            "purchases_per_thousand_shown": _lift_interval([(b, s) for s, _, b in model_answers],
                                                           [(b, s) for s, _, b in control_answers]),
        },
    }


def _log_rate_variance(answers: list[tuple[int, int]], proportions: bool) -> float | None:
    """The variance of the log of an arm's rate Σcount / Σshown over its answers ((count, shown) each), or None while
    it has no count or fewer than two answers: the larger of two estimates. One takes each answer as a unit, the
    delta method's variance of a ratio of sums (n / (n − 1) · Σ(count − rate · shown)² / (Σshown)², over rate²), which
    sees that an answer's products are clicked or bought together; the other each product shown, (1 − rate) / Σcount
    for proportions (clicks) and 1 / Σcount for counts (purchases), which is all one answer alike can show."""
    count, shown = sum(c for c, _ in answers), sum(s for _, s in answers)
    if not count or not shown or len(answers) < 2:
        return None
    rate, n = count / shown, len(answers)
    by_answer = n / (n - 1) * sum((c - rate * s) ** 2 for c, s in answers) / shown ** 2 / rate ** 2
    by_product = (1 - rate) / count if proportions else 1 / count
    return max(by_answer, by_product)


def _lift_interval(model_answers: list[tuple[int, int]], control_answers: list[tuple[int, int]],
                   proportions: bool = False) -> list[float] | None:
    """A 95% interval of the lift (the model's rate over the control's, less 1), each arm given as its answers'
    (count, products shown): from the log of the ratio of the two rates and its normal approximation, the arms'
    variances (`_log_rate_variance`) summed. None while either arm cannot give one."""
    model_variance = _log_rate_variance(model_answers, proportions)
    control_variance = _log_rate_variance(control_answers, proportions)
    if model_variance is None or control_variance is None:
        return None
    ratio = ((sum(c for c, _ in model_answers) / sum(s for _, s in model_answers))
             / (sum(c for c, _ in control_answers) / sum(s for _, s in control_answers)))
    spread = 1.959964 * math.sqrt(model_variance + control_variance)
    return [ratio * math.exp(-spread) - 1, ratio * math.exp(spread) - 1]


def _lift(model: float | None, control: float | None) -> float | None:
    """How much more the model's answers did than the control group's (0.25: a quarter more); None without a base."""
    return None if model is None or not control else model / control - 1


def credit_purchases(clicks: list[RecommendationClick], purchases: list[PixelPurchase],
                     window: timedelta) -> list[tuple[RecommendationClick, PixelPurchase]]:
    """Each order line paired with the click that gets it: the same browser's last click on the same product at or
    before the purchase, if it is at most `window` before it (lines without one are left out). An order line the pixel
    sent twice (two `checkout_completed` events of one order) counts once."""
    by_pair: dict[tuple[str, str], list[RecommendationClick]] = defaultdict(list)
    for click in clicks:
        by_pair[click.client_id, click.product_id].append(click)
    times = {}
    for pair, pair_clicks in by_pair.items():
        pair_clicks.sort(key=lambda click: (click.occurred_at, click.event_id))
        times[pair] = [click.occurred_at for click in pair_clicks]
    credited, seen = [], set()
    for line in sorted(purchases, key=lambda line: (line.occurred_at, line.dedupe_key or "")):
        if not line.kept > 0:  # the signed webhooks' line of it refunded in full
            continue
        pair, order_line = (line.client_id, line.product_id), (line.order_id, line.product_id)
        if pair not in by_pair or (line.order_id is not None and order_line in seen):
            continue
        last = bisect.bisect_right(times[pair], line.occurred_at) - 1
        if last < 0 or line.occurred_at - times[pair][last] > window:
            continue
        if line.order_id is not None:
            seen.add(order_line)
        credited.append((by_pair[pair][last], line))
    return credited


def _figures(counts: tuple[int, int, int], lines: list[PixelPurchase], per_thousand: bool = False) -> dict:
    viewed, shown, clicked = counts
    # what refunds left of each line: its units times the share the signed webhooks still count (1 without a refund)
    units = [Decimal(line.quantity) * Decimal(repr(line.kept)) for line in lines]
    by_currency: dict[str, Decimal] = {}
    for line, kept in zip(lines, units):
        if line.price is not None:
            code = line.currency or UNKNOWN_CURRENCY
            by_currency[code] = by_currency.get(code, Decimal(0)) + Decimal(repr(line.price)) * kept
    known = sorted(code for code in by_currency if code != UNKNOWN_CURRENCY)
    # one sum where the lines were paid in one currency (lines stored before currencies were, taken to be in it)
    revenue = sum(by_currency.values(), Decimal(0)) if len(known) <= 1 else None
    quantity = sum(units, Decimal(0))
    return {
        "answers_viewed": viewed,
        "products_shown": shown,
        "clicks": clicked,
        "click_through_rate": clicked / shown if shown else None,
        "attributed_purchases": len(lines),
        "attributed_quantity": int(quantity) if quantity == quantity.to_integral_value() else float(quantity),
        "attributed_revenue": None if revenue is None else float(round(revenue, 6)),
        "revenue_currency": known[0] if len(known) == 1 else None,
        "attributed_revenue_by_currency": {code: float(round(amount, 6)) for code, amount in sorted(by_currency.items())},
        **({"purchases_per_thousand_shown": 1000 * len(lines) / shown if shown else None} if per_thousand else {}),
    }


def _ordered(intents: set[str]) -> list[str]:
    """`intents` in `/recommend`'s order (recommender.intents.CHAINS), any other after them by name."""
    from recommender.intents import CHAINS  # numpy: only for the report

    known = [intent for intent in CHAINS if intent in intents]
    return known + sorted(intents - set(known))
