"""Issue 3, accountability, through the Python API on a real store (SQLite, then PostgreSQL
where a server can be had) with the real models: accounts, cases, approvals, watchlists,
review, policy, what the audit trail may and may not hold, and audit trails that began
before roles and cases existed.

One data directory (a team without approvals, the knn example gallery enrolled once) is
shared by the module; each test works in cases, watchlists and users of its own names.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from alembic import command
from argon2 import PasswordHasher
from PIL import Image as PILImage
from sqlalchemy import create_engine, inspect, text, update

import facetrail
from conftest import CASE, PASSWORD, Team, make_team, postgres_database
from facetrail.errors import (
    AuthenticationError,
    FacetrailError,
    InvalidInputError,
    MediaError,
    NoFaceError,
    NotFoundError,
    PermissionDeniedError,
    PolicyError,
)
from facetrail.service.tables import ApiToken, Approval, Watchlist
from facetrail.store import AuditRecord, Store
from facetrail.store.models import utcnow
from facetrail.store.store import alembic_config
from facetrail.store.store import database_url as database_url_of

FR = "examples/face_recognition"
GALLERY = ("alex_lacamoire", "biden", "kit_harington", "obama", "rose_leslie")


@dataclass
class World:
    team: Team
    ft: facetrail.Facetrail  # the admin's handle; it owns the store and the models
    tokens: dict[str, str]  # the team's tokens and those of users added by the fixture

    def as_(self, who: str) -> facetrail.Facetrail:
        handle = self.ft.as_caller(None)
        handle.use_token(self.tokens[who])
        return handle

    def anonymous(self) -> facetrail.Facetrail:
        return self.ft.as_caller(None)

    @property
    def store(self) -> Store:
        return self.ft.store

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.store.engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()

    def rows(self, sql: str, **params: Any) -> list[tuple]:
        with self.store.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), params)]

    def execute(self, statement: Any) -> None:
        """A change made behind the service's back (the clock moving on, say)."""
        with self.store.engine.begin() as conn:
            conn.execute(statement)

    def events(self) -> list[dict]:
        return self.store.export_audit()

    @property
    def sqlite(self) -> bool:
        return self.team.database_url is None

    def open(self, token: str) -> facetrail.Facetrail:
        """A handle of its own (own store and models) on the world's data and database."""
        return facetrail.open(self.team.data, token=token, **self.team.options())

    def add_user(self, name: str, role: str) -> facetrail.Facetrail:
        self.ft.add_user(name, role, PASSWORD)
        self.tokens[name] = self.anonymous().login(name, PASSWORD).token
        return self.as_(name)

    def db_bytes(self) -> bytes:
        """Everything SQLite has written: the database file and its write-ahead log (on
        PostgreSQL, whose files are the server's: every row of the tables that hold
        credentials, as text)."""
        if self.team.database_url is None:
            return b"".join(p.read_bytes() for p in sorted(self.team.data.glob("facetrail.db*")))
        rows = self.rows("SELECT * FROM users") + self.rows("SELECT * FROM api_tokens")
        return repr(rows).encode()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    with contextlib.ExitStack() as stack:
        url = None
        if request.param == "postgresql":
            url = stack.enter_context(postgres_database(request.getfixturevalue("postgres_server")))
        data = tmp_path_factory.mktemp("accountability") / "data"
        team = make_team(data, approvals=False, database_url=url)
        ft = stack.enter_context(team.open("admin"))
        w = World(team, ft, dict(team.tokens))
        w.add_user("authoriser2", "authoriser")
        w.add_user("investigator2", "investigator")
        yield w


@dataclass(frozen=True)
class Probes:
    obama1: Path  # obama, not one of the enrolled images
    obama: Path
    obama2: Path
    biden: Path


@pytest.fixture(scope="module")
def probes(world: World, shared_data: Path) -> Probes:
    """The knn example gallery, enrolled once (5 subjects, 9 images)."""
    report = world.ft.enrol([shared_data / FR / "knn_examples/train"])
    assert report.enrolled == 9
    root = shared_data / FR
    return Probes(
        root / "knn_examples/test/obama1.jpg",
        root / "obama.jpg",
        root / "obama2.jpg",
        root / "biden.jpg",
    )


def _open_case(world: World, reference: str, *, second_review: bool = False) -> None:
    world.as_("investigator").open_case(
        reference,
        purpose="accountability tests",
        legal_basis="test data only",
        second_review=second_review,
    )


def _approve(world: World, reference: str, scope: str, **kw: Any) -> int:
    return world.as_("authoriser").approve(reference, scope=scope, reason="tests", **kw).id


def _refused(
    world: World, action: Callable[[], object], error: type[Exception], match: str
) -> FacetrailError:
    """`action` is refused with `error`, and leaves no search row and no search event."""
    searches = world.scalar("SELECT count(*) FROM searches")
    events = world.scalar("SELECT count(*) FROM audit_events WHERE action = 'search'")
    with pytest.raises(error, match=match) as refused:
        action()
    assert world.scalar("SELECT count(*) FROM searches") == searches
    assert world.scalar("SELECT count(*) FROM audit_events WHERE action = 'search'") == events
    return refused.value  # type: ignore[return-value]


