"""A shop's events as integer-coded columns: what training reads instead of one object per event.

`EventStore.interaction_columns(shop)` returns the rows `EventStore.interactions(shop)` returns
(every event that still counts, in arrival order) as numpy arrays. Strings are coded as integers
in first-seen order: `user_keys[users[i]]` is event i's shopper, `product_ids[items[i]]` its product,
`order_ids[orders[i]]` its order (−1: none). Both stores fetch the columns in one SQL statement as a
few long strings (one per column; `SEP` between values) and decode them here with numpy, so reading
500k events costs tenths of a second instead of seconds. Shopify's ids are decimal numbers: they
are parsed as int64 in bulk, and any value that is not a canonical positive decimal sends that
column down the general path (a dictionary over the strings), so every id survives as stored.

Imports numpy: the webhook path imports `recommender.store`, which imports this module only when
columns are read.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Collection, Iterable, Sequence

import numpy as np

from recommender.errors import StoreError
from recommender.events import EventKind

SEP = "\x1f"  # between values of a text column (ASCII unit separator); a value holding it takes the slow path
EVENT_KINDS: tuple[EventKind, ...] = tuple(EventKind)  # kinds[i] indexes this tuple
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_POW10 = 10 ** np.arange(19, dtype=np.int64)  # 1 … 10^18


class ValueWithSeparator(ValueError):
    """A stored value contains SEP, so the concatenated column cannot be split back: read rows instead."""


@dataclass(frozen=True, eq=False)
class InteractionColumns:
    """One entry per event that still counts, in arrival order (the rows of `EventStore.interactions`).

    users:          int32[n] index into user_keys (first-seen order)
    items:          int32[n] index into product_ids (first-seen order)
    kinds:          int8[n]  index into EVENT_KINDS
    orders:         int32[n] index into order_ids (first-seen order), −1 for an event without an order
    weight_factors: float64[n] what still counts of each event (< 1 after a refund, never 0)
    occurred_at_us: int64[n] microseconds since the epoch (UTC), or None when not read
    """

    user_keys: list[str]
    product_ids: list[str]
    order_ids: list[str]
    users: np.ndarray
    items: np.ndarray
    kinds: np.ndarray
    orders: np.ndarray
    weight_factors: np.ndarray
    occurred_at_us: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.users)

    @classmethod
    def empty(cls, times: bool = False) -> "InteractionColumns":
        none = np.zeros(0, dtype=np.int32)
        return cls([], [], [], none, none, np.zeros(0, dtype=np.int8), none, np.zeros(0, dtype=np.float64),
                   np.zeros(0, dtype=np.int64) if times else None)

    @classmethod
    def from_interactions(cls, rows: Iterable, times: bool = True) -> "InteractionColumns":
        """The columns of `Interaction` rows (the general path, one Python object per event)."""
        rows = list(rows)
        users, user_keys = string_codes([r.user_key for r in rows])
        items, product_ids = string_codes([r.product_id for r in rows])
        orders, order_ids = string_codes([r.order_id or "" for r in rows], none="")
        kind_code = {kind: code for code, kind in enumerate(EVENT_KINDS)}
        return cls(
            user_keys, product_ids, order_ids, users, items,
            np.array([kind_code[r.kind] for r in rows], dtype=np.int8), orders,
            np.array([r.weight_factor for r in rows], dtype=np.float64),
            np.array([epoch_us(r.occurred_at) for r in rows], dtype=np.int64) if times else None,
        )

    def without_products(self, product_ids: Collection[str]) -> "InteractionColumns":
        """These columns without the events of `product_ids`, every code renumbered in first-seen order over the
        events left, as if the others had never been stored (a shopper or an order left with none is gone too)."""
        gone = np.array([code for code, product in enumerate(self.product_ids) if product in product_ids],
                        dtype=np.int32)
        if not len(gone):
            return self
        keep = ~np.isin(self.items, gone)
        users, user_keys = _recoded(self.users[keep], self.user_keys)
        items, kept_products = _recoded(self.items[keep], self.product_ids)
        orders, order_ids = _recoded(self.orders[keep], self.order_ids)
        return InteractionColumns(user_keys, kept_products, order_ids, users, items, self.kinds[keep], orders,
                                  self.weight_factors[keep],
                                  None if self.occurred_at_us is None else self.occurred_at_us[keep])

    def interactions(self) -> list:
        """Back to `Interaction` rows (needs occurred_at_us): for tests and small shops."""
        from recommender.store import Interaction

        if self.occurred_at_us is None:
            raise ValueError("these columns were read without times")
        return [
            Interaction(self.user_keys[u], self.product_ids[i], EVENT_KINDS[k], from_epoch_us(t),
                        self.order_ids[o] if o >= 0 else None, f)
            for u, i, k, o, f, t in zip(self.users.tolist(), self.items.tolist(), self.kinds.tolist(),
                                        self.orders.tolist(), self.weight_factors.tolist(),
                                        self.occurred_at_us.tolist())
        ]


def epoch_us(moment: datetime) -> int:
    """Microseconds since the epoch of an aware datetime (a naive one is taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_epoch_us(value: int) -> datetime:
    from datetime import timedelta

    return _EPOCH + timedelta(microseconds=value)


# --- codes --------------------------------------------------------------------------------------


def first_seen_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int32 code of each value, numbering distinct values by first occurrence; each code's first row)."""
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64)
    order = np.argsort(values)  # not stable (faster): each group's first row is its smallest row number
    ordered = values[order]
    starts_group = np.empty(n, dtype=bool)
    starts_group[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts_group[1:])
    first = np.minimum.reduceat(order, np.flatnonzero(starts_group))  # per distinct value, ascending
    group = np.empty(n, dtype=np.int32)
    group[order] = np.cumsum(starts_group, dtype=np.int32) - 1
    by_first = np.argsort(first)
    rank = np.empty(len(first), dtype=np.int32)
    rank[by_first] = np.arange(len(first), dtype=np.int32)
    return rank[group], first[by_first]


