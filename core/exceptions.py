"""The platform's one exception hierarchy.

Two branches, as in freqtrade:

* :class:`RetryableError` - temporary trouble (network, timeouts, HTTP 429/5xx, a store
  that is restarting). Prefect tasks retry these, and only these, with backoff.
* :class:`OperationalError` - permanent trouble (bad input, bad configuration, missing
  data, a vendor saying "no"). Retrying cannot help; the message tells the user what to change.

Vendor errors are converted where the vendor client is called (``raise X(...) from e``),
so no layer above ``integrations/`` sees a ``requests`` or ``pymongo`` exception.
Messages never contain secrets.
"""

from __future__ import annotations


class BotAIError(Exception):
    """Base of every error the platform raises on purpose."""


# ---------------------------------------------------------------- retryable
class RetryableError(BotAIError):
    """Temporary failure: the same call may succeed later."""


class ServiceUnavailableError(RetryableError):
    """A peer (MongoDB, an HTTP API, the Prefect API) did not answer or answered 5xx."""


class StoreUnavailableError(ServiceUnavailableError):
    """The MongoDB store did not answer in time or dropped the connection (it may be restarting)."""


class PrefectUnavailableError(ServiceUnavailableError):
    """The Prefect API did not answer in time, refused the connection or answered 5xx."""


class RateLimitedError(RetryableError):
    """The peer asked us to slow down (HTTP 429/418).

    Attributes:
        retry_after_s: seconds the peer asked us to wait, when it said so.
    """

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


# -------------------------------------------------------------- operational
class OperationalError(BotAIError):
    """Permanent failure: retrying the same call cannot succeed."""


class ConfigurationError(OperationalError):
    """Missing or invalid configuration (environment variable, block, settings)."""


class InvalidInputError(OperationalError, ValueError):
    """Input rejected before anything was queued or written; the message names the fix."""


class DataQualityError(OperationalError):
    """Data failed quality checks (NaN/Inf, non-positive prices, high < low, gaps)."""


class InsufficientDataError(OperationalError):
    """Not enough data for the request, e.g. 'Insufficient data: expected 720 samples, found 120'."""


class NotFoundError(OperationalError):
    """A requested record (model, run, strategy, block) does not exist."""


class DuplicateRunError(OperationalError):
    """The same job is already queued or running, e.g. 'Training already in progress for lstm+BTCUSDT'."""


class ConflictError(OperationalError):
    """The request conflicts with a record's current state (e.g. archiving the deployed model);
    the message says what to do first."""


class PeerRejectedError(OperationalError):
    """A peer answered with a permanent error (HTTP 4xx other than 429, or success=false)."""


class LLMDisabledError(OperationalError):
    """The LLM kill switch is on (set by the cost report); callers take their fallback."""


class StoreError(OperationalError):
    """The store refused an operation permanently (bad query, duplicate key, document too large)."""


class DeadLetteredError(OperationalError):
    """A run exhausted its recovery attempts and was moved to the dead-letter collection."""


class TrainingError(OperationalError):
    """Training could not finish (diverged, out of memory at the minimum batch size, time limit)."""


class JobFailedError(OperationalError):
    """A job could not do (all of) its work; the run ends Failed with this message.

    Raised after what was done has been recorded; ``result`` holds the job's result model
    with the per-item outcomes (what succeeded, what did not and why).
    """

    def __init__(self, message: str, result: object | None = None) -> None:
        super().__init__(message)
        self.result = result
