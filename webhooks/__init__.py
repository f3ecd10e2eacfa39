"""Shopify's webhook protocol: verification, and topic payloads → recommender values.

Depends on `recommender`; `recommender` never imports this package.
"""


class WebhookError(Exception):
    """Root of every error this package raises on purpose."""


class MalformedPayload(WebhookError):
    """The body was verified but does not have the shape its topic promises."""