def _subjects(report: Any) -> list[str]:
    return [c.subject for p in report.probes for f in p.faces for c in f.candidates]


def _floor(world: World) -> float:
    """The threshold at the policy's floor false match rate (the packaged calibration)."""
    handle = world.as_("investigator")
    calibration = handle.scoring().calibration
    assert calibration is not None
    return float(calibration.threshold_for(handle.policy().floor_fmr))


# --------------------------------------------------------------------------- accounts


def test_passwords_are_stored_as_argon2id_only(world: World) -> None:
    password = "correct-horse-battery-staple-7"
    world.ft.add_user("hash-check", "operator", password)
    stored = world.scalar("SELECT password_hash FROM users WHERE name = 'hash-check'")
    assert stored.startswith("$argon2id$") and password not in stored
    assert PasswordHasher().verify(stored, password)
    hashes = [h for (h,) in world.rows("SELECT password_hash FROM users")]
    assert len(hashes) >= 8 and all(h.startswith("$argon2id$") for h in hashes)
    data = world.db_bytes()
    assert password.encode() not in data and PASSWORD.encode() not in data


def test_tokens_are_stored_as_their_sha256_only(world: World) -> None:
    issued = world.anonymous().login("operator", PASSWORD, label="hash check")
    stored = world.scalar("SELECT token_hash FROM api_tokens WHERE id = :i", i=issued.info.id)
    assert stored == hashlib.sha256(issued.token.encode()).hexdigest()
    data = world.db_bytes()
    for token in [issued.token, *world.tokens.values()]:
        assert token.encode() not in data
        assert token[3:].encode() not in data  # nor its random part without the prefix


def test_wrong_password_and_unknown_user_look_the_same_and_are_audited(world: World) -> None:
    typed_in_name_field = "my-Secret-passw0rd!"
    before = world.scalar("SELECT max(seq) FROM audit_events")
    with pytest.raises(AuthenticationError) as wrong_password:
        world.anonymous().login("investigator", "not-the-password-at-all")
    with pytest.raises(AuthenticationError) as unknown_user:
        world.anonymous().login(typed_in_name_field, PASSWORD)
    assert str(wrong_password.value) == str(unknown_user.value)
    assert "investigator" not in str(wrong_password.value)
    new = [e for e in world.events() if e["seq"] > before]
    assert [(e["action"], e["actor"]) for e in new] == [
        ("login.failed", "investigator"),
        ("login.failed", "unknown"),
    ]
    trail = json.dumps(world.events())
    assert typed_in_name_field not in trail and "not-the-password-at-all" not in trail
    assert world.store.verify_audit().ok


def test_expired_token_is_refused(world: World) -> None:
    issued = world.as_("operator").create_token("expiring", days=1)
    assert world.anonymous().use_token(issued.token).name == "operator"
    world.execute(
        update(ApiToken)
        .where(ApiToken.id == issued.info.id)
        .values(expires_at=utcnow() - timedelta(seconds=1))
    )
    with pytest.raises(AuthenticationError, match="expired"):
        world.anonymous().use_token(issued.token)
    with pytest.raises(AuthenticationError, match="expired"):
        world.open(issued.token)


def test_revoked_token_is_refused(world: World) -> None:
    operator = world.as_("operator")
    issued = operator.create_token("to revoke")
    operator.revoke_token(issued.info.id)
    with pytest.raises(AuthenticationError, match="revoked"):
        world.anonymous().use_token(issued.token)
    # Logging out revokes the token it was done with.
    handle = world.anonymous()
    session = handle.login("operator", PASSWORD)
    handle.logout()
    assert handle.caller is None
    with pytest.raises(AuthenticationError, match="revoked"):
        world.anonymous().use_token(session.token)
    # Nobody revokes another user's token but an administrator.
    other = world.as_("investigator").create_token("mine")
    with pytest.raises(NotFoundError):
        operator.revoke_token(other.info.id)
    assert world.anonymous().use_token(other.token).name == "investigator"


def test_disabling_a_user_revokes_their_tokens(world: World) -> None:
    world.add_user("leaver", "investigator")
    second = world.anonymous().login("leaver", PASSWORD).token
    world.ft.set_user("leaver", active=False)
    for token in (world.tokens["leaver"], second):
        with pytest.raises(AuthenticationError, match="revoked"):
            world.anonymous().use_token(token)
    assert all(t.revoked for t in world.ft.tokens() if t.user == "leaver")
    with pytest.raises(AuthenticationError) as disabled:
        world.anonymous().login("leaver", PASSWORD)
    with pytest.raises(AuthenticationError) as wrong:
        world.anonymous().login("leaver", "not-the-password-at-all")
    assert str(disabled.value) == str(wrong.value)
    # Enabled again, the old tokens stay revoked; a new login works.
    world.ft.set_user("leaver", active=True)
    with pytest.raises(AuthenticationError, match="revoked"):
        world.anonymous().use_token(second)
    assert world.anonymous().login("leaver", PASSWORD).info.user == "leaver"


