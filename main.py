"""Cloud Functions entry points: HTTP in, package calls, JSON out.

Deploy each entry point on its own (`webhook`, `recommend`, `collect`, `train`, `report`,
`healthz`, and the CloudEvent `webhook_pubsub`) or `app`, which routes by path, as
one function. Nothing here opens a store at import time; the first request does. Read
from the environment at import: LOG_LEVEL (log lines as JSON on stderr, recommender/logs.py)
and PRELOAD_SHOPS (with MODEL_STORE_URL and MODEL_MEMORY_MIB): those shops' models load beside the imports
(recommender/prefetch.py, recommender/preload.py), and the import ends once they are loaded;
and EVENT_STORE_URL's scheme: with PostgreSQL, its driver is imported here too.
The one thing written is OPENBLAS_NUM_THREADS=1, when the deployment has not set it. The
cyclic garbage collector is off while everything is imported; then the imported objects are
frozen out of its sight (`gc.freeze`) and it is turned back on, on the last lines.
"""

from __future__ import annotations

import base64
import binascii
import functools
import gc
import logging
import os
import time

import flask
import functions_framework

# The imports below make ~42k objects that live as long as the instance and almost no garbage (10 unreachable
# objects, ~10 KB): the cyclic collector's passes over them while they are made cost ~4 ms of a cold start
# (bench/PERFORMANCE.md). It stays off until they are frozen, on the last lines.
_COLLECTING = gc.isenabled()
gc.disable()

# One BLAS thread per request unless the deployment says otherwise: gunicorn's threads already fill the
# CPUs, and OpenBLAS's own pool on top of them cut throughput to a third (bench/PERFORMANCE.md). It must be
# set before numpy is first imported, just below.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# Log lines as JSON on stderr at LOG_LEVEL (recommender/logs.py), before the preload threads below can log.
from recommender.logs import configure as _configure_logging  # noqa: E402

_configure_logging(os.environ)

# With PRELOAD_SHOPS and the models in gs://, their bytes start downloading now, on a thread that waits on the
# network while numpy and the serving modules are imported (recommender/prefetch.py: no numpy there).
from recommender.prefetch import PREFETCH  # noqa: E402 (before numpy, on purpose)

PREFETCH.start(os.environ)

# Then the serving path (numpy, artifact, model store), and with PRELOAD_SHOPS set, those shops' models
# start loading on a second thread while everything below is imported (recommender/preload.py).
from recommender.preload import PRELOADER  # noqa: E402 (after the BLAS default, on purpose)

PRELOADER.start(os.environ)

# With the events in PostgreSQL, its driver is imported here, in gunicorn's master before it binds the port, not by
# a new worker's first request: Cloud Run routes requests to an instance once its port accepts connections, and
# psycopg's import (~80 ms) made that first request the slowest of all (bench/PERFORMANCE.md, round 20). The
# connection is still made by the first request: it must not cross the fork.
from recommender.store import POSTGRES_SCHEMES  # noqa: E402

if os.environ.get("EVENT_STORE_URL", "").startswith(POSTGRES_SCHEMES):
    import recommender.store_postgres  # noqa: E402, F401

from recommender.errors import (  # noqa: E402 (after the preload has started, on purpose)
    ArtifactError, ConfigError, InvalidParameter, ModelNotReady, PayloadTooLarge, RecommenderError, ShopNotInstalled,
    StoreError,
)
from recommender.intents import RecommendRequest
from recommender.model_store import check_shop_domain
from recommender.runtime import LazyRuntime
from webhooks import MalformedPayload
from webhooks.app_proxy import AccessDenied, storefront_query

log = logging.getLogger("main")
_runtime = LazyRuntime(os.environ, PRELOADER)

