"""Events in, an implicit-feedback model out, recommendations served.

This package knows events, models and ranking. It has never heard of Shopify's
HMACs or HTTP; `webhooks/` and `main.py` sit on top of it.
"""

from recommender.errors import RecommenderError

__all__ = ["RecommenderError"]