def _recoded(codes: np.ndarray, names: list[str]) -> tuple[np.ndarray, list[str]]:
    """Codes (−1: none) renumbered in first-seen order, and the names of the codes still used, in that order."""
    present = codes >= 0
    fresh, first = first_seen_codes(codes[present])
    recoded = np.full(len(codes), -1, dtype=np.int32)
    recoded[present] = fresh
    return recoded, [names[code] for code in codes[present][first].tolist()]


def string_codes(values: Sequence[str], none: str | None = None) -> tuple[np.ndarray, list[str]]:
    """(int32 code of each string in first-seen order, the distinct strings); `none` codes as −1."""
    index: dict[str, int] = {}
    codes = np.array([index.setdefault(v, len(index)) for v in values], dtype=np.int32)
    table = list(index)
    if none is not None and none in index:
        gone = index[none]
        codes[codes == gone] = -1
        codes[codes > gone] -= 1
        del table[gone]
    return codes, table


def canonical_numbers(text: str, n: int, prefix: str = "") -> np.ndarray | None:
    """int64 values of `n` values `prefix` + a canonical positive decimal (no sign, no leading zero,
    ≤ 18 digits) joined by SEP, or None when `text` is anything else."""
    if n == 0 or not text.startswith(prefix):
        return None
    sep = SEP + prefix
    try:
        values = np.fromstring(text[len(prefix):], dtype=np.int64, sep=sep)  # stops at anything else
    except ValueError:
        return None
    if len(values) != n or values.min() < 1:
        return None
    digits = np.searchsorted(_POW10, values, side="right")  # each value's decimal digits
    if digits.max() > 18:
        return None
    # Every character accounted for: no sign, space or leading zero the parser skipped over.
    return values if len(prefix) + int(digits.sum()) + (n - 1) * len(sep) == len(text) else None