def test_changing_a_role_revokes_tokens(world: World) -> None:
    world.add_user("mover", "investigator")
    world.ft.set_user("mover", role="auditor")
    with pytest.raises(AuthenticationError, match="revoked"):
        world.anonymous().use_token(world.tokens["mover"])
    handle = world.anonymous()
    handle.login("mover", PASSWORD)
    assert handle.caller is not None and handle.caller.role == "auditor"
    change = [e for e in world.events() if e["action"] == "user.change"][-1]
    assert change["details"]["new_role"] == "auditor" and change["details"]["tokens_revoked"] == 1


def test_an_admin_cannot_disable_themselves(world: World) -> None:
    with pytest.raises(PolicyError, match="own account"):
        world.ft.set_user("admin", active=False)
    assert world.as_("admin").whoami().active
    assert all(u.active for u in world.ft.users() if u.name == "admin")


def test_short_passwords_are_refused(world: World) -> None:
    minimum = world.ft.policy().min_password_length
    with pytest.raises(InvalidInputError, match=f"at least {minimum}"):
        world.ft.add_user("shorty", "investigator", "x" * (minimum - 1))
    assert "shorty" not in [u.name for u in world.ft.users()]
    with pytest.raises(InvalidInputError, match=f"at least {minimum}"):
        world.ft.set_user("operator", password="y" * (minimum - 1))
    assert world.anonymous().login("operator", PASSWORD)  # the old password still works
    with (
        facetrail.open(world.team.data.parent / "fresh") as fresh,
        pytest.raises(InvalidInputError, match=f"at least {minimum}"),
    ):
        fresh.init("admin", "z" * (minimum - 1))
    with facetrail.open(world.team.data.parent / "fresh") as fresh:
        assert fresh.init("admin", "z" * minimum).info.user == "admin"


# --------------------------------------------------------------------------- cases


def test_every_search_needs_an_open_case_of_ones_own(world: World, probes: Probes) -> None:
    world.as_("investigator2").open_case(
        "C-OTHER", purpose="someone else's", legal_basis="test data only"
    )
    _approve(world, "C-OTHER", "gallery")
    investigator = world.as_("investigator")
    outsider = _refused(
        world,
        lambda: investigator.search([probes.obama1], case="C-OTHER"),
        NotFoundError,
        "C-OTHER",
    )
    unknown = _refused(
        world,
        lambda: investigator.search([probes.obama1], case="C-NONE"),
        NotFoundError,
        "C-NONE",
    )
    assert str(outsider).replace("C-OTHER", "?") == str(unknown).replace("C-NONE", "?")
    with pytest.raises(NotFoundError) as read:
        investigator.case("C-OTHER")
    assert str(read.value) == str(outsider)
    _refused(
        world,
        lambda: investigator.verify(probes.obama, probes.obama2, case="C-OTHER"),
        NotFoundError,
        "C-OTHER",
    )
    # A closed case takes no more searches, even with its approval standing.
    _open_case(world, "C-CLOSED")
    _approve(world, "C-CLOSED", "gallery")
    investigator.close_case("C-CLOSED", reason="done")
    _refused(
        world,
        lambda: investigator.search([probes.obama1], case="C-CLOSED"),
        PolicyError,
        "closed",
    )


def test_investigators_see_only_their_cases(world: World) -> None:
    world.as_("investigator2").open_case(
        "C-PRIVATE", purpose="not yours", legal_basis="test data only"
    )
    _open_case(world, "C-MINE")
    mine = {c.reference for c in world.as_("investigator").cases()}
    assert "C-MINE" in mine and CASE in mine and "C-PRIVATE" not in mine
    assert "C-MINE" not in {c.reference for c in world.as_("investigator2").cases()}
    for role in ("authoriser", "auditor"):
        seen = {c.reference for c in world.as_(role).cases()}
        assert {"C-MINE", "C-PRIVATE", CASE} <= seen
        assert world.as_(role).case("C-PRIVATE").opened_by == "investigator2"
    for role in ("admin", "operator"):
        with pytest.raises(PermissionDeniedError):
            world.as_(role).cases()


def test_adding_a_member_gives_access(world: World) -> None:
    owner = world.as_("investigator2")
    owner.open_case("C-SHARED", purpose="shared later", legal_basis="test data only")
    with pytest.raises(NotFoundError):
        world.as_("investigator").case("C-SHARED")
    with pytest.raises(NotFoundError):  # nor can an outsider add themselves
        world.as_("investigator").add_case_member("C-SHARED", "investigator")
    info = owner.add_case_member("C-SHARED", "investigator")
    assert info.members == ["investigator", "investigator2"]
    assert world.as_("investigator").case("C-SHARED").reference == "C-SHARED"
    assert "C-SHARED" in {c.reference for c in world.as_("investigator").cases()}
    event = [e for e in world.events() if e["action"] == "case.member"][-1]
    assert event["actor"] == "investigator2" and event["case"] == "C-SHARED"


