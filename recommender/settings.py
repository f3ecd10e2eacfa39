"""Settings: read from a mapping once, cast and validated, frozen.

Tests pass a dict; entry points pass `os.environ`. Every error names the
variable so a misconfigured deployment says what to fix.
"""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import TYPE_CHECKING, Callable, Mapping, NamedTuple, TypeVar

from recommender.errors import ConfigError
from recommender.events import EventKind
from recommender.store import POSTGRES_SCHEMES

if TYPE_CHECKING:
    from recommender.retraining import GateConfig

T = TypeVar("T")

DEFAULT_EVENT_STORE_URL = "sqlite:///./data/events.sqlite3"
DEFAULT_MODEL_STORE_URL = "file://./data/models"
# Shopify's order and product payloads run to a megabyte or so at the largest; a body is parsed whole after its HMAC
# passes, and its objects take several times its bytes, so the cap keeps one delivery well inside a 256 MiB instance.
DEFAULT_WEBHOOK_MAX_BODY_BYTES = 8 * 1024 * 1024
WEBHOOK_MAX_BODY_CEILING = 32 * 1024 * 1024  # Cloud Run refuses HTTP/1 requests larger than this itself
DEFAULT_EVENT_WEIGHTS = {EventKind.VIEW: 1.0, EventKind.ADD_TO_CART: 4.0, EventKind.PURCHASE: 10.0}


