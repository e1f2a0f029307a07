"""`tokenfactory keys|usage|invoice`: API keys, usage tables and invoices from the ledger.

Every command takes --data-dir, --database-url, --tiers and --tier-preset, like `serve`. Bad
input is one line on stderr and exit code 2.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from tokenfactory.billing.errors import BillingError
from tokenfactory.billing.money import parse_usd, usd
from tokenfactory.billing.reports import GROUPINGS
from tokenfactory.billing.service import Billing
from tokenfactory.tiers import TierError, load_tiers

keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

DataDirOpt = Annotated[
    Path | None,
    typer.Option(help="Ledger and keys directory (default: $TOKENFACTORY_DATA_DIR or "
                 "~/.local/share/tokenfactory)"),
]
DbOpt = Annotated[
    str | None, typer.Option(help="SQLAlchemy URL of the ledger (default: SQLite in --data-dir)")
]
TiersOpt = Annotated[Path | None, typer.Option(help="Tiers TOML file (default: shipped)")]
PresetOpt = Annotated[str, typer.Option(help="Tier promises preset: cpu or gpu")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]
TaskBudgetOpt = Annotated[
    str | None,
    typer.Option(help="Spend limit per task id in US dollars, 'none' for no limit (requests "
                 "without a task id are not limited by it)"),
]


def fail(message: str) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False, markup=True)
    raise typer.Exit(2)


@contextlib.contextmanager
def open_billing(
    data_dir: Path | None, database_url: str | None, tiers: Path | None, preset: str
) -> Iterator[Billing]:
    try:
        catalog = load_tiers(tiers, preset)
    except TierError as exc:
        fail(str(exc))
    try:
        billing = Billing.open(catalog, database_url, data_dir, progress_interval_s=0)
    except Exception as exc:  # a bad URL, an unreachable server, an unwritable directory
        fail(f"cannot open the ledger: {_one_line(exc)}")
    try:
        yield billing
    except (BillingError, TierError) as exc:
        fail(str(exc))
    finally:
        billing.close()


def _one_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _limit(value: int | None) -> str:
    return "-" if value is None else str(value)


def _usd_or_none(micro: int | None) -> str:
    return "none" if micro is None else "$" + usd(micro)


def _budget_or_none(text: str | None, what: str) -> int | None:
    """A dollar option where 'none' means no limit."""
    if text is None or text.strip().lower() == "none":
        return None
    return parse_usd(text, what)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A name for the key (e.g. who or what uses it)")],
    tier: Annotated[str, typer.Option(help="The key's default and highest tier")],
    account: Annotated[str | None, typer.Option(help="Account billed (default: the name)")] = None,
    budget_usd: Annotated[
        str | None, typer.Option(help="Spend limit in US dollars (default: none)")
    ] = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute (default: no limit)")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute (default: no limit)")] = None,
    task_budget_usd: TaskBudgetOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DbOpt = None,
    tiers: TiersOpt = None,
    tier_preset: PresetOpt = "cpu",
) -> None:
    """Create a key and print it once (it is stored only as a hash)."""
    with open_billing(data_dir, database_url, tiers, tier_preset) as billing:
        budget = None if budget_usd is None else parse_usd(budget_usd, "--budget-usd")
        task_budget = _budget_or_none(task_budget_usd, "--task-budget-usd")
        key, raw = billing.create_key(
            name, tier, account, budget, rpm, tpm, task_budget_micro_usd=task_budget
        )
    print(raw)
    err.print(
        f"created {key.key_id} ({key.prefix}…) for account {key.account!r}, tier {key.tier}, "
        f"budget {_usd_or_none(budget)}, budget per task {_usd_or_none(task_budget)}, "
        f"rpm {_limit(rpm)}, tpm {_limit(tpm)}. Store the key now: it cannot be shown again.",
        highlight=False,
        markup=False,
    )


@keys_app.command("list")
def keys_list(
    account: Annotated[str | None, typer.Option(help="Only this account's keys")] = None,
    as_json: JsonOpt = False,
    data_dir: DataDirOpt = None,
    database_url: DbOpt = None,
    tiers: TiersOpt = None,
    tier_preset: PresetOpt = "cpu",
) -> None:
    """List keys (never the keys themselves: their id and first characters)."""
    with open_billing(data_dir, database_url, tiers, tier_preset) as billing:
        keys = billing.list_keys(account)
        spent = {k.key_id: billing.budget_state(k).spent_micro_usd for k in keys}
    if as_json:
        rows = [
            {
                "key_id": k.key_id, "prefix": k.prefix, "name": k.name, "account": k.account,
                "tier": k.tier, "rpm": k.rpm, "tpm": k.tpm,
                "budget_micro_usd": k.budget_micro_usd, "spent_micro_usd": spent[k.key_id],
                "task_budget_micro_usd": k.task_budget_micro_usd,
                "revoked": k.revoked,
                "created_at": k.created_at.isoformat() if k.created_at else None,
            }
            for k in keys
        ]
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"{len(keys)} API keys")
    for col in ("id", "prefix", "name", "account", "tier", "rpm", "tpm", "budget", "spent",
                "per task", "created (UTC)", "status"):
        table.add_column(col, justify="right" if col in ("rpm", "tpm", "budget", "spent",
                                                         "per task") else "left")
    for k in keys:
        table.add_row(
            k.key_id, k.prefix + "…", k.name, k.account, k.tier, _limit(k.rpm), _limit(k.tpm),
            "-" if k.budget_micro_usd is None else "$" + usd(k.budget_micro_usd),
            "$" + usd(spent[k.key_id]),
            "-" if k.task_budget_micro_usd is None else "$" + usd(k.task_budget_micro_usd),
            k.created_at.strftime("%Y-%m-%d %H:%M") if k.created_at else "",
            "revoked" if k.revoked else "active",
        )
    out.print(table)


@keys_app.command("update")
def keys_update(
    key: Annotated[str, typer.Argument(help="Key id (key_...) or prefix (tf-...)")],
    budget_usd: Annotated[
        str | None, typer.Option(help="Spend limit in US dollars, 'none' for no limit")
    ] = None,
    task_budget_usd: TaskBudgetOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DbOpt = None,
    tiers: TiersOpt = None,
    tier_preset: PresetOpt = "cpu",
) -> None:
    """Change a key's budget or budget per task (a running server: within 5 s)."""
    if budget_usd is None and task_budget_usd is None:
        fail("give --budget-usd or --task-budget-usd (a dollar amount, or none)")
    changes: dict[str, int | None] = {}
    with open_billing(data_dir, database_url, tiers, tier_preset) as billing:
        if budget_usd is not None:
            changes["budget_micro_usd"] = _budget_or_none(budget_usd, "--budget-usd")
        if task_budget_usd is not None:
            changes["task_budget_micro_usd"] = _budget_or_none(
                task_budget_usd, "--task-budget-usd"
            )
        updated = billing.update_key(key, **changes)
    err.print(
        f"updated {updated.key_id} ({updated.prefix}…): budget "
        f"{_usd_or_none(updated.budget_micro_usd)}, budget per task "
        f"{_usd_or_none(updated.task_budget_micro_usd)}",
        highlight=False,
        markup=False,
    )