def split_column(text: str | None, n: int) -> list[str]:
    """The `n` values of a SEP-joined column."""
    if n == 0:
        return []
    values = (text or "").split(SEP)
    if len(values) != n:
        raise ValueWithSeparator("a stored value contains the column separator")
    return values


def nonempty_fields(text: str, sep: str, n: int) -> np.ndarray:
    """Indices of the non-empty values in `n` values joined by the one-character `sep`."""
    if len(text) == n - 1:  # only separators: every value empty
        return np.zeros(0, dtype=np.int64)
    raw = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    cuts = np.flatnonzero(raw == ord(sep))
    if len(cuts) != n - 1:
        raise ValueWithSeparator("a stored value contains the column separator")
    starts = np.empty(n, dtype=np.int64)
    starts[0] = 0
    starts[1:] = cuts + 1
    ends = np.empty(n, dtype=np.int64)
    ends[:-1] = cuts
    ends[-1] = len(raw)
    return np.flatnonzero(ends > starts)


# --- decoding one statement's answer ----------------------------------------------------------------


@dataclass(frozen=True)
class ColumnTexts:
    """What a store's one statement returned. Text columns join their n values with SEP.

    users, products: as stored
    kinds:     one character per event: "0" + the kind's index in EVENT_KINDS, + len(EVENT_KINDS) when the
               event has an order ("~": a kind this code does not know)
    orders:    the order ids of the events that have one (not "" or NULL), in row order
    factors:   "" where weight_factor is 1, else the factor as `parse_factor` reads it, joined by ","
    times:     the backend's time text, decoded by `parse_times` (None: not asked for)
    ids:       the event ids joined by "," when the backend may not return rows in id order (else None)
    """

    count: int
    users: str | None
    products: str | None
    orders: str | None
    kinds: str | None
    factors: str | None
    times: str | None = None
    ids: str | None = None


def join_column_texts(runs: list[ColumnTexts]) -> ColumnTexts:
    """The texts of consecutive runs of rows (each run's ids all above the one's before) as one. `runs` is emptied, and
    each column's texts are let go once that column is joined: at most the whole read and its largest column are held
    at once."""
    count = sum(int(run.count or 0) for run in runs)
    by_column = {name: [text for run in runs if run.count and (text := getattr(run, name)) is not None]
                 for name, _ in _JOINED_BY}
    runs.clear()
    joined: dict[str, str | None] = {}
    for name, separator in _JOINED_BY:
        texts = by_column.pop(name)
        joined[name] = separator.join(texts) if texts else None  # None: no values (orders, times unread)
        texts.clear()
    return ColumnTexts(count, **joined)


_JOINED_BY = (("users", SEP), ("products", SEP), ("orders", SEP), ("kinds", ""), ("factors", ","), ("times", SEP),
              ("ids", ","))