# --------------------------------------------------------------------------- approvals


def test_gallery_search_needs_someone_elses_current_approval(world: World, probes: Probes) -> None:
    investigator, authoriser = world.as_("investigator"), world.as_("authoriser")
    _open_case(world, "A-GALLERY")
    refused = _refused(
        world,
        lambda: investigator.search([probes.obama1], case="A-GALLERY"),
        PolicyError,
        "approval",
    )
    assert "gallery" in str(refused) and "A-GALLERY" in str(refused)
    assert "case approve A-GALLERY --scope gallery" in str(refused)

    approval = _approve(world, "A-GALLERY", "gallery")
    report = investigator.search([probes.obama1], case="A-GALLERY")
    assert report.scope == "gallery" and _subjects(report) == ["obama"]
    stored = world.scalar("SELECT approval_ids FROM searches WHERE id = :i", i=report.search_id)
    assert stored == (json.dumps([approval]) if world.sqlite else [approval])  # JSON, as text
    event = world.events()[-1]
    assert event["action"] == "search" and event["details"]["approvals"] == [approval]

    # The authoriser's own approval does not count for the authoriser's own search.
    _refused(
        world,
        lambda: authoriser.search([probes.obama1], case="A-GALLERY"),
        PolicyError,
        "by someone other than you",
    )
    # Nor does an approval that has expired.
    _open_case(world, "A-EXPIRED")
    expired = _approve(world, "A-EXPIRED", "gallery")
    world.execute(
        update(Approval)
        .where(Approval.id == expired)
        .values(expires_at=utcnow() - timedelta(seconds=1))
    )
    _refused(
        world,
        lambda: investigator.search([probes.obama1], case="A-EXPIRED"),
        PolicyError,
        "approval",
    )


def test_below_the_floor_needs_a_below_floor_approval_that_allows_it(
    world: World, probes: Probes
) -> None:
    investigator = world.as_("investigator")
    floor = _floor(world)
    low = round(floor - 0.05, 4)
    _open_case(world, "A-FLOOR")
    _approve(world, "A-FLOOR", "gallery")

    def search_low() -> Any:
        return investigator.search([probes.obama1], case="A-FLOOR", threshold=low)

    def search_all() -> Any:
        return investigator.search([probes.obama1], case="A-FLOOR", include_below=True)

    _refused(world, search_low, PolicyError, "below the policy's floor")
    _refused(world, search_all, PolicyError, "below the policy's floor")
    # At the floor itself no approval is needed.
    assert _subjects(investigator.search([probes.obama1], case="A-FLOOR")) == ["obama"]

    _approve(world, "A-FLOOR", "below-floor", min_threshold=round(floor - 0.02, 4))
    _refused(world, search_low, PolicyError, "below-floor approval")
    _approve(world, "A-FLOOR", "below-floor", min_threshold=round(floor - 0.1, 4))
    assert search_low().threshold == low
    # Listing every candidate, however low, needs an approval without a minimum.
    _refused(world, search_all, PolicyError, "listing candidates below the threshold")
    _approve(world, "A-FLOOR", "below-floor")
    report = search_all()
    candidates = [c for p in report.probes for f in p.faces for c in f.candidates]
    assert len(candidates) == 5 and sum(c.above_threshold for c in candidates) == 1


# --------------------------------------------------------------------------- watchlists


def _expiry(days: float = 10) -> datetime:
    return utcnow() + timedelta(days=days)


def test_watchlist_expiry_is_bounded_by_policy(world: World) -> None:
    investigator = world.as_("investigator")
    days = world.ft.policy().watchlist_max_days
    with pytest.raises(PolicyError, match=f"at most {days} days"):
        investigator.create_watchlist("WL-LONG", purpose="too long", expires_at=_expiry(days + 1))
    assert "WL-LONG" not in [w.name for w in investigator.watchlists()]
    with pytest.raises(InvalidInputError):
        investigator.create_watchlist("WL-PAST", purpose="over", expires_at=_expiry(-1))
    made = investigator.create_watchlist(
        "WL-LONGEST", purpose="just inside", expires_at=_expiry(days - 0.01)
    )
    assert made.status == "awaiting authorisation" and made.members == []