# Every error the packages raise on purpose, translated to HTTP once.
ERROR_STATUS: list[tuple[type[Exception], int, str]] = [
    (InvalidParameter, 400, "invalid_parameter"),
    (MalformedPayload, 400, "malformed_payload"),
    (PayloadTooLarge, 413, "payload_too_large"),
    (ShopNotInstalled, 404, "shop_not_installed"),
    (ModelNotReady, 503, "model_not_ready"),
    (ArtifactError, 503, "model_unavailable"),
    (StoreError, 503, "store_unavailable"),
    (ConfigError, 500, "misconfigured"),
    (RecommenderError, 500, "internal_error"),
]


def _json(body: dict, status: int = 200, headers: dict | None = None) -> flask.Response:
    response = flask.jsonify(body)
    response.status_code = status
    response.headers.update(headers or {})
    return response


def _json_errors(handler):
    @functools.wraps(handler)
    def wrapped(request: flask.Request) -> flask.Response:
        try:
            return handler(request)
        except (RecommenderError, MalformedPayload) as exc:
            status, code = next((s, c) for cls, s, c in ERROR_STATUS if isinstance(exc, cls))
            body = {"error": code, "message": str(exc)}
            if isinstance(exc, InvalidParameter):
                body["parameter"] = exc.parameter
            if isinstance(exc, PayloadTooLarge):
                body["limit_bytes"] = exc.limit
            if status >= 500:
                log.error("%s failed: %s", handler.__name__, exc)
            return _json(body, status)
        except Exception:  # a failure we cannot handle: 5xx so Shopify and callers retry
            log.exception("%s failed", handler.__name__)
            return _json({"error": "internal_error", "message": "unexpected failure; retry later"}, 500)

    return wrapped


def _body(request: flask.Request, limit: int) -> bytes:
    """The request's body, refused past `limit` bytes (PayloadTooLarge) before anything checks or parses it: at once
    where its Content-Length says so, else once read (a chunked body). functions-framework reads every body to its end
    before it responds, so that the connection stays usable: a refused body is drained there, never parsed."""
    if (request.content_length or 0) > limit:
        raise PayloadTooLarge(limit, f"the body is larger than {limit} bytes")
    raw = request.get_data(cache=False)
    if len(raw) > limit:
        raise PayloadTooLarge(limit, f"the body is larger than {limit} bytes")
    return raw


def _require_method(request: flask.Request, *methods: str) -> flask.Response | None:
    if request.method in methods:
        return None
    return _json({"error": "method_not_allowed", "message": f"use {' or '.join(methods)}"}, 405,
                 {"Allow": ", ".join(methods)})


@functions_framework.http
@_json_errors
def webhook(request: flask.Request) -> flask.Response:
    """Shopify webhooks, every topic: verify, translate, store, then acknowledge."""
    if (refused := _require_method(request, "POST")) is not None:
        return refused
    from webhooks.delivery import handle_webhook  # topics and compliance: not on /recommend's cold start

    runtime = _runtime.get()
    limit = runtime.settings.webhook_max_body_bytes
    try:
        raw = _body(request, limit)
    except PayloadTooLarge:  # unverified: the headers name what it claims to be, for the merchant to recognise
        log.error("webhook refused (413): its body (Content-Length %s) is larger than WEBHOOK_MAX_BODY_BYTES=%d; "
                  "Shopify retries it, and a higher limit stores it (topic %.80r, shop %.80r, webhook id %.80r, "
                  "unverified)", request.content_length, limit, request.headers.get("X-Shopify-Topic"),
                  request.headers.get("X-Shopify-Shop-Domain"), request.headers.get("X-Shopify-Webhook-Id"))
        raise
    outcome = handle_webhook(request.headers, raw, runtime.settings.require_secret().reveal(),
                             runtime.store, runtime.model_store)
    return _json(outcome.body(), outcome.status)


def _cors(request: flask.Request, shop: str | None, allowed: tuple[str, ...]) -> dict[str, str]:
    """CORS for the shop's own storefront origins: https://<shop> and the configured custom domains."""
    origin = request.headers.get("Origin", "").rstrip("/")
    if origin and (origin == f"https://{shop}" or origin in allowed):
        return {"Access-Control-Allow-Origin": origin}
    return {}