@keys_app.command("revoke")
def keys_revoke(
    key: Annotated[str, typer.Argument(help="Key id (key_...) or prefix (tf-...)")],
    data_dir: DataDirOpt = None,
    database_url: DbOpt = None,
    tiers: TiersOpt = None,
    tier_preset: PresetOpt = "cpu",
) -> None:
    """Revoke a key: requests with it fail with 401 from now on (a running server: within 5 s)."""
    with open_billing(data_dir, database_url, tiers, tier_preset) as billing:
        revoked = billing.revoke_key(key)
    err.print(f"revoked {revoked.key_id} ({revoked.prefix}…, {revoked.name})", highlight=False,
              markup=False)


def usage_command(
    key: Annotated[str | None, typer.Option(help="Only this key (id or prefix)")] = None,
    account: Annotated[str | None, typer.Option(help="Only this account")] = None,
    since: Annotated[str | None, typer.Option(help="From this day on, YYYY-MM-DD (UTC)")] = None,
    by: Annotated[str, typer.Option(help="Group by tier, day, key, day_tier or task")] = "tier",
    as_json: JsonOpt = False,
    data_dir: DataDirOpt = None,
    database_url: DbOpt = None,
    tiers: TiersOpt = None,
    tier_preset: PresetOpt = "cpu",
) -> None:
    """Requests, tokens and spend from the ledger, grouped by tier, day, key or task id."""
    if by not in GROUPINGS:
        fail(f"--by must be one of: {', '.join(GROUPINGS)}; got {by!r}")
    since_dt = None
    if since is not None:
        try:
            since_dt = datetime.strptime(since, "%Y-%m-%d").replace(tzinfo=UTC)
        except ValueError:
            fail(f"--since must be a day YYYY-MM-DD, got {since!r}")
    with open_billing(data_dir, database_url, tiers, tier_preset) as billing:
        key_id = billing.find_key(key).key_id if key else None
        rows = billing.usage(key_id=key_id, account=account, since=since_dt, by=by)
    if as_json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
        return
    groups = {"tier": ["tier"], "day": ["day"], "key": ["key_id"], "day_tier": ["day", "tier"],
              "task": ["task_id"]}
    table = Table(title="usage" + (f" since {since}" if since else ""))
    for col in groups[by]:
        table.add_column(col)
    for col in ("requests", "prompt", "cached", "completion", "amount (USD)"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            *["-" if getattr(r, c) is None else str(getattr(r, c)) for c in groups[by]],
            str(r.requests), str(r.prompt_tokens), str(r.cached_tokens),
            str(r.completion_tokens), usd(r.amount_micro_usd),
        )
    table.add_section()
    table.add_row(
        "total", *[""] * (len(groups[by]) - 1),
        str(sum(r.requests for r in rows)), str(sum(r.prompt_tokens for r in rows)),
        str(sum(r.cached_tokens for r in rows)), str(sum(r.completion_tokens for r in rows)),
        usd(sum(r.amount_micro_usd for r in rows)),
    )
    out.print(table)