def test_watchlist_is_searchable_only_as_someone_else_authorised_it(
    world: World, probes: Probes
) -> None:
    investigator, authoriser = world.as_("investigator"), world.as_("authoriser")
    _open_case(world, "W-AUTH")

    def search() -> Any:
        return investigator.search([probes.obama1], case="W-AUTH", watchlist="WL-AUTH")

    investigator.create_watchlist("WL-AUTH", purpose="tests", expires_at=_expiry())
    with pytest.raises(PolicyError, match="no members"):
        authoriser.authorise_watchlist("WL-AUTH", reason="empty")
    investigator.add_to_watchlist("WL-AUTH", ["obama", "biden"], reason="wanted for X")
    _refused(world, search, PolicyError, "awaiting authorisation")
    with pytest.raises(PermissionDeniedError):
        investigator.authorise_watchlist("WL-AUTH", reason="my own")
    info = authoriser.authorise_watchlist("WL-AUTH", reason="proportionate")
    assert info.status == "authorised" and info.authorised_by == "authoriser"
    report = search()
    assert report.scope == "watchlist" and report.watchlist == "WL-AUTH"
    assert _subjects(report) == ["obama"]

    # The authoriser adds a member: the authorisation is withdrawn, and the authoriser,
    # now its last editor, cannot give it again.
    info = authoriser.add_to_watchlist("WL-AUTH", ["kit_harington"], reason="seen with X")
    assert info.status == "awaiting authorisation" and info.authorised_by is None
    _refused(world, search, PolicyError, "awaiting authorisation")
    with pytest.raises(PolicyError, match="last changed"):
        authoriser.authorise_watchlist("WL-AUTH", reason="again")
    assert world.as_("authoriser2").authorise_watchlist("WL-AUTH", reason="ok").status == (
        "authorised"
    )
    # Removing a member withdraws it too.
    info = investigator.remove_from_watchlist("WL-AUTH", ["biden"], reason="ruled out")
    assert info.status == "awaiting authorisation"
    _refused(world, search, PolicyError, "awaiting authorisation")

    # Whoever creates a watchlist cannot authorise it.
    authoriser.create_watchlist("WL-OWN", purpose="tests", expires_at=_expiry())
    authoriser.add_to_watchlist("WL-OWN", ["obama"], reason="wanted")
    with pytest.raises(PolicyError, match="made or last changed"):
        authoriser.authorise_watchlist("WL-OWN", reason="my own")

    # Each membership keeps its reason and who added it.
    members = {m.subject: (m.reason, m.added_by) for m in investigator.watchlist("WL-AUTH").members}
    assert members == {
        "obama": ("wanted for X", "investigator"),
        "kit_harington": ("seen with X", "authoriser"),
    }
    actions = [(e["action"], e["actor"]) for e in world.events() if e["action"] == "watchlist.add"]
    assert ("watchlist.add", "authoriser") in actions


def test_expired_watchlist_cannot_be_searched(world: World, probes: Probes) -> None:
    investigator = world.as_("investigator")
    _open_case(world, "W-EXPIRED")
    investigator.create_watchlist("WL-EXPIRED", purpose="tests", expires_at=_expiry())
    investigator.add_to_watchlist("WL-EXPIRED", ["obama"], reason="wanted")
    world.as_("authoriser").authorise_watchlist("WL-EXPIRED", reason="ok")
    world.execute(
        update(Watchlist)
        .where(Watchlist.name == "WL-EXPIRED")
        .values(expires_at=utcnow() - timedelta(seconds=1))
    )
    assert investigator.watchlist("WL-EXPIRED").status == "expired"
    _refused(
        world,
        lambda: investigator.search([probes.obama1], case="W-EXPIRED", watchlist="WL-EXPIRED"),
        PolicyError,
        "expired",
    )
    with pytest.raises(PolicyError, match="expired"):
        world.as_("authoriser2").authorise_watchlist("WL-EXPIRED", reason="again")


def test_watchlist_search_returns_only_its_members(world: World, probes: Probes) -> None:
    investigator = world.as_("investigator")
    _open_case(world, "W-ONLY")
    _approve(world, "W-ONLY", "gallery")
    _approve(world, "W-ONLY", "below-floor")
    # The probe is of obama, who is not on the watchlist and outscores everyone on it.
    gallery = investigator.search([probes.obama1], case="W-ONLY", include_below=True)
    ranked = [c for p in gallery.probes for f in p.faces for c in f.candidates]
    assert ranked[0].subject == "obama" and ranked[0].above_threshold
    obama_score = ranked[0].score

    members = ["biden", "kit_harington", "rose_leslie"]
    investigator.create_watchlist("WL-NO-OBAMA", purpose="tests", expires_at=_expiry())
    investigator.add_to_watchlist("WL-NO-OBAMA", members, reason="tests")
    world.as_("authoriser").authorise_watchlist("WL-NO-OBAMA", reason="ok")
    listed = investigator.search(
        [probes.obama1], case="W-ONLY", watchlist="WL-NO-OBAMA", include_below=True
    )
    found = [c for p in listed.probes for f in p.faces for c in f.candidates]
    assert sorted(c.subject for c in found) == sorted(members)
    assert all(c.score < obama_score and not c.above_threshold for c in found)
    assert [c.rank for c in found] == [1, 2, 3]
    assert listed.gallery_subjects == 3
    # At the usual threshold the watchlist search finds nobody (the gallery one found obama).
    plain = investigator.search([probes.obama1], case="W-ONLY", watchlist="WL-NO-OBAMA")
    assert _subjects(plain) == []
    row = world.rows("SELECT scope, watchlist_id FROM searches WHERE id = :i", i=plain.search_id)
    assert row[0][0] == "watchlist" and row[0][1] is not None


# --------------------------------------------------------------------------- review


