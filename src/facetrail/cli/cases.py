"""Cases, watchlists and review: case ..., watchlist ..., review ..."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from facetrail.cli.common import DataOpt, JsonOpt, out, parse_time, session, show, when

case_app = typer.Typer(help="Cases: the purpose and legal basis of searches.", no_args_is_help=True)
watchlist_app = typer.Typer(help="Authorised, expiring watchlists.", no_args_is_help=True)
review_app = typer.Typer(help="Candidates and the decisions on them.", no_args_is_help=True)

ReasonOpt = Annotated[str, typer.Option(help="Why (audited).")]


def _case(c: Any) -> None:
    state = "open" if c.closed_at is None else f"closed {when(c.closed_at)}"
    out.print(f"case {c.reference} ({state}), opened by {c.opened_by} {when(c.opened_at)}")
    out.print(f"  purpose: {c.purpose}")
    out.print(f"  legal basis: {c.legal_basis}")
    out.print(f"  second reviewer required: {'yes' if c.second_review else 'no'}")
    out.print(f"  members: {', '.join(c.members)}; searches: {c.searches}")
    for a in c.approvals:
        floor = f" down to {a.min_threshold}" if a.min_threshold is not None else ""
        out.print(
            f"  approval {a.id}: {a.scope}{floor} by {a.approved_by} until "
            f"{when(a.expires_at)} ({a.reason})"
        )


@case_app.command("open")
def case_open(
    reference: Annotated[str, typer.Argument(help="Case reference, e.g. OP-2026-0142.")],
    purpose: Annotated[str, typer.Option(help="What the searches are for.")],
    legal_basis: Annotated[str, typer.Option(help="The law that allows them.")],
    second_review: Annotated[
        bool, typer.Option(help="A match needs a second reviewer's confirmation.")
    ] = False,
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Open a case; you become its first member."""
    with session(data, as_json) as ft:
        case = ft.open_case(
            reference, purpose=purpose, legal_basis=legal_basis, second_review=second_review
        )
    show(case, as_json, _case)


