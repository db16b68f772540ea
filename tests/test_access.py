"""Every operation as every role: each allowed or refused as documented, and a refusal
changes nothing.

The expectation is this file's own copy of the documented table (operation -> roles that
may do it), written out by hand: it is not built from `access.PERMISSIONS`. One test checks
that the two agree, so documentation, code and this test say the same thing; the matrix
test checks behaviour, by calling the real service methods of each operation as each role.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

import facetrail
from conftest import CASE, PASSWORD, ROLES, Team, make_team
from facetrail.errors import AuthenticationError, InvalidInputError, PermissionDeniedError
from facetrail.service import access
from facetrail.service.access import Op
from facetrail.service.tables import Alert, User
from facetrail.store.models import Base

FR = "examples/face_recognition"
CLIP = "short_hamilton_clip.mp4"  # 9 s; live deployments play it at LIVE_PACE
LIVE_PACE = 10.0

# The documented table, by hand: operation -> the roles that may do it.
DOCUMENTED: dict[str, set[str]] = {
    "users.manage": {"admin"},
    "policy.read": {"admin", "authoriser", "investigator", "operator", "auditor"},
    "policy.change": {"admin"},
    "gallery.enrol": {"admin"},
    "gallery.read": {"admin", "authoriser", "investigator", "operator", "auditor"},
    "gallery.erase": {"admin"},
    "gallery.export": {"admin"},
    "subject.renew": {"authoriser"},
    "case.open": {"authoriser", "investigator"},
    "case.read": {"authoriser", "investigator", "auditor"},
    "case.manage": {"authoriser", "investigator"},
    "search.approve": {"authoriser"},
    "watchlist.read": {"authoriser", "investigator", "operator", "auditor"},
    "watchlist.edit": {"authoriser", "investigator"},
    "watchlist.authorise": {"authoriser"},
    "search": {"authoriser", "investigator"},
    "verify": {"authoriser", "investigator"},
    "review.read": {"authoriser", "investigator", "operator", "auditor"},
    "review.decide": {"authoriser", "investigator", "operator"},
    "audit.read": {"admin", "auditor"},
    "retention.run": {"admin"},
    "retention.report": {"admin", "auditor"},
    "evaluate": {"admin", "auditor"},
    "storage.manage": {"admin"},
    "live.deploy": {"authoriser", "operator"},
    "live.read": {"authoriser", "operator", "auditor"},
    "alert.review": {"authoriser", "operator"},
    "case.report": {"authoriser", "investigator", "auditor"},
    "report.transparency": {"admin", "authoriser", "auditor"},
}

# What an allowed role's calls leave in the audit trail (reads that are not audited: none).
AUDITED: dict[str, set[str]] = {
    "users.manage": {"user.add"},
    "policy.change": {"policy.change"},
    "gallery.enrol": {"enrol"},
    "gallery.erase": {"erase"},
    "gallery.export": {"templates.export"},
    "subject.renew": {"subject.renew"},
    "case.open": {"case.open"},
    "case.manage": {"case.member", "case.close"},
    "search.approve": {"search.approve"},
    "watchlist.edit": {"watchlist.create", "watchlist.add", "watchlist.remove"},
    "watchlist.authorise": {"watchlist.authorise"},
    "search": {"search"},
    "verify": {"verify"},
    "review.read": {"review.view"},
    "review.decide": {"review.decide"},
    "audit.read": {"audit.export"},
    "retention.run": {"retention.run"},
    "live.deploy": {"live.start", "live.end", "live.stop"},
    "live.read": {"alert.view"},
    "alert.review": {"alert.review"},
    "case.report": {"report.case"},
    "report.transparency": {"report.transparency"},
}

WATCHLIST = "wl-base"  # authorised, members obama and biden
ERASABLE = "alex_lacamoire"  # erased by the administrator's allowed ERASE check
KEPT = "biden"  # what refused erasures and renewals aim at


@dataclass
class World:
    """One data directory for the whole module: a team, three subjects, an authorised
    watchlist, the operator added to CASE, and one search in CASE with a candidate."""

    team: Team
    ft: facetrail.Facetrail  # the owning handle (the administrator's)
    handles: dict[str, facetrail.Facetrail]
    fr: Path
    empty: Path  # a folder with nothing in it (not an LFW folder)
    search_id: int = 0
    candidate_id: int = 0
    deployment_id: int = 0
    _n: Iterator[int] = field(default_factory=itertools.count)

    def name(self, what: str) -> str:
        return f"{what}-{next(self._n)}"

    def snapshot(self) -> dict[str, Any]:
        """Every row of every table, and every file in the data directory but the database."""
        state: dict[str, Any] = {}
        with self.ft.store.session(write=False) as s:
            for table in Base.metadata.sorted_tables:
                rows = s.execute(select(table).order_by(*table.primary_key.columns)).all()
                state[table.name] = [tuple(r) for r in rows]
        data = self.ft.settings.data
        state["files"] = sorted(
            (str(p.relative_to(data)), p.stat().st_size)
            for p in data.rglob("*")
            if p.is_file() and ".sqlite" not in p.name and not p.name.endswith((".db", "-wal"))
        )
        return state

    def events(self) -> list[dict]:
        return self.ft.store.export_audit()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Iterator[World]:
    root = tmp_path_factory.mktemp("access")
    team = make_team(root / "data")
    (root / "empty").mkdir()
    with team.open("admin") as ft:
        handles = {}
        for role in ROLES:
            handles[role] = ft.as_caller(None)
            handles[role].use_token(team.tokens[role])
        w = World(team, ft, handles, shared_data / FR, root / "empty")
        admin, inv = handles["admin"], handles["investigator"]
        for subject in ("obama", "biden", ERASABLE):
            report = admin.enrol([w.fr / "knn_examples/train" / subject], subject=subject)
            assert report.enrolled >= 1 and not report.skipped
        inv.create_watchlist(WATCHLIST, purpose="tests", expires_at=_days(30))
        inv.add_to_watchlist(WATCHLIST, ["obama", KEPT], reason="tests")
        handles["authoriser"].authorise_watchlist(WATCHLIST, reason="tests")
        inv.add_case_member(CASE, "operator")
        found = inv.search([w.fr / "knn_examples/test/obama1.jpg"], case=CASE)
        assert found.search_id is not None
        candidates = [c for p in found.probes for f in p.faces for c in f.candidates]
        assert candidates and candidates[0].subject == "obama"
        w.search_id, w.candidate_id = found.search_id, candidates[0].id
        w.deployment_id = (
            handles["operator"]
            .start_deployment(WATCHLIST, str(w.fr / CLIP), _days(1), wait=True, pace=LIVE_PACE)
            .id
        )
        yield w


def _days(n: int) -> datetime:
    return datetime.now(UTC) + timedelta(days=n)


@dataclass(frozen=True)
class Call:
    """One service call; `raises`: the error an allowed role gets past the role check
    (this setup lacks what the call needs), None if it must succeed."""

    run: Callable[[facetrail.Facetrail], object]
    raises: type[Exception] | None = None


# Each check prepares what its calls need (as other roles, before the snapshot) and returns
# the calls that perform the operation.
Check = Callable[[World, str], list[Call]]


def users(w: World, role: str) -> list[Call]:
    return [
        Call(lambda ft: ft.users()),
        Call(lambda ft: ft.add_user(w.name(f"new-by-{role}"), "investigator", PASSWORD)),
    ]


def policy_read(w: World, role: str) -> list[Call]:
    return [Call(lambda ft: ft.policy())]


def policy_change(w: World, role: str) -> list[Call]:
    return [
        Call(lambda ft: ft.set_policy("approval_days", 5, reason="tests")),
        # Saving a calibration is a policy change too; an empty folder fails after the check.
        Call(lambda ft: ft.eval_lfw(w.empty, calibrate=True), raises=InvalidInputError),
    ]


def enrol(w: World, role: str) -> list[Call]:
    subject = w.name(f"enrolled-by-{role}")
    return [
        Call(lambda ft: ft.enrol([w.fr / "obama.jpg"], subject=subject)),
        # Importing templates is enrolling them: an allowed role gets past the role check to
        # the file, which is not there.
        Call(lambda ft: ft.import_templates(w.empty / "none.npz"), raises=InvalidInputError),
    ]


def export(w: World, role: str) -> list[Call]:
    path = w.empty.parent / f"{w.name('templates')}.npz"
    return [Call(lambda ft: ft.export_templates(path))]


def gallery_read(w: World, role: str) -> list[Call]:
    return [Call(lambda ft: ft.subjects()), Call(lambda ft: ft.subject(KEPT))]


def erase(w: World, role: str) -> list[Call]:
    subject = ERASABLE if role in DOCUMENTED[Op.ERASE.value] else KEPT
    return [Call(lambda ft: ft.erase(subject, reason="tests"))]


def renew(w: World, role: str) -> list[Call]:
    return [Call(lambda ft: ft.renew_subject(KEPT, _days(30), reason="tests"))]


def case_open(w: World, role: str) -> list[Call]:
    reference = w.name(f"OPEN-{role}")
    return [Call(lambda ft: ft.open_case(reference, purpose="tests", legal_basis="tests"))]


def case_read(w: World, role: str) -> list[Call]:
    return [Call(lambda ft: ft.cases()), Call(lambda ft: ft.case(CASE))]


def case_manage(w: World, role: str) -> list[Call]:
    # A fresh case of the investigator's, so that closing it leaves CASE open.
    reference = w.name(f"MANAGE-{role}")
    w.handles["investigator"].open_case(reference, purpose="tests", legal_basis="tests")
    return [
        Call(lambda ft: ft.add_case_member(reference, "operator")),
        Call(lambda ft: ft.close_case(reference, reason="tests")),
    ]


def approve(w: World, role: str) -> list[Call]:
    return [Call(lambda ft: ft.approve(CASE, scope="gallery", reason="tests", days=1))]


def watchlist_read(w: World, role: str) -> list[Call]:
    return [Call(lambda ft: ft.watchlists()), Call(lambda ft: ft.watchlist(WATCHLIST))]


def watchlist_edit(w: World, role: str) -> list[Call]:
    created = w.name(f"wl-by-{role}")
    # An allowed role edits the watchlist it made; a refused one tries the authorised one.
    target = created if role in DOCUMENTED[Op.WATCHLIST_EDIT.value] else WATCHLIST
    return [
        Call(lambda ft: ft.create_watchlist(created, purpose="tests", expires_at=_days(30))),
        Call(lambda ft: ft.add_to_watchlist(target, ["obama", KEPT], reason="tests")),
        Call(lambda ft: ft.remove_from_watchlist(target, ["obama"], reason="tests")),
    ]


def watchlist_authorise(w: World, role: str) -> list[Call]:
    # Made and filled by the investigator, so the authoriser is not its last editor.
    name = w.name(f"wl-to-authorise-{role}")
    inv = w.handles["investigator"]
    inv.create_watchlist(name, purpose="tests", expires_at=_days(30))
    inv.add_to_watchlist(name, [KEPT], reason="tests")
    return [Call(lambda ft: ft.authorise_watchlist(name, reason="tests"))]


def search(w: World, role: str) -> list[Call]:
    # Against the authorised watchlist: CASE's gallery approval is the authoriser's own, and
    # nobody's approval counts for their own searches.
    probe = w.fr / "knn_examples/test/obama1.jpg"
    return [Call(lambda ft: ft.search([probe], case=CASE, watchlist=WATCHLIST))]


def verify(w: World, role: str) -> list[Call]:
    a, b = w.fr / "obama.jpg", w.fr / "obama2.jpg"
    return [Call(lambda ft: ft.verify(a, b, case=CASE))]


def review_read(w: World, role: str) -> list[Call]:
    return [Call(lambda ft: ft.search_results(w.search_id)), Call(lambda ft: ft.searches(CASE))]


def decide(w: World, role: str) -> list[Call]:
    calls = [Call(lambda ft: ft.decide(w.candidate_id, "match", note=f"by {role}"))]
    if role not in DOCUMENTED[Op.DECIDE.value]:
        calls.append(Call(lambda ft: ft.confirm(w.candidate_id, note=f"by {role}")))
    return calls


def audit(w: World, role: str) -> list[Call]:
    return [Call(lambda ft: ft.verify_audit()), Call(lambda ft: ft.export_audit())]


def retention_run(w: World, role: str) -> list[Call]:
    return [Call(lambda ft: ft.run_retention())]


def retention_report(w: World, role: str) -> list[Call]:
    return [Call(lambda ft: ft.retention_report())]


def evaluate(w: World, role: str) -> list[Call]:
    # An allowed role gets past the role check to the folder, which is not an LFW folder.
    return [Call(lambda ft: ft.eval_lfw(w.empty), raises=InvalidInputError)]


def storage(w: World, role: str) -> list[Call]:
    # No encryption key is configured here: an allowed role gets past the role check to that.
    return [Call(lambda ft: ft.encrypt_existing(), raises=InvalidInputError)]


def live_deploy(w: World, role: str) -> list[Call]:
    clip = str(w.fr / CLIP)
    if role not in DOCUMENTED[Op.LIVE_DEPLOY.value]:
        return [
            Call(lambda ft: ft.start_deployment(WATCHLIST, clip, _days(1), wait=True)),
            Call(lambda ft: ft.stop_deployment(w.deployment_id)),
        ]
    return [
        # Played to its end in the calling thread; then one started in the background and
        # stopped at once.
        Call(lambda ft: ft.start_deployment(WATCHLIST, clip, _days(1), wait=True, pace=LIVE_PACE)),
        Call(lambda ft: ft.stop_deployment(ft.start_deployment(WATCHLIST, clip, _days(1)).id)),
    ]


def live_read(w: World, role: str) -> list[Call]:
    return [
        Call(lambda ft: ft.deployments()),
        Call(lambda ft: ft.deployment(w.deployment_id)),
        Call(lambda ft: ft.alerts(w.deployment_id)),
        Call(lambda ft: ft.live_report()),
    ]


def alert_review(w: World, role: str) -> list[Call]:
    # The clip has nobody of the watchlist in it: an alert row stands in for one raised.
    with w.ft.store.session() as s:
        alert = Alert(
            deployment_id=w.deployment_id,
            subject_name=KEPT,
            score=0.99,
            time=1.0,
            track=1,
        )
        s.add(alert)
        s.flush()
        alert_id = alert.id
    return [Call(lambda ft: ft.review_alert(alert_id, "false", note=f"by {role}"))]


def case_report(w: World, role: str) -> list[Call]:
    return [Call(lambda ft: ft.case_report(CASE))]


def transparency(w: World, role: str) -> list[Call]:
    today = datetime.now(UTC).date()
    return [Call(lambda ft: ft.transparency_report(today - timedelta(days=30), today))]


CHECKS: dict[Op, Check] = {
    Op.USERS: users,
    Op.POLICY_READ: policy_read,
    Op.POLICY_CHANGE: policy_change,
    Op.ENROL: enrol,
    Op.GALLERY_READ: gallery_read,
    Op.ERASE: erase,
    Op.EXPORT: export,
    Op.RENEW: renew,
    Op.CASE_OPEN: case_open,
    Op.CASE_READ: case_read,
    Op.CASE_MANAGE: case_manage,
    Op.APPROVE: approve,
    Op.WATCHLIST_READ: watchlist_read,
    Op.WATCHLIST_EDIT: watchlist_edit,
    Op.WATCHLIST_AUTHORISE: watchlist_authorise,
    Op.SEARCH: search,
    Op.VERIFY: verify,
    Op.REVIEW_READ: review_read,
    Op.DECIDE: decide,
    Op.AUDIT: audit,
    Op.RETENTION_RUN: retention_run,
    Op.RETENTION_REPORT: retention_report,
    Op.EVALUATE: evaluate,
    Op.STORAGE: storage,
    Op.LIVE_DEPLOY: live_deploy,
    Op.LIVE_READ: live_read,
    Op.ALERT_REVIEW: alert_review,
    Op.CASE_REPORT: case_report,
    Op.TRANSPARENCY: transparency,
}


def test_the_documented_table_is_the_code_table() -> None:
    assert set(DOCUMENTED) == {op.value for op in Op}
    assert set(CHECKS) == set(Op)
    code = {op.value: {role.value for role in roles} for op, roles in access.PERMISSIONS.items()}
    assert code == DOCUMENTED
    assert set(ROLES) == {role.value for role in access.Role}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("op", list(Op), ids=lambda op: op.value)
def test_operation_as_role(world: World, op: Op, role: str) -> None:
    calls = CHECKS[op](world, role)
    ft = world.handles[role]
    before, seq = world.snapshot(), len(world.events())
    if role in DOCUMENTED[op.value]:
        for call in calls:
            if call.raises is None:
                call.run(ft)
            else:
                with pytest.raises(call.raises):
                    call.run(ft)
        new = world.events()[seq:]
        assert AUDITED.get(op.value, set()) <= {e["action"] for e in new}
        assert all(e["actor"] == role for e in new)
    else:
        for call in calls:
            with pytest.raises(PermissionDeniedError, match=f"may not {op.value}"):
                call.run(ft)
        assert world.events()[seq:] == []
        assert world.snapshot() == before


@pytest.mark.parametrize("op", list(Op), ids=lambda op: op.value)
def test_operation_without_a_caller_is_refused(world: World, op: Op) -> None:
    calls = CHECKS[op](world, "nobody")
    nobody = world.ft.as_caller(None)
    before = world.snapshot()
    for call in calls:
        with pytest.raises(AuthenticationError):
            call.run(nobody)
    assert world.snapshot() == before


def test_a_handle_opened_without_a_token_has_no_caller(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FACETRAIL_TOKEN", raising=False)
    with facetrail.open(world.team.data) as ft:
        assert ft.caller is None
        with pytest.raises(AuthenticationError):
            ft.policy()
        with pytest.raises(AuthenticationError):
            ft.whoami()


def _new_user(w: World, role: str = "investigator") -> tuple[str, str]:
    name = w.name(f"{role}-user")
    w.handles["admin"].add_user(name, role, PASSWORD)
    return name, w.ft.as_caller(None).login(name, PASSWORD).token


def test_a_disabled_users_token_is_refused(world: World) -> None:
    name, token = _new_user(world)
    assert world.ft.as_caller(None).use_token(token).name == name
    world.handles["admin"].set_user(name, active=False)
    with pytest.raises(AuthenticationError):
        world.ft.as_caller(None).use_token(token)
    with pytest.raises(AuthenticationError):
        world.ft.as_caller(None).login(name, PASSWORD)
    with pytest.raises(AuthenticationError):
        facetrail.open(world.team.data, token=token)


def test_a_disabled_account_is_refused_even_with_an_unrevoked_token(world: World) -> None:
    """The token check itself looks at the account, not only at the token's revocation."""
    name, token = _new_user(world)
    with world.ft.store.session() as s:
        s.scalar(select(User).where(User.name == name)).active = False
    with pytest.raises(AuthenticationError, match="disabled"):
        world.ft.as_caller(None).use_token(token)


