"""Billing: API keys (hashed), per-key rate limits and budgets, reservations, the ledger,
usage and invoices. Imports only `tokenfactory.tiers`; never the engine or the server."""

from tokenfactory.billing.errors import (
    BillingError,
    BillingInputError,
    InsufficientQuotaError,
    InvalidApiKeyError,
    KeyNotFoundError,
    LedgerUnavailableError,
    RateLimitExceededError,
    TierNotAllowedError,
)
from tokenfactory.billing.keys import ApiKey
from tokenfactory.billing.ledger import LedgerEntry, Reservation
from tokenfactory.billing.reports import Invoice, InvoiceLine, UsageRow
from tokenfactory.billing.service import Billing, BudgetState, default_data_dir

__all__ = [
    "ApiKey",
    "Billing",
    "BillingError",
    "BillingInputError",
    "BudgetState",
    "InsufficientQuotaError",
    "InvalidApiKeyError",
    "Invoice",
    "InvoiceLine",
    "KeyNotFoundError",
    "LedgerEntry",
    "LedgerUnavailableError",
    "RateLimitExceededError",
    "Reservation",
    "TierNotAllowedError",
    "UsageRow",
    "default_data_dir",
]