def _storefront_cors(handler):
    """`_cors` on every response of a storefront's endpoint, errors included (its script reads why it was refused as
    it reads an answer), and `Vary: Origin` on all of them: a cache keeps one copy per origin."""

    @functools.wraps(handler)
    def wrapped(request: flask.Request) -> flask.Response:
        response = handler(request)
        try:
            allowed = _runtime.settings().cors_allowed_origins
        except ConfigError:  # the response is the 500 that names the variable: the shop's own origin may read it
            allowed = ()
        shop = (request.args.getlist("shop") or [""])[-1].lower()  # the last, as the app proxy's signature check reads
        response.headers.update(_cors(request, shop, allowed))
        response.vary.add("Origin")
        return response

    return wrapped


@functions_framework.http
@_storefront_cors
@_json_errors
def recommend(request: flask.Request) -> flask.Response:
    """GET ?shop=&intent=&product_id=&product_ids=&n=… (customer_id via the app proxy) → ranked, explained items."""
    settings = _runtime.settings()
    if request.method == "OPTIONS":
        return flask.Response(status=204, headers={"Access-Control-Allow-Methods": "GET, OPTIONS",
                                                   "Access-Control-Max-Age": "3600"})
    if (refused := _require_method(request, "GET")) is not None:
        return refused
    try:
        query = storefront_query(list(request.args.items(multi=True)), settings.shopify_api_secret and
                                 settings.shopify_api_secret.reveal(), settings.trust_customer_id_param, time.time())
    except AccessDenied as denied:
        return _json({"error": denied.code, "message": str(denied)}, denied.status)
    wanted = RecommendRequest.from_query(query)
    # A new instance's first model loads while its event store opens and the shop is checked (round 30 of
    # bench/PERFORMANCE.md).
    try:
        _runtime.load_soon(wanted.shop)
        result = _runtime.get().recommender.recommend(wanted)
    finally:  # a load this request began and did not take (a shop not installed, the store down) is not kept
        _runtime.forget_soon(wanted.shop)
    body = {
        "recommendation_id": result.recommendation_id,
        "model_version": result.model_version,
        "intent": result.intent,
        "strategy": result.strategy,
        "fallback_from": result.fallback_from,
        "fallback_reason": result.fallback_reason,
        "arm": result.arm,
        "recommendations": [{**item._asdict(), "score": round(item.score, 6)} for item in result.items],
    }
    return _json(body, headers={"Cache-Control": "private, no-store" if wanted.personal else "public, max-age=60"})


@functions_framework.http
@_json_errors
def train(request: flask.Request) -> flask.Response:
    """POST [?shop=] from Cloud Scheduler (OIDC) or with `Bearer $TRAIN_TOKEN`: train and publish each shop, started
    longest ago first, as many as TRAIN_BUDGET_SECONDS holds (the others are deferred to the next run)."""
    if (refused := _require_method(request, "POST")) is not None:
        return refused
    from webhooks.oidc import check_train_caller

    runtime = _runtime.get()
    settings = runtime.settings
    check = check_train_caller(request.headers.get("Authorization"),
                               settings.train_token.reveal() if settings.train_token else None,
                               settings.train_service_account, settings.train_audience or request.base_url,
                               settings.oidc_certs_url)
    if not check.allowed:
        if check.reason == "training_disabled":
            return _json({"error": "training_disabled", "message": "set TRAIN_TOKEN or TRAIN_SERVICE_ACCOUNT to "
                                                                   "enable training over HTTP"}, 403)
        if check.reason == "certificates_unavailable":  # an outage, not a bad token: the scheduler's retry may pass
            return _json({"error": "certificates_unavailable",
                          "message": f"Google's OIDC certificates could not be read ({check.caller})"}, 503)
        return _json({"error": "unauthorized", "reason": check.reason,
                      "message": "Authorization: Bearer <TRAIN_TOKEN or a Cloud Scheduler OIDC token> required"}, 401)
    from recommender.retraining import run_scheduled_training  # scipy/implicit: never on the serving path

    shop = request.args.get("shop")
    reports = run_scheduled_training(runtime.store, runtime.model_store, settings.training, settings.gate(),
                                     settings.retention_days, [shop.lower()] if shop else None,
                                     budget_seconds=settings.train_budget_seconds)
    # A shop that failed (the others were trained): 500, so that the scheduler's run shows as failed and the log's
    # error is looked at; the body says what was trained and what failed.
    return _json(reports, 500 if reports["failed"] or reports["queue_errors"] else 200)