def _search_case(world: World, probes: Probes, reference: str, **kw: Any) -> int:
    """Open a case with a gallery approval, search obama1; obama's candidate id."""
    _open_case(world, reference, **kw)
    _approve(world, reference, "gallery")
    report = world.as_("investigator").search([probes.obama1], case=reference)
    (candidate,) = [c for p in report.probes for f in p.faces for c in f.candidates]
    assert candidate.subject == "obama" and candidate.id is not None
    return candidate.id


def test_decisions_are_appended_never_edited(world: World, probes: Probes) -> None:
    candidate = _search_case(world, probes, "R-APPEND")
    investigator = world.as_("investigator")
    # Any UPDATE or DELETE of a decision now fails loudly.
    with world.store.engine.begin() as conn:
        if not world.sqlite:
            conn.execute(
                text(
                    "CREATE FUNCTION decisions_never_change() RETURNS trigger LANGUAGE plpgsql "
                    "AS $$ BEGIN RAISE EXCEPTION 'decisions are never changed'; END $$"
                )
            )
        for verb in ("UPDATE", "DELETE"):
            body = (
                "BEGIN SELECT RAISE(ABORT, 'decisions are never changed'); END"
                if world.sqlite
                else "FOR EACH ROW EXECUTE FUNCTION decisions_never_change()"
            )
            conn.execute(
                text(
                    f"CREATE TRIGGER decisions_no_{verb.lower()} BEFORE {verb} ON decisions {body}"
                )
            )
    try:
        first = investigator.decide(candidate, "match", note="same scar")
        assert first.outcome == "match" and len(first.decisions) == 1
        query = "SELECT * FROM decisions WHERE candidate_id = :c ORDER BY id"
        (row1,) = world.rows(query, c=candidate)
        second = investigator.decide(candidate, "no-match", note="on reflection, no")
        rows = world.rows(query, c=candidate)
        assert len(rows) == 2 and rows[0] == row1  # the first row untouched
        assert second.outcome == "no-match"
        d1, d2 = second.decisions
        assert (d1.verdict, d1.note, d1.supersedes) == ("match", "same scar", None)
        assert (d2.verdict, d2.supersedes) == ("no-match", d1.id)
        third = world.as_("authoriser").decide(candidate, "inconclusive", note="poor image")
        assert third.outcome == "inconclusive" and third.decisions[2].supersedes == d2.id
        assert world.rows(query, c=candidate)[:2] == rows
        with pytest.raises(InvalidInputError):
            investigator.decide(candidate, "probably", note="?")
        with pytest.raises(PermissionDeniedError):
            world.as_("auditor").decide(candidate, "match", note="auditors do not decide")
    finally:
        on = "" if world.sqlite else " ON decisions"
        with world.store.engine.begin() as conn:
            conn.execute(text(f"DROP TRIGGER decisions_no_update{on}"))
            conn.execute(text(f"DROP TRIGGER decisions_no_delete{on}"))
            if not world.sqlite:
                conn.execute(text("DROP FUNCTION decisions_never_change()"))
    events = [e for e in world.events() if e["action"] == "review.decide"]
    assert [e["details"]["verdict"] for e in events[-3:]] == ["match", "no-match", "inconclusive"]
    assert events[-2]["details"]["supersedes"] == d1.id


def test_a_second_reviewer_confirms_a_match(world: World, probes: Probes) -> None:
    candidate = _search_case(world, probes, "R-SECOND", second_review=True)
    investigator = world.as_("investigator")
    with pytest.raises(PolicyError, match="standing match"):
        investigator.confirm(candidate, note="nothing to confirm yet")
    decided = investigator.decide(candidate, "match", note="same person")
    assert decided.outcome == "match (awaiting confirmation)"
    with pytest.raises(PolicyError, match="different reviewer"):
        investigator.confirm(candidate, note="I agree with myself")
    confirmed = world.as_("authoriser").confirm(candidate, note="agreed")
    assert confirmed.outcome == "match (confirmed)"
    first, second = confirmed.decisions
    assert (second.by, second.confirms, second.verdict) == ("authoriser", first.id, "match")
    with pytest.raises(PolicyError, match="already confirmed"):
        world.as_("authoriser2").confirm(candidate, note="me too")
    assert world.events()[-1]["action"] == "review.confirm"
    # A new decision supersedes the match; the old confirmation no longer stands.
    changed = investigator.decide(candidate, "match", note="looked again")
    assert changed.outcome == "match (awaiting confirmation)"


def test_no_decisions_in_a_closed_case(world: World, probes: Probes) -> None:
    candidate = _search_case(world, probes, "R-CLOSED")
    investigator = world.as_("investigator")
    investigator.decide(candidate, "match", note="before closing")
    investigator.close_case("R-CLOSED", reason="finished")
    count = world.scalar("SELECT count(*) FROM decisions WHERE candidate_id = :c", c=candidate)
    with pytest.raises(PolicyError, match="closed"):
        investigator.decide(candidate, "no-match", note="too late")
    with pytest.raises(PolicyError, match="closed"):
        world.as_("authoriser").confirm(candidate, note="too late")
    assert (
        world.scalar("SELECT count(*) FROM decisions WHERE candidate_id = :c", c=candidate) == count
    )


