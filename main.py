"""Cloud Functions entry points: HTTP in, package calls, JSON out.

Deploy each entry point on its own (`webhook`, `recommend`, `train`, `healthz`)
or `app`, which routes by path, as one function. Nothing here reads the
environment or opens a store at import time; the first request does.
"""

from __future__ import annotations

import functools
import hmac
import logging
import os
import time
from dataclasses import asdict

import flask
import functions_framework

from recommender.errors import (
    ArtifactError, ConfigError, InvalidParameter, ModelNotReady, RecommenderError, StoreError,
)
from recommender.runtime import LazyRuntime
from recommender.intents import RecommendRequest
from webhooks.app_proxy import AccessDenied, storefront_query
from webhooks.delivery import handle_webhook

log = logging.getLogger("main")
_runtime = LazyRuntime(os.environ)

# Every error the packages raise on purpose, translated to HTTP once.
ERROR_STATUS: list[tuple[type[Exception], int, str]] = [
    (InvalidParameter, 400, "invalid_parameter"),
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
        except RecommenderError as exc:
            status, code = next((s, c) for cls, s, c in ERROR_STATUS if isinstance(exc, cls))
            body = {"error": code, "message": str(exc)}
            if isinstance(exc, InvalidParameter):
                body["parameter"] = exc.parameter
            if status >= 500:
                log.error("%s failed: %s", handler.__name__, exc)
            return _json(body, status)
        except Exception:  # a failure we cannot handle: 5xx so Shopify and callers retry
            log.exception("%s failed", handler.__name__)
            return _json({"error": "internal_error", "message": "unexpected failure; retry later"}, 500)

    return wrapped


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
    runtime = _runtime.get()
    outcome = handle_webhook(request.headers, request.get_data(), runtime.settings.require_secret().reveal(),
                             runtime.store)
    return _json(outcome.body(), outcome.status)


def _cors(request: flask.Request, shop: str | None, allowed: tuple[str, ...]) -> dict[str, str]:
    """CORS for the shop's own storefront origins: https://<shop> and the configured custom domains."""
    origin = request.headers.get("Origin", "").rstrip("/")
    if origin and (origin == f"https://{shop}" or origin in allowed):
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    return {}


@functions_framework.http
@_json_errors
def recommend(request: flask.Request) -> flask.Response:
    """GET ?shop=&intent=&product_id=&product_ids=&n=… (customer_id via the app proxy) → ranked, explained items."""
    runtime = _runtime.get()
    settings = runtime.settings
    if request.method == "OPTIONS":
        headers = _cors(request, (request.args.get("shop") or "").lower(), settings.cors_allowed_origins)
        headers.update({"Access-Control-Allow-Methods": "GET, OPTIONS", "Access-Control-Max-Age": "3600"})
        return flask.Response(status=204, headers=headers)
    if (refused := _require_method(request, "GET")) is not None:
        return refused
    try:
        query = storefront_query(list(request.args.items(multi=True)), settings.shopify_api_secret and
                                 settings.shopify_api_secret.reveal(), settings.trust_customer_id_param, time.time())
    except AccessDenied as denied:
        return _json({"error": denied.code, "message": str(denied)}, denied.status)
    wanted = RecommendRequest.from_query(query)
    result = runtime.recommender.recommend(wanted)
    body = {
        "recommendation_id": result.recommendation_id,
        "model_version": result.model_version,
        "intent": result.intent,
        "strategy": result.strategy,
        "fallback_from": result.fallback_from,
        "fallback_reason": result.fallback_reason,
        "recommendations": [{**asdict(item), "score": round(item.score, 6)} for item in result.items],
    }
    headers = {"Cache-Control": "private, no-store" if wanted.personal else "public, max-age=60"}
    headers.update(_cors(request, wanted.shop, settings.cors_allowed_origins))
    return _json(body, headers=headers)


@functions_framework.http
@_json_errors
def train(request: flask.Request) -> flask.Response:
    """POST [?shop=] with `Authorization: Bearer $TRAIN_TOKEN`: train and publish each shop's model."""
    if (refused := _require_method(request, "POST")) is not None:
        return refused
    runtime = _runtime.get()
    token = runtime.settings.train_token
    supplied = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if token is None:
        return _json({"error": "training_disabled", "message": "set TRAIN_TOKEN to enable training over HTTP"}, 403)
    if not hmac.compare_digest(supplied.encode(), token.reveal().encode()):
        return _json({"error": "unauthorized", "message": "Authorization: Bearer <TRAIN_TOKEN> required"}, 401)
    from recommender.training import train_shops  # training imports scipy/implicit: never on the serving path

    shop = request.args.get("shop")
    reports = train_shops(runtime.store, runtime.model_store, runtime.settings.training, [shop.lower()] if shop else None)
    return _json(reports)


@functions_framework.http
def healthz(request: flask.Request) -> flask.Response:
    return _json({"status": "ok"})


ROUTES = {"/webhooks": webhook, "/recommend": recommend, "/train": train, "/healthz": healthz}


@functions_framework.http
def app(request: flask.Request) -> flask.Response:
    """All entry points behind one function, routed by path (local use, single-function deploys)."""
    handler = ROUTES.get(request.path.rstrip("/") or "/")
    if handler is None:
        return _json({"error": "not_found", "message": f"no route {request.path}; try {', '.join(ROUTES)}"}, 404)
    return handler(request)