def invoice_command(
    account: Annotated[str, typer.Option(help="The account billed")],
    month: Annotated[str, typer.Option(help="The month, YYYY-MM (UTC)")],
    fmt: Annotated[str, typer.Option("--format", help="csv or json")] = "csv",
    by: Annotated[str, typer.Option(help="A line per tier, or per task id and tier")] = "tier",
    out_file: Annotated[Path | None, typer.Option("--out", help="Write here, not stdout")] = None,
    data_dir: DataDirOpt = None,
    database_url: DbOpt = None,
    tiers: TiersOpt = None,
    tier_preset: PresetOpt = "cpu",
) -> None:
    """One account's invoice for a month: a line per tier delivered (or per task id and tier),
    tokens, prices, total."""
    if fmt not in ("csv", "json"):
        fail(f"--format must be csv or json, got {fmt!r}")
    if by not in ("tier", "task"):
        fail(f"--by must be tier or task, got {by!r}")
    with open_billing(data_dir, database_url, tiers, tier_preset) as billing:
        inv = billing.invoice(account, month, by_task=by == "task")
    text = inv.to_csv() if fmt == "csv" else inv.to_json()
    if out_file is None:
        print(text, end="")
        return
    try:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(text)
    except OSError as exc:
        fail(f"cannot write {out_file}: {exc.strerror or exc}")
    err.print(f"wrote {out_file} ({len(inv.lines)} lines, total ${inv.total_usd})",
              highlight=False, markup=False)