@case_app.command("close")
def case_close(
    reference: Annotated[str, typer.Argument(help="Case reference.")],
    reason: Annotated[str | None, typer.Option(help="Why (audited).")] = None,
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Close a case: no more searches or decisions; retention counts from now."""
    with session(data, as_json) as ft:
        case = ft.close_case(reference, reason=reason)
    show(case, as_json, _case)


@case_app.command("list")
def case_list(data: DataOpt = None, as_json: JsonOpt = False) -> None:
    """The cases you may see."""
    with session(data, as_json) as ft:
        cases = ft.cases()

    def render(v: dict) -> None:
        table = Table("case", "state", "opened", "by", "searches", "purpose")
        for c in v["cases"]:
            state = "open" if c.closed_at is None else "closed"
            table.add_row(
                c.reference, state, when(c.opened_at), c.opened_by, str(c.searches), c.purpose
            )
        out.print(table)

    show({"cases": cases}, as_json, render)


@case_app.command("show")
def case_show(
    reference: Annotated[str, typer.Argument(help="Case reference.")],
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One case: purpose, legal basis, members, approvals."""
    with session(data, as_json) as ft:
        case = ft.case(reference)
    show(case, as_json, _case)


@case_app.command("add-member")
def case_add_member(
    reference: Annotated[str, typer.Argument(help="Case reference.")],
    user: Annotated[str, typer.Argument(help="User to add.")],
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a user to a case."""
    with session(data, as_json) as ft:
        case = ft.add_case_member(reference, user)
    show(case, as_json, _case)


@case_app.command("approve")
def case_approve(
    reference: Annotated[str, typer.Argument(help="Case reference.")],
    scope: Annotated[str, typer.Option(help="gallery, or below-floor.")],
    reason: ReasonOpt,
    min_threshold: Annotated[
        float | None,
        typer.Option(help="below-floor: the lowest threshold allowed (default: any, --all too)."),
    ] = None,
    days: Annotated[int | None, typer.Option(help="Valid for (default: policy).")] = None,
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Approve, as an authoriser, the case's searches beyond the usual scope."""
    with session(data, as_json) as ft:
        approval = ft.approve(
            reference, scope=scope, reason=reason, days=days, min_threshold=min_threshold
        )
    show(
        approval,
        as_json,
        lambda a: out.print(f"approval {a.id} ({a.scope}) valid until {when(a.expires_at)} UTC"),
    )


def _watchlist(w: Any) -> None:
    out.print(f"watchlist {w.name}: {w.status}, expires {when(w.expires_at)} UTC")
    out.print(f"  purpose: {w.purpose}")
    if w.authorised_by:
        out.print(f"  authorised by {w.authorised_by} {when(w.authorised_at)}")
    table = Table("subject", "reason", "added by", "added")
    for m in w.members:
        table.add_row(m.subject, m.reason, m.added_by, when(m.added_at))
    out.print(table)


@watchlist_app.command("create")
def watchlist_create(
    name: Annotated[str, typer.Argument(help="Watchlist name.")],
    purpose: Annotated[str, typer.Option(help="What it is for.")],
    expires: Annotated[str, typer.Option(help="Expiry (ISO 8601 date or time).")],
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a watchlist (it needs members and an authoriser before use)."""
    with session(data, as_json) as ft:
        w = ft.create_watchlist(name, purpose=purpose, expires_at=parse_time(expires))
    show(w, as_json, _watchlist)


@watchlist_app.command("add")
def watchlist_add(
    name: Annotated[str, typer.Argument(help="Watchlist name.")],
    subjects: Annotated[list[str], typer.Argument(help="Subjects to add.")],
    reason: Annotated[str, typer.Option(help="Why they are on it (recorded per member).")],
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add subjects; this withdraws the watchlist's authorisation."""
    with session(data, as_json) as ft:
        w = ft.add_to_watchlist(name, subjects, reason=reason)
    show(w, as_json, _watchlist)


@watchlist_app.command("remove")
def watchlist_remove(
    name: Annotated[str, typer.Argument(help="Watchlist name.")],
    subjects: Annotated[list[str], typer.Argument(help="Subjects to remove.")],
    reason: ReasonOpt,
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Remove subjects; this withdraws the watchlist's authorisation."""
    with session(data, as_json) as ft:
        w = ft.remove_from_watchlist(name, subjects, reason=reason)
    show(w, as_json, _watchlist)


@watchlist_app.command("authorise")
def watchlist_authorise(
    name: Annotated[str, typer.Argument(help="Watchlist name.")],
    reason: ReasonOpt,
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Authorise a watchlist as it stands (authorisers; not the person who last changed it)."""
    with session(data, as_json) as ft:
        w = ft.authorise_watchlist(name, reason=reason)
    show(w, as_json, _watchlist)


@watchlist_app.command("list")
def watchlist_list(data: DataOpt = None, as_json: JsonOpt = False) -> None:
    """All watchlists and their state."""
    with session(data, as_json) as ft:
        lists = ft.watchlists()

    def render(v: dict) -> None:
        table = Table("watchlist", "status", "members", "expires", "purpose")
        for w in v["watchlists"]:
            table.add_row(w.name, w.status, str(len(w.members)), when(w.expires_at), w.purpose)
        out.print(table)

    show({"watchlists": lists}, as_json, render)


@watchlist_app.command("show")
def watchlist_show(
    name: Annotated[str, typer.Argument(help="Watchlist name.")],
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One watchlist with its members and why each is on it."""
    with session(data, as_json) as ft:
        w = ft.watchlist(name)
    show(w, as_json, _watchlist)


def _candidates(view: Any) -> None:
    searched = f"watchlist {view.watchlist}" if view.watchlist else view.scope
    out.print(
        f"search {view.id} in case {view.case} by {view.by} {when(view.at)}: {searched}, "
        f"threshold {view.threshold:.4f}, {view.faces} face(s), "
        f"{view.unmatched_faces_deleted} deleted as unmatched"
    )
    if view.purged_at:
        out.print(f"  results deleted by retention {when(view.purged_at)}")
    table = Table("candidate", "probe", "rank", "subject", "score", "est. FMR", "outcome")
    for c in view.candidates:
        fmr = "n/a" if c.fmr is None else f"{c.fmr:.2g}"
        subject = c.subject + (" (erased)" if c.subject_erased else "")
        table.add_row(str(c.id), c.probe, str(c.rank), subject, f"{c.score:.4f}", fmr, c.outcome)
    out.print(table)


@review_app.command("list")
def review_list(
    case: Annotated[str, typer.Argument(help="Case reference.")],
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Every search of a case with its candidates."""
    with session(data, as_json) as ft:
        views = ft.searches(case)

    def render(v: dict) -> None:
        for view in v["searches"]:
            _candidates(view)

    show({"searches": views}, as_json, render)


@review_app.command("show")
def review_show(
    search_id: Annotated[int, typer.Argument(help="Search id.")],
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A search's candidates, each with its outcome and decisions."""
    with session(data, as_json) as ft:
        view = ft.search_results(search_id)
    show(view, as_json, _candidates)


def _decided(c: Any) -> None:
    out.print(f"candidate {c.id} ({c.subject}): {c.outcome}")
    for d in c.decisions:
        kind = (
            f"confirms {d.confirms}"
            if d.confirms
            else (f"supersedes {d.supersedes}" if d.supersedes else "first decision")
        )
        out.print(f"  {d.id}: {d.verdict} by {d.by} {when(d.at)} ({kind}): {d.note}")


@review_app.command("decide")
def review_decide(
    candidate_id: Annotated[int, typer.Argument(help="Candidate id.")],
    verdict: Annotated[str, typer.Argument(help="match, no-match or inconclusive.")],
    note: Annotated[str, typer.Option(help="The reasons for the decision.")],
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Record a decision on a candidate (a change is a new decision, never an edit)."""
    with session(data, as_json) as ft:
        c = ft.decide(candidate_id, verdict, note=note)
    show(c, as_json, _decided)


@review_app.command("confirm")
def review_confirm(
    candidate_id: Annotated[int, typer.Argument(help="Candidate id.")],
    note: Annotated[str, typer.Option(help="The second reviewer's reasons.")],
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Confirm, as a second reviewer, a candidate's standing match decision."""
    with session(data, as_json) as ft:
        c = ft.confirm(candidate_id, note=note)
    show(c, as_json, _decided)
