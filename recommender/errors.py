"""One root exception for the package, with narrow subclasses.

`main.py` maps each class to an HTTP status in one place; nothing below the
HTTP layer knows about status codes.
"""


class RecommenderError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(RecommenderError):
    """A setting is missing or invalid; the message names the variable."""


class InvalidParameter(RecommenderError):
    """A caller-supplied value is invalid; `parameter` names it."""

    def __init__(self, parameter: str, message: str):
        super().__init__(message)
        self.parameter = parameter


class PayloadTooLarge(RecommenderError):
    """A request body is larger than its endpoint reads (`limit` bytes); nothing of it was stored."""

    def __init__(self, limit: int, message: str):
        super().__init__(message)
        self.limit = limit


class InvalidEvent(RecommenderError):
    """An event or catalog record cannot be stored as given."""


class ModelNotReady(RecommenderError):
    """No trained model has been published for the shop yet."""


class ArtifactError(RecommenderError):
    """A model artifact is corrupt, truncated or of an unknown format."""


class StoreError(RecommenderError):
    """The event store failed in a way the caller cannot fix (retry later)."""


class ShopNotInstalled(RecommenderError):
    """The shop has not installed the app, or has uninstalled it: nothing is served for it (answers for everyone
    only up to ANSWER_CACHE_SECONDS after an uninstall, on an instance that served the shop just before)."""