@functions_framework.cloud_event
def webhook_pubsub(cloud_event) -> None:
    """Shopify webhooks delivered to Google Cloud Pub/Sub: the same handlers, trusted by the subscription.

    Returning acknowledges the message; raising (store down) makes Pub/Sub redeliver it.
    A message that can never be stored is logged and acknowledged, since redelivery cannot fix it.
    """
    message = (cloud_event.data or {}).get("message") or {}
    try:
        body = base64.b64decode(message.get("data") or "", validate=True)
    except (binascii.Error, ValueError):
        log.error("pubsub message %s: data is not base64; dropped", message.get("messageId"))
        return
    from webhooks.delivery import process_delivery

    runtime = _runtime.get()
    outcome = process_delivery(message.get("attributes") or {}, body, runtime.store, runtime.model_store)
    if outcome.status >= 400:
        log.error("pubsub message %s dropped: %s", message.get("messageId"), outcome.body())


@functions_framework.http
@_json_errors
def collect(request: flask.Request) -> flask.Response:
    """POST ?shop= with Web Pixel events (sendBeacon): views, cart changes, completed checkouts, and the storefront's
    views and clicks of `/recommend`'s answers (for attribution, stored apart from the events)."""
    if request.method == "OPTIONS":
        return flask.Response(status=204, headers={"Access-Control-Allow-Origin": "*",
                                                   "Access-Control-Allow-Methods": "POST"})
    if (refused := _require_method(request, "POST")) is not None:
        return refused
    from webhooks import pixel  # the write path's records: not on /recommend's cold start

    raw = _body(request, pixel.MAX_BODY_BYTES)
    shop = check_shop_domain((request.args.get("shop") or "").lower())
    runtime = _runtime.get()
    payload = pixel.parse_pixel_body(raw)
    events, signals, ignored = pixel.read_beacon(payload, shop)
    address = _client_address(request, runtime.settings.trusted_proxies)
    clients = {e.anonymous_id for e in events} | {s.client_id for s in signals} or {"-"}
    cost = max(1, len(events) + len(signals))  # rows to write, for the limit per address
    # A client is charged per storefront event: a checkout of 80 products is one (charged per row, it cost more than
    # the client's burst and was refused however long the client had waited), and so is an answer's view.
    taken = max(1, len({e.delivery_id for e in events} | {s.event_id for s in signals}))
    if not pixel.PER_ADDRESS.allow(f"{shop}|{address}", cost) or not all(
            pixel.PER_CLIENT.allow(f"{shop}|{client}", taken) for client in clients):
        return _json({"error": "rate_limited", "message": "too many events; slow down"}, 429, {"Retry-After": "5"})
    # Stored only if the shop is installed, checked in the same transaction (one round trip on PostgreSQL).
    stored = runtime.store.add_beacon_if_installed(shop, events, signals)
    if stored is None:
        return _json({"error": "unknown_shop", "message": f"{shop} has not installed the app"}, 403)
    return _json({"status": "stored", "events": stored[0], "recommendation_events": stored[1], "ignored": ignored},
                 headers={"Access-Control-Allow-Origin": "*"})