def test_a_revoked_token_is_refused(world: World) -> None:
    name, _ = _new_user(world)
    handle = world.ft.as_caller(None)
    handle.login(name, PASSWORD)
    issued = handle.create_token("script", days=1)
    assert world.ft.as_caller(None).use_token(issued.token).name == name
    handle.revoke_token(issued.info.id)
    with pytest.raises(AuthenticationError, match="revoked"):
        world.ft.as_caller(None).use_token(issued.token)
    with pytest.raises(AuthenticationError, match="revoked"):
        facetrail.open(world.team.data, token=issued.token)


def test_a_logged_out_token_is_refused(world: World) -> None:
    _, token = _new_user(world)
    handle = world.ft.as_caller(None)
    handle.use_token(token)
    handle.logout()
    assert handle.caller is None
    with pytest.raises(AuthenticationError):
        handle.policy()
    with pytest.raises(AuthenticationError, match="revoked"):
        world.ft.as_caller(None).use_token(token)


def test_an_open_handle_loses_its_authority_with_its_token(world: World) -> None:
    """A long-lived handle checks its token again on every operation: revoking the token or
    disabling the account stops a handle that is already open."""
    name, token = _new_user(world)
    handle = world.ft.as_caller(None)
    handle.use_token(token)
    assert handle.policy() is not None
    world.handles["admin"].set_user(name, active=False)
    with pytest.raises(AuthenticationError):
        handle.policy()
    other, token2 = _new_user(world)
    second = world.ft.as_caller(None)
    second.use_token(token2)
    tokens = [t for t in world.handles["admin"].tokens() if t.user == other]
    world.handles["admin"].revoke_token(tokens[0].id)
    with pytest.raises(AuthenticationError, match="revoked"):
        second.whoami()