def decode(texts: ColumnTexts, parse_factor, parse_times=None) -> InteractionColumns:
    """The columns, in event id order (times only with `parse_times`). Raises ValueWithSeparator when
    a value holds SEP."""
    n = int(texts.count or 0)
    if n == 0:
        return InteractionColumns.empty(times=parse_times is not None)
    perm = None
    if texts.ids is not None:
        ids = np.fromstring(texts.ids, dtype=np.int64, sep=",")
        if len(ids) != n:
            raise ValueError("event ids did not come back one per event")
        if np.any(ids[1:] <= ids[:-1]):
            perm = np.argsort(ids, kind="stable")
    kinds = np.frombuffer((texts.kinds or "").encode("ascii"), dtype=np.uint8).astype(np.int8) - ord("0")
    if len(kinds) != n or kinds.min() < 0 or kinds.max() >= 2 * len(EVENT_KINDS):
        raise StoreError(f"an event of a kind this code does not know is stored ({', '.join(EVENT_KINDS)} known)")
    has_order = kinds >= len(EVENT_KINDS)
    kinds[has_order] -= len(EVENT_KINDS)
    # Users and products each sort n numbers; numpy lets go of the GIL while it sorts, so the two (and the
    # orders, whose dictionary fills the gaps) run at once.
    (users, user_keys), ((items, product_ids), (orders, order_ids)) = _both(
        lambda: _numbers_or_strings(texts.users, n, perm, prefix="c:"),  # customers: "c:<Shopify id>"
        lambda: (_numbers_or_strings(texts.products, n, perm),
                 _orders(texts.orders, np.flatnonzero(has_order), n, perm)))
    factors = np.ones(n, dtype=np.float64)
    factor_text = texts.factors or ""
    refunded = nonempty_fields(factor_text, ",", n)
    if len(refunded):
        every = factor_text.split(",")
        factors[refunded] = [parse_factor(every[row]) for row in refunded.tolist()]
    times = None if parse_times is None else parse_times(texts.times or "", n)
    return InteractionColumns(user_keys, product_ids, order_ids, users, items, _take(kinds, perm),
                              orders, _take(factors, perm), None if times is None else _take(times, perm))


def _both(first, second):
    """(first(), second()), the first on a thread of its own."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = first()
        except BaseException as exc:  # re-raised on the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=run, name="event-columns-decode", daemon=True)
    worker.start()
    try:
        other = second()
    finally:
        worker.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"], other


def _take(values, perm):
    """`values` in id order (`perm`: the order the rows came back in, or None when it was id order)."""
    if perm is None:
        return values
    if isinstance(values, np.ndarray):
        return values[perm]
    return [values[i] for i in perm.tolist()]


def _numbers_or_strings(text: str | None, n: int, perm, prefix: str = "") -> tuple[np.ndarray, list[str]]:
    """Codes of a text column: parsed as numbers when every value is `prefix` + a canonical decimal
    (Shopify's ids), else through a dictionary."""
    text = text or ""
    numbers = canonical_numbers(text, n, prefix=prefix)
    if numbers is None:
        return string_codes(_take(split_column(text, n), perm))
    numbers = _take(numbers, perm)
    codes, first = first_seen_codes(numbers)
    return codes, [f"{prefix}{v}" for v in numbers[first].tolist()]


def _orders(text: str | None, rows: np.ndarray, n: int, perm) -> tuple[np.ndarray, list[str]]:
    """Order codes, −1 for events without one (most: only purchases have orders); `text` holds the
    order ids of `rows`."""
    codes = np.full(n, -1, dtype=np.int32)
    if len(rows) == 0:
        return codes, []
    numbers = canonical_numbers(text or "", len(rows))
    if numbers is not None:
        codes[rows], first = first_seen_codes(numbers)
        table = [str(v) for v in numbers[first].tolist()]
    else:
        codes[rows], table = string_codes(split_column(text, len(rows)))
    if perm is None:
        return codes, table
    codes = codes[perm]
    has = codes >= 0
    old = codes[has]
    codes[has], first = first_seen_codes(old)  # renumber in id order
    return codes, [table[c] for c in old[first].tolist()]


def sqlite_times(text: str, n: int) -> np.ndarray:
    """int64 µs since the epoch of SEP-joined ISO 8601 texts (as `recommender.store.iso_utc` writes them)."""
    values = split_column(text, n)
    if all(len(v) == 32 and v.endswith("+00:00") for v in values):
        return np.array([v[:26] for v in values], dtype="datetime64[us]").view(np.int64)
    return np.array([epoch_us(datetime.fromisoformat(v)) for v in values], dtype=np.int64)


def integer_times(text: str, n: int) -> np.ndarray:
    """int64 µs since the epoch, joined by SEP (PostgreSQL computes them)."""
    values = np.fromstring(text, dtype=np.int64, sep=SEP) if n else np.zeros(0, dtype=np.int64)
    if len(values) != n:
        raise ValueError("event times did not come back one per event")
    return values