def _client_address(request: flask.Request, proxies: int) -> str:
    """The caller's address: the X-Forwarded-For entry Google's front end appended, the last but the `proxies` the
    deployment's own load balancers appended after it. The entries before it are whatever the caller sent: keyed on
    the first, the limit per address went to anyone who writes the header."""
    hops = [hop.strip() for hop in (request.headers.get("X-Forwarded-For") or "").split(",") if hop.strip()]
    if len(hops) > proxies:
        return hops[-1 - proxies]
    return request.remote_addr or (hops[0] if hops else "")


@functions_framework.http
def healthz(request: flask.Request) -> flask.Response:
    return _json({"status": "ok"})


@functions_framework.http
@_json_errors
def report(request: flask.Request) -> flask.Response:
    """GET ?shop=&days= with `Bearer $REPORT_TOKEN`: the shop's attribution report (what `python -m recommender report`
    prints: answers viewed, clicks, attributed purchases and revenue, per intent and per arm), for an app's admin."""
    if (refused := _require_method(request, "GET")) is not None:
        return refused
    import hmac

    from recommender.attribution import DEFAULT_REPORT_DAYS, attribution_report
    from webhooks.oidc import bearer_token

    settings = _runtime.settings()
    if settings.report_token is None:
        return _json({"error": "reporting_disabled", "message": "set REPORT_TOKEN to serve the report over HTTP"}, 403)
    supplied = bearer_token(request.headers.get("Authorization"))
    if supplied is None or not hmac.compare_digest(supplied.encode(), settings.report_token.reveal().encode()):
        return _json({"error": "unauthorized", "message": "Authorization: Bearer <REPORT_TOKEN> required"}, 401)
    shop = check_shop_domain((request.args.get("shop") or "").lower())
    days = _report_days(request.args.get("days"), DEFAULT_REPORT_DAYS)
    runtime = _runtime.get()
    if not runtime.store.is_shop_installed(shop):
        raise ShopNotInstalled(f"{shop} has not installed the app (or has uninstalled it)")
    body = attribution_report(runtime.store, shop, days, settings.attribution_days)
    return _json(body, headers={"Cache-Control": "private, no-store"})


def _report_days(raw: str | None, default: float) -> float:
    """`days` of `/report`: the window, more than 0 and at most 365 days (`default` when not given)."""
    if raw is None or raw == "":
        return default
    try:
        days = float(raw)
    except ValueError:
        days = float("nan")
    if not 0 < days <= 365:  # NaN fails too
        raise InvalidParameter("days", f"days must be a number of days > 0 and at most 365, got {raw!r}")
    return days


ROUTES = {"/webhooks": webhook, "/recommend": recommend, "/collect": collect, "/train": train, "/report": report,
          "/healthz": healthz}


@functions_framework.http
def app(request: flask.Request) -> flask.Response:
    """All entry points behind one function, routed by path (local use, single-function deploys)."""
    handler = ROUTES.get(request.path.rstrip("/") or "/")
    if handler is None:
        return _json({"error": "not_found", "message": f"no route {request.path}; try {', '.join(ROUTES)}"}, 404)
    return handler(request)


# With PRELOAD_SHOPS, this import ends once those models are loaded: gunicorn binds the port after it, and Cloud
# Run sends a new instance requests as soon as its port accepts connections (the default TCP startup probe), so
# no shopper routed to a scale-out instance waits for its model (before, only gunicorn's fork waited, with the
# port already open; bench/PERFORMANCE.md, round 20).
PRELOADER.wait()

# Everything imported so far (flask, numpy, these modules: ~42k objects) lives as long as the instance. Frozen,
# the cyclic collector never walks it again: its full passes over an instance's objects cost 13–26 ms, one or
# two per 4,000 answers, and walking them wrote to every page the worker shares with gunicorn's master
# (bench/PERFORMANCE.md). Reference counting still frees any of them that is dropped.
gc.freeze()
if _COLLECTING:
    gc.enable()