def test_viewing_results_is_audited(world: World, probes: Probes) -> None:
    candidate = _search_case(world, probes, "R-VIEW")
    search_id = world.scalar(
        "SELECT m.search_id FROM candidates c JOIN probe_faces f ON f.id = c.face_id "
        "JOIN probe_media m ON m.id = f.media_id WHERE c.id = :c",
        c=candidate,
    )
    view = world.as_("auditor").search_results(search_id)
    assert [c.id for c in view.candidates] == [candidate]
    event = world.events()[-1]
    assert (event["action"], event["actor"], event["role"]) == ("review.view", "auditor", "auditor")
    assert event["case"] == "R-VIEW" and event["object_ids"] == [candidate]
    # An investigator outside the case sees nothing, and is told nothing.
    with pytest.raises(NotFoundError):
        world.as_("investigator2").search_results(search_id)
    listed = world.as_("investigator").searches("R-VIEW")
    assert [s.id for s in listed] == [search_id]
    event = world.events()[-1]
    assert event["action"] == "review.view" and event["object_ids"] == [search_id]


# --------------------------------------------------------------------------- policy


def test_policy_changes_are_audited_with_old_and_new_values(world: World) -> None:
    before = world.ft.policy().probe_retention_days
    changed = world.ft.set_policy("probe_retention_days", "45", reason="longer reviews")
    assert changed.probe_retention_days == 45 and world.as_("auditor").policy() == changed
    event = world.events()[-1]
    assert (event["action"], event["actor"], event["role"]) == ("policy.change", "admin", "admin")
    assert event["object_ids"] == ["probe_retention_days"]
    assert event["reason"] == "longer reviews"
    assert event["details"] == {"old": before, "new": 45}


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("no_such_setting", 1, "typo"),
        ("floor_fmr", 2.0, "out of range"),
        ("token_days", "many", "not a number"),
        ("min_password_length", 4, "too weak"),
        ("watchlist_max_days", 0, "too short"),
        ("approval_days", 5, ""),  # a reason is required
    ],
)
def test_bad_policy_changes_are_refused_and_change_nothing(
    world: World, key: str, value: Any, reason: str
) -> None:
    policy = world.ft.policy()
    settings = world.rows("SELECT key, value, changed_by, changed_at FROM policy_settings")
    events = world.scalar("SELECT count(*) FROM audit_events")
    with pytest.raises(InvalidInputError):
        world.ft.set_policy(key, value, reason=reason)
    assert world.ft.policy() == policy
    assert world.rows("SELECT key, value, changed_by, changed_at FROM policy_settings") == settings
    assert world.scalar("SELECT count(*) FROM audit_events") == events


def test_only_an_admin_changes_policy(world: World) -> None:
    with pytest.raises(PermissionDeniedError):
        world.as_("authoriser").set_policy("approval_days", 30, reason="longer")
    assert world.ft.policy().approval_days == 7


# --------------------------------------------------------------------------- no biometrics

_LONG_DECIMAL = re.compile(r"\d\.\d{7,}")


def _walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)


def test_no_biometric_data_in_the_trail_or_in_errors(
    world: World, probes: Probes, tmp_path: Path
) -> None:
    investigator = world.as_("investigator")
    candidate = _search_case(world, probes, "B-FLOW")
    investigator.decide(candidate, "match", note="same person")
    investigator.verify(probes.obama, probes.obama2, case="B-FLOW")
    world.as_("auditor").search_results(
        world.scalar("SELECT max(id) FROM searches")
    )  # a view as well

    events = world.as_("auditor").export_audit()
    trail = json.dumps(events)
    assert len(events) > 20 and world.store.verify_audit().ok
    # No template, in any encoding.
    matrix = world.store.templates(world.ft.analyzer.model_id)
    assert len(matrix.vectors) == 9
    for vector in np.asarray(matrix.vectors, np.float32):
        raw = vector.tobytes()
        for encoded in (base64.b64encode(raw[:24]), base64.urlsafe_b64encode(raw[:24])):
            assert encoded.decode() not in trail
        assert raw[:16].hex() not in trail
        for component in vector[:8]:
            assert repr(float(component)) not in trail
    assert not _LONG_DECIMAL.search(trail)
    for event in events:
        assert len(json.dumps(event)) < 2000, event["action"]
        for value in _walk(event):
            assert not (isinstance(value, str) and len(value) > 300), event["action"]
            assert not (isinstance(value, list) and len(value) >= 64), event["action"]
    # Probes are named by their hashes, never by their files.
    for probe in (probes.obama1, probes.obama, probes.obama2):
        assert str(probe) not in trail and str(probe.parent) not in trail
    assert "obama1.jpg" not in trail
    search = [e for e in events if e["action"] == "search" and e["case"] == "B-FLOW"][-1]
    assert search["details"]["probes"] == [hashlib.sha256(probes.obama1.read_bytes()).hexdigest()]
    verify = [e for e in events if e["action"] == "verify"][-1]
    assert verify["object_ids"] == [
        hashlib.sha256(p.read_bytes()).hexdigest() for p in (probes.obama, probes.obama2)
    ]

    # Errors name files and reasons, never numbers from a descriptor.
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff this is not really a JPEG")
    blank = tmp_path / "blank.jpg"
    PILImage.new("RGB", (320, 240), (128, 128, 128)).save(blank)
    messages = []
    with pytest.raises(MediaError) as media:
        investigator.verify(broken, probes.obama, case="B-FLOW")
    messages.append(str(media.value))
    with pytest.raises(NoFaceError) as no_face:
        investigator.verify(probes.obama, blank, case="B-FLOW")
    messages.append(str(no_face.value))
    assert "blank.jpg" in messages[1]
    report = investigator.search([broken, blank, probes.obama1], case="B-FLOW")
    assert report.probes[0].error and not report.probes[1].faces
    messages.append(report.probes[0].error)
    for message in messages:
        assert len(message) < 300 and not re.search(r"\d\.\d{5,}", message), message
        assert "[" not in message and "array" not in message, message