class Secret:
    """A string that never prints itself (repr, str and f-strings show stars)."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class TrainingConfig(NamedTuple):
    """Hyperparameters of the ALS model and of the interaction matrix (a named tuple: see `Settings`)."""

    # Defaults chosen on validation splits carved from the training rows of MovieLens-100k and the Instacart
    # sample (never their test splits): 32 factors and λ 0.5 beat 64 and 0.05 on both (bench/QUALITY.md).
    factors: int = 32  # latent dimensions: more fits finer taste, costs memory and latency linearly
    regularization: float = 0.5  # L2 on factors: higher generalises better on sparse shops
    alpha: float = 2.0  # confidence = 1 + alpha * weight: how much an event outweighs "no event"
    iterations: int = 15  # ALS sweeps; quality plateaus around 10-20
    seed: int = 42  # fixed so a retrain on the same events gives the same model
    copurchase_k: int = 20  # co-purchase neighbours kept per item in the artifact
    event_weights: Mapping[EventKind, float] = MappingProxyType(DEFAULT_EVENT_WEIGHTS)  # read only: shared default


_TRAINING_DEFAULTS = TrainingConfig._field_defaults


class Settings(NamedTuple):
    """Everything configurable, cast and validated. A named tuple, like the other records a serving
    instance builds at start-up: a frozen dataclass compiles its methods at every import (~2 ms each),
    and a new instance imports these modules before its first answer (bench/PERFORMANCE.md)."""

    shopify_api_secret: Secret | None
    event_store_url: str = DEFAULT_EVENT_STORE_URL
    model_store_url: str = DEFAULT_MODEL_STORE_URL
    training: TrainingConfig = TrainingConfig()
    history_limit: int = 200  # latest events of a shopper used for fold-in at request time
    train_token: Secret | None = None  # bearer token the HTTP train entry point requires
    report_token: Secret | None = None  # bearer token the HTTP report entry point requires (unset: no report over HTTP)
    train_service_account: str | None = None  # Cloud Scheduler's service account, verified by OIDC
    train_audience: str | None = None  # the audience Scheduler's token is minted for (the train URL)
    oidc_certs_url: str = "https://www.googleapis.com/oauth2/v1/certs"
    trending_half_life_days: float = 7.0  # a week-old event counts half as much as one today
    catalog_ttl_seconds: float = 30.0  # how stale "what is for sale" may be at serve time
    trending_ttl_seconds: float = 300.0  # how often an instance recomputes trending per shop
    answer_cache_seconds: float = 30.0  # how long an instance reuses an answer that depends on no shopper
    model_refresh_seconds: float = 60.0  # how often a serving instance looks for a newer model
    model_memory_mib: float | None = None  # the models an instance keeps, at most (None: every shop it served)
    quality_gate: bool = True  # publish only models that beat the baselines on recent events
    gate_holdout_days: float = 7.0  # the recent window the gate judges on
    gate_tolerance: float = 0.1  # accepted relative drop from the current model's holdout metric
    gate_min_users: int = 20  # customers the gate ranks in that window needed before it judges (fewer: skipped)
    gate_max_users: int = 20_000  # customers in that window the gate ranks at most (a seeded sample of them beyond)
    retention_days: float = 730.0  # events older than this are pruned by the scheduled job (0: keep all)
    # the scheduled job starts no shop whose last training time no longer fits (0: no budget); the deployed `train`
    # function's timeout is 1800 s, and 300 s are left for a shop slower than its last training
    train_budget_seconds: float = 1500.0
    trust_customer_id_param: bool = False  # local use only: accept ?customer_id= without an app proxy signature
    cors_allowed_origins: tuple[str, ...] = ()  # storefront origins besides https://<shop> (custom domains)
    # proxies of the deployment's own (a load balancer) in front of the functions, each appending to X-Forwarded-For
    # after Google's front end has appended the caller's address: /collect's limit per address reads that entry
    trusted_proxies: int = 0
    # a pixel purchase is credited to a click on an answer's product at most this many days before it (attribution)
    attribution_days: float = 7.0
    # a webhook's body is read up to this many bytes (its HMAC needs all of it); a larger one is refused with 413
    # before it is read whole, and logged: Shopify retries it, so raising the limit stores it on its next attempt
    webhook_max_body_bytes: int = DEFAULT_WEBHOOK_MAX_BODY_BYTES
    # the share of answers (every intent but trending), drawn at random, that best sellers give in the model's place:
    # the control group the attribution report sets the model's answers beside
    control_percent: float = 0.0

    @classmethod
    def from_mapping(cls, env: Mapping[str, str]) -> "Settings":
        secret = env.get("SHOPIFY_API_SECRET") or None
        train_token = env.get("TRAIN_TOKEN") or None
        report_token = env.get("REPORT_TOKEN") or None
        training = TrainingConfig(
            factors=_read(env, "ALS_FACTORS", int, _TRAINING_DEFAULTS["factors"], lambda v: 1 <= v <= 1024, "an integer from 1 to 1024"),
            regularization=_read(env, "ALS_REGULARIZATION", float, _TRAINING_DEFAULTS["regularization"], lambda v: v >= 0, "a number >= 0"),
            alpha=_read(env, "ALS_ALPHA", float, 2.0, lambda v: v > 0, "a number > 0"),
            iterations=_read(env, "ALS_ITERATIONS", int, 15, lambda v: 1 <= v <= 500, "an integer from 1 to 500"),
            seed=_read(env, "TRAIN_SEED", int, 42, lambda v: v >= 0, "an integer >= 0"),
            event_weights=parse_event_weights(env.get("EVENT_WEIGHTS")),
        )
        settings = cls(
            shopify_api_secret=Secret(secret) if secret else None,
            event_store_url=_url(env, "EVENT_STORE_URL", DEFAULT_EVENT_STORE_URL, ("sqlite:///", *POSTGRES_SCHEMES)),
            model_store_url=_url(env, "MODEL_STORE_URL", DEFAULT_MODEL_STORE_URL, ("file://", "gs://")),
            training=training,
            history_limit=_read(env, "HISTORY_LIMIT", int, 200, lambda v: 1 <= v <= 10_000, "an integer from 1 to 10000"),
            train_token=Secret(train_token) if train_token else None,
            report_token=Secret(report_token) if report_token else None,
            train_service_account=env.get("TRAIN_SERVICE_ACCOUNT") or None,
            train_audience=env.get("TRAIN_AUDIENCE") or None,
            oidc_certs_url=env.get("OIDC_CERTS_URL") or "https://www.googleapis.com/oauth2/v1/certs",
            trending_half_life_days=_read(env, "TRENDING_HALF_LIFE_DAYS", float, 7.0, lambda v: 0 < v <= 3650,
                                          "a number of days > 0"),
            catalog_ttl_seconds=_read(env, "CATALOG_TTL_SECONDS", float, 30.0, lambda v: v >= 0, "a number >= 0"),
            trending_ttl_seconds=_read(env, "TRENDING_TTL_SECONDS", float, 300.0, lambda v: v >= 0, "a number >= 0"),
            answer_cache_seconds=_read(env, "ANSWER_CACHE_SECONDS", float, 30.0, lambda v: v >= 0, "a number >= 0"),
            model_refresh_seconds=_read(env, "MODEL_REFRESH_SECONDS", float, 60.0, lambda v: v >= 0, "a number >= 0"),
            model_memory_mib=_read(env, "MODEL_MEMORY_MIB", float, None, lambda v: v > 0, "a number of MiB > 0"),
            quality_gate=_flag(env, "QUALITY_GATE", default=True),
            gate_holdout_days=_read(env, "GATE_HOLDOUT_DAYS", float, 7.0, lambda v: v > 0, "a number of days > 0"),
            gate_tolerance=_read(env, "GATE_TOLERANCE", float, 0.1, lambda v: 0 <= v < 1, "a number from 0 to 1"),
            gate_min_users=_read(env, "GATE_MIN_USERS", int, 20, lambda v: v >= 1, "an integer >= 1"),
            gate_max_users=_read(env, "GATE_MAX_USERS", int, 20_000, lambda v: v >= 1, "an integer >= 1"),
            retention_days=_read(env, "RETENTION_DAYS", float, 730.0, lambda v: v >= 0, "a number of days >= 0"),
            train_budget_seconds=_read(env, "TRAIN_BUDGET_SECONDS", float, 1500.0, lambda v: v >= 0,
                                       "a number of seconds >= 0 (0: no budget)"),
            trust_customer_id_param=_flag(env, "TRUST_CUSTOMER_ID_PARAM"),
            cors_allowed_origins=_origins(env, "CORS_ALLOWED_ORIGINS"),
            trusted_proxies=_read(env, "TRUSTED_PROXIES", int, 0, lambda v: 0 <= v <= 10, "an integer from 0 to 10"),
            attribution_days=_read(env, "ATTRIBUTION_DAYS", float, 7.0, lambda v: 0 < v <= 365,
                                   "a number of days > 0 and at most 365"),
            control_percent=_read(env, "CONTROL_PERCENT", float, 0.0, lambda v: 0 <= v <= 50,
                                  "a percentage from 0 to 50"),
            webhook_max_body_bytes=_read(env, "WEBHOOK_MAX_BODY_BYTES", int, DEFAULT_WEBHOOK_MAX_BODY_BYTES,
                                         lambda v: 65_536 <= v <= WEBHOOK_MAX_BODY_CEILING,
                                         f"an integer of bytes from 65536 to {WEBHOOK_MAX_BODY_CEILING}"),
        )
        if settings.gate_max_users < settings.gate_min_users:
            raise ConfigError(f"GATE_MAX_USERS ({settings.gate_max_users}) must be at least GATE_MIN_USERS "
                              f"({settings.gate_min_users}): the gate cannot judge on fewer customers than it needs")
        return settings

    def gate(self) -> "GateConfig":
        from recommender.retraining import GateConfig

        return GateConfig(self.quality_gate, self.gate_holdout_days, self.gate_tolerance, self.gate_min_users,
                          max_users=self.gate_max_users, trending_half_life_days=self.trending_half_life_days)

    def require_secret(self) -> Secret:
        if self.shopify_api_secret is None:
            raise ConfigError("SHOPIFY_API_SECRET is not set: webhooks cannot be verified without the app's client secret")
        return self.shopify_api_secret


def parse_event_weights(text: str | None) -> dict[EventKind, float]:
    """Parse 'view=1,add_to_cart=4,purchase=10'; kinds left out keep their default."""
    weights = dict(DEFAULT_EVENT_WEIGHTS)
    if not text:
        return weights
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        try:
            kind = EventKind(name)
            weight = float(value) if sep else float("nan")
        except ValueError:
            raise ConfigError(
                f"EVENT_WEIGHTS must look like 'view=1,add_to_cart=4,purchase=10' "
                f"(kinds: {', '.join(k.value for k in EventKind)}), got {text!r}"
            ) from None
        if not (weight >= 0 and math.isfinite(weight)):
            raise ConfigError(f"EVENT_WEIGHTS: the weight of {name!r} must be a number >= 0, got {value!r}")
        weights[kind] = weight
    return weights


def _read(env: Mapping[str, str], name: str, cast: Callable[[str], T], default: T,
          valid: Callable[[T], bool], expected: str) -> T:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = cast(raw)
    except ValueError:
        raise ConfigError(f"{name} must be {expected}, got {raw!r}") from None
    if not valid(value) or (isinstance(value, float) and not math.isfinite(value)):
        raise ConfigError(f"{name} must be {expected}, got {raw!r}")
    return value


def _flag(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    raw = (env.get(name) or ("true" if default else "false")).strip().lower()
    if raw in ("1", "true", "yes"):
        return True
    if raw in ("0", "false", "no"):
        return False
    raise ConfigError(f"{name} must be true or false, got {env.get(name)!r}")


def _origins(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    origins = tuple(part.strip().rstrip("/") for part in (env.get(name) or "").split(",") if part.strip())
    bad = [o for o in origins if not o.startswith(("https://", "http://localhost", "http://127.0.0.1"))]
    if bad:
        raise ConfigError(f"{name} must list origins such as https://www.example.com, got {bad[0]!r}")
    return origins


def _url(env: Mapping[str, str], name: str, default: str, schemes: tuple[str, ...]) -> str:
    value = env.get(name) or default
    if not value.startswith(schemes):
        raise ConfigError(f"{name} must start with one of {', '.join(schemes)}; got {value!r}")
    return value
