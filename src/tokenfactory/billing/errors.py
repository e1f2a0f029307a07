"""Billing's failures, each carrying what the HTTP layer needs to answer in OpenAI's shape.

`status_code`, `type`, `code` and `param` follow OpenAI's error body; `headers` are the response
headers to send with it (Retry-After and x-ratelimit-* for rate limits). Messages never contain
a raw API key.
"""

from __future__ import annotations


class BillingError(Exception):
    """Base class of every error billing raises on purpose."""

    status_code = 400
    type = "invalid_request_error"
    code: str | None = None
    param: str | None = None

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message
        self.headers: dict[str, str] = {}


class BillingInputError(BillingError, ValueError):
    """A bad argument to a billing operation (unknown tier, negative budget, bad month...)."""

    code = "invalid_value"


class KeyNotFoundError(BillingInputError):
    """No key has this id or prefix (or the prefix names several keys)."""

    status_code = 404
    code = "key_not_found"


class InvalidApiKeyError(BillingError):
    """The API key is missing, malformed, unknown or revoked."""

    status_code = 401
    code = "invalid_api_key"

    def __init__(self, message: str = "Incorrect or missing API key."):
        super().__init__(message)


class TierNotAllowedError(BillingError):
    """The key may not use the requested tier (a key may use its tier and any slower one)."""

    status_code = 403
    code = "tier_not_allowed"
    param = "service_tier"

    def __init__(self, tier: str, allowed: list[str], key_tier: str):
        self.tier = tier
        self.allowed = list(allowed)
        super().__init__(
            f"This API key may not use service tier {tier!r}: its tier is {key_tier!r}; "
            f"allowed: {', '.join(self.allowed) or 'none'}."
        )


class RateLimitExceededError(BillingError):
    """A per-key token bucket (requests or tokens per minute) is empty."""

    status_code = 429
    code = "rate_limit_exceeded"

    def __init__(
        self, message: str, *, limit_type: str, retry_after_s: float, headers: dict[str, str]
    ):
        super().__init__(message)
        self.limit_type = limit_type  # "requests" | "tokens"
        self.type = limit_type  # OpenAI puts the limit's kind in the error type
        self.retry_after_s = retry_after_s
        self.headers = dict(headers)


class InsufficientQuotaError(BillingError):
    """Reserving this request's maximum cost would take the key past its budget."""

    status_code = 429
    type = "insufficient_quota"
    code = "insufficient_quota"

    def __init__(
        self,
        *,
        budget_micro_usd: int,
        committed_micro_usd: int,
        needed_micro_usd: int,
        task_id: str | None = None,
    ):
        self.budget_micro_usd = budget_micro_usd
        self.committed_micro_usd = committed_micro_usd
        self.needed_micro_usd = needed_micro_usd
        self.task_id = task_id  # set when the key's budget per task refused it
        from tokenfactory.billing.money import usd

        budget = f"this key's ${usd(budget_micro_usd)} budget"
        if task_id is not None:
            budget = f"this key's ${usd(budget_micro_usd)} budget per task for task {task_id!r}"
        super().__init__(
            f"You exceeded your current quota: this request may cost up to ${usd(needed_micro_usd)}"
            f" and ${usd(committed_micro_usd)} of {budget} is already spent or reserved."
        )


class LedgerUnavailableError(BillingError):
    """The billing database cannot be reached (restarting, network): nothing can be admitted
    or billed until it is back, so the request is refused before it runs."""

    status_code = 503
    type = "server_error"
    code = "ledger_unavailable"

    def __init__(self, retry_after_s: float = 2.0):
        super().__init__(
            "The billing database is unavailable, so this server cannot admit requests right "
            "now. Nothing was billed for this request. Please retry shortly."
        )
        self.retry_after_s = retry_after_s
        self.headers = {"retry-after": str(max(1, round(retry_after_s)))}