# --------------------------------------------------------------------------- legacy trail


def _old_digest(prev: str, seq: int, at: datetime, event: dict) -> str:
    """An event's hash as facetrail computed it before roles and cases existed."""
    body = {"seq": seq, "at": at.isoformat(), **event}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(f"{prev}\n{canonical}".encode()).hexdigest()


def test_a_trail_begun_before_roles_and_cases_verifies_and_stays_sealed(
    tmp_path: Path, database_url: str | None
) -> None:
    data = tmp_path / "legacy"
    data.mkdir()
    engine = create_engine(database_url_of(database_url or f"sqlite:///{data / 'facetrail.db'}"))
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0002")
        prev = "0" * 64
        for seq in (1, 2, 3):
            at = datetime.now(UTC).replace(microsecond=1000 * seq)
            event = {
                "actor": "local:old",
                "action": "enrol" if seq < 3 else "erase",
                "object_type": "image",
                "object_ids": [seq],
                "reason": None,
                "details": {"templates": seq},
            }
            digest = _old_digest(prev, seq, at, event)
            conn.execute(
                text(
                    "INSERT INTO audit_events (seq, at, actor, action, object_type, "
                    "object_ids, reason, details, prev_hash, hash) VALUES (:seq, :at, :actor, "
                    ":action, :object_type, :object_ids, :reason, :details, :prev, :hash)"
                ),
                {
                    **event,
                    "seq": seq,
                    "at": at.strftime("%Y-%m-%d %H:%M:%S.%f") if database_url is None else at,
                    "object_ids": json.dumps(event["object_ids"]),
                    "details": json.dumps(event["details"]),
                    "prev": prev,
                    "hash": digest,
                },
            )
            prev = digest
        conn.execute(text("INSERT INTO store_state (key, value) VALUES ('audit_head', 3)"))
        columns = {c["name"] for c in inspect(conn).get_columns("audit_events")}
        assert "role" not in columns and "case_ref" not in columns
    engine.dispose()

    with Store.open(data, database_url) as store:  # migrates to the newest schema
        report = store.verify_audit()
        assert report.ok and report.events == 3, report
        with_both = AuditRecord("investigator", "search", "search", [1], None, {}, "investigator")
        store.audit(dataclasses.replace(with_both, case="OP-1"))
        store.audit(AuditRecord("admin", "policy.change", "policy", ["x"], "why", {}, "admin"))
        store.audit(AuditRecord("local:script", "enrol", "image", [4]))  # neither, as of old
        report = store.verify_audit()
        assert report.ok and report.events == 6, report
        exported = store.export_audit()
        assert [(e["role"], e["case"]) for e in exported] == [
            (None, None),
            (None, None),
            (None, None),
            ("investigator", "OP-1"),
            ("admin", None),
            (None, None),
        ]

        def tampered(statement: str, undo: str) -> int | None:
            with store.engine.begin() as conn:
                conn.execute(text(statement))
            broken = store.verify_audit()
            with store.engine.begin() as conn:
                conn.execute(text(undo))
            assert store.verify_audit().ok
            assert not broken.ok
            return broken.first_broken

        set_role = "UPDATE audit_events SET role = {} WHERE seq = {}"
        set_case = "UPDATE audit_events SET case_ref = {} WHERE seq = {}"
        assert tampered(set_role.format("'auditor'", 4), set_role.format("'investigator'", 4)) == 4
        assert tampered(set_role.format("NULL", 5), set_role.format("'admin'", 5)) == 5
        assert tampered(set_case.format("'OP-2'", 4), set_case.format("'OP-1'", 4)) == 4
        assert tampered(set_case.format("NULL", 4), set_case.format("'OP-1'", 4)) == 4
        # An old event given a role or a case after the fact is caught as well.
        assert tampered(set_role.format("'admin'", 2), set_role.format("NULL", 2)) == 2
        assert tampered(set_case.format("'OP-1'", 1), set_case.format("NULL", 1)) == 1
