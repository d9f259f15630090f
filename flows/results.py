"""What flows achieved: the orders that redeemed their codes, and each A/B split's results per branch.

A code counts as redeemed when an order's discount codes include it; the revenue is those orders'
totals. A split's branch is known from its run's `split` trace line (the branch and when it was
entered); the emails and codes a run made from then on count for that branch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from encore_retention.core.store.models import Order, Shop
from encore_retention.flows.models import FlowEffect, FlowRun, FlowTrace
from encore_retention.flows.rules import position_label, share_text
from encore_retention.flows.schema import Flow, SplitStep
from encore_retention.flows.steps import walk

SPLIT = "split"  # the trace kind of a split: its detail holds the branch entered


@dataclass(frozen=True)
class Redemption:
    """An order that used a code a flow made; `owner` is what the code counts for (a flow's key, a code)."""

    owner: str
    placed_at: datetime
    total: Decimal
    currency: str | None


def redemptions(
    db: Any, shop_ids: list[int], since: datetime, codes: Mapping[tuple[int, str], str]
) -> list[Redemption]:
    """The orders placed since `since` (not cancelled or deleted) whose discount codes include one of `codes`
    (`(shop id, CODE)` -> what it counts for); an order counts once, for its first such code."""

    if not codes:
        return []
    found: list[Redemption] = []
    orders = db.execute(
        select(Order.shop_id, Order.discount_codes, Order.total, Order.currency, Order.placed_at).where(
            Order.shop_id.in_(shop_ids),
            Order.placed_at >= since,
            Order.deleted.is_(False),
            Order.cancelled_at.is_(None),
        )
    ).all()
    for shop_id, order_codes, total, currency, placed_at in orders:
        for code in order_codes or []:
            owner = codes.get((shop_id, str(code).upper()))
            if owner is not None:
                found.append(Redemption(owner, placed_at, total or Decimal("0"), currency))
                break
    return found


# ---- A/B splits ------------------------------------------------------------------------------------


@dataclass
class BranchResult:
    """One branch of a split: its share, the runs that entered it, their emails and codes from then on, the
    codes redeemed and those orders' revenue."""

    split: str
    """The split step's label (`steps[2]`)."""
    branch: str
    share: Decimal | None = None
    """The branch's percentage of the runs, as the flow file gives it (None: the flow no longer has it)."""
    runs: int = 0
    emails: int = 0
    codes: int = 0
    redeemed: int = 0
    revenue: Decimal = Decimal("0")
    currency: str | None = None

    @property
    def share_text(self) -> str:
        """The share as a marketer writes it: `50%`, `33.33%`; empty when unknown."""
        return "" if self.share is None else f"{share_text(self.share)}%"


def split_shares(flow: Flow | None) -> list[tuple[str, str, Decimal]]:
    """(split label, branch, percentage) of every branch of every split in a flow, in the file's order."""
    if flow is None:
        return []
    return [
        (position_label(position), name, share)
        for position, step in walk(flow.steps)
        if isinstance(step, SplitStep)
        for name, share in step.shares()
    ]


def branch_results(
    db: Any, shop_ids: list[int], flow_key: str, since: datetime, flow: Flow | None = None
) -> list[BranchResult]:
    """A flow's split results per branch over the runs that entered a branch since `since`, in the shops.

    Every branch of `flow` (the loaded version) is listed, in its order, even before a run entered it;
    branches only older versions had follow, by label and name.
    """

    results = {(label, name): BranchResult(label, name, share) for label, name, share in split_shares(flow)}
    if not shop_ids:
        return list(results.values())
    entered: dict[int, list[tuple[str, str, datetime]]] = {}
    for run_id, label, detail, at in db.execute(
        select(FlowTrace.run_id, FlowTrace.step, FlowTrace.detail, FlowTrace.at)
        .join(FlowRun, FlowRun.id == FlowTrace.run_id)
        .where(
            FlowRun.flow_key == flow_key,
            FlowRun.shop_id.in_(shop_ids),
            FlowTrace.kind == SPLIT,
            FlowTrace.at >= since,
        )
        .order_by(FlowTrace.id)
    ):
        branch = str((detail or {}).get("branch") or "")
        splits = entered.setdefault(run_id, [])
        if not branch or any(seen == label for seen, _, _ in splits):
            continue  # a run enters a split once
        splits.append((label, branch, at))
        _result(results, label, branch).runs += 1
    if not entered:
        return _ordered(results)
    codes: dict[tuple[int, str], str] = {}
    code_branches: dict[str, list[BranchResult]] = {}
    for run_id, kind, made, shop_id, created_at in db.execute(
        select(FlowEffect.run_id, FlowEffect.kind, FlowEffect.result, FlowEffect.shop_id, FlowEffect.created_at)
        .join(FlowRun, FlowRun.id == FlowEffect.run_id)
        .where(
            FlowRun.flow_key == flow_key,
            FlowEffect.shop_id.in_(shop_ids),
            FlowEffect.created_at >= since,
            FlowEffect.status == "done",
            FlowEffect.kind.in_(("email", "discount")),
        )
    ):
        counted = [_result(results, label, branch) for label, branch, at in entered.get(run_id, []) if created_at >= at]
        for result in counted:
            if kind == "email":
                result.emails += 1
            else:
                result.codes += 1
        if kind == "discount" and counted and made and made.get("code"):
            code = str(made["code"]).upper()
            codes[(shop_id, code)] = f"{shop_id}:{code}"
            code_branches[f"{shop_id}:{code}"] = counted
    for redemption in redemptions(db, shop_ids, since, codes):
        for result in code_branches[redemption.owner]:
            result.redeemed += 1
            result.revenue += redemption.total
            result.currency = result.currency or redemption.currency
    _same_currency(db, shop_ids, results.values())
    return _ordered(results)


def _same_currency(db: Any, shop_ids: list[int], results: Iterable[BranchResult]) -> None:
    """Give a branch with nothing redeemed the currency the others sold in, else the stores' own when they share
    one, so that its revenue reads `€0.00` beside `€42.50`."""
    results = list(results)
    currency = next((r.currency for r in results if r.currency), None)
    if currency is None:
        currencies = set(db.scalars(select(Shop.currency).where(Shop.id.in_(shop_ids))))
        currency = currencies.pop() if len(currencies) == 1 else None
    for result in results:
        result.currency = result.currency or currency


def _result(results: dict[tuple[str, str], BranchResult], label: str, branch: str) -> BranchResult:
    """The result of a branch, added when the loaded flow does not have it."""
    found = results.get((label, branch))
    if found is None:
        found = results[(label, branch)] = BranchResult(label, branch)
    return found


def _ordered(results: dict[tuple[str, str], BranchResult]) -> list[BranchResult]:
    """The loaded flow's branches in its order, then any others by label and name."""
    known = [r for r in results.values() if r.share is not None]
    others = sorted((r for r in results.values() if r.share is None), key=lambda r: (r.split, r.branch))
    return known + others


def by_split(results: Iterable[BranchResult]) -> dict[str, list[BranchResult]]:
    """Branch results grouped by their split's label, in order."""
    grouped: dict[str, list[BranchResult]] = {}
    for result in results:
        grouped.setdefault(result.split, []).append(result)
    return grouped
