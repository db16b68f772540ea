"""Issue 3 through the `facetrail` command, each call a process of its own: init, login,
tokens and logout, users and policy, then one investigator's case from opening to review.

Every process gets FACETRAIL_CREDENTIALS (one file per person) and XDG_CONFIG_HOME under
the test's temporary folder, so the real user's credentials are never read or written.
Independent commands run side by side to keep the wall time down.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from conftest import PASSWORD

FR = "examples/face_recognition"
TIMEOUT = 300


@dataclass
class Result:
    args: list[str]
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)

    def ok(self) -> Any:
        """The JSON document of a command that succeeded."""
        assert self.code == 0, (self.args, self.code, self.stderr)
        assert "Traceback" not in self.stderr, self.stderr
        return self.json

    def refused(self, code: int, contains: str = "") -> str:
        """A failure: the exit code, one line on stderr, no traceback; returns the line."""
        assert self.code == code, (self.args, self.code, self.stdout, self.stderr)
        assert "Traceback" not in self.stderr and "Traceback" not in self.stdout
        lines = self.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), self.stderr
        assert contains in lines[0], lines[0]
        if "--json" in self.args:
            error = self.json["error"]
            assert set(error) == {"type", "message"} and error["message"] in lines[0]
        return lines[0]


@dataclass
class Site:
    """A data directory driven only through the command line, by people with their own
    credentials files."""

    root: Path
    data: Path
    setup: dict[str, Result] = field(default_factory=dict)

    def credentials(self, who: str) -> Path:
        return self.root / "credentials" / f"{who}.json"

    def saved(self, who: str) -> dict[str, str]:
        path = self.credentials(who)
        return json.loads(path.read_text()) if path.exists() else {}

    def env(self, who: str, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FACETRAIL_")}
        env.update(
            FACETRAIL_DATA=str(self.data),
            FACETRAIL_CREDENTIALS=str(self.credentials(who)),
            XDG_CONFIG_HOME=str(self.root / "config"),
            PYTHONUNBUFFERED="1",
            COLUMNS="200",
        )
        env.update(extra)
        return env

    def start(
        self, who: str, *args: str, stdin: str | None = None, **env: str
    ) -> tuple[list[str], subprocess.Popen[str]]:
        command = [sys.executable, "-m", "facetrail", *args]
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env(who, **env),
            cwd=self.root,
        )
        # A line at most: it fits the pipe, so write it now and let the process run on.
        assert process.stdin is not None
        process.stdin.write(stdin or "")
        process.stdin.close()
        process.stdin = None  # so that communicate() only reads
        return list(args), process

    @staticmethod
    def finish(started: tuple[list[str], subprocess.Popen[str]]) -> Result:
        args, process = started
        try:
            stdout, stderr = process.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        return Result(args, process.returncode, stdout, stderr)

    def run(self, who: str, *args: str, stdin: str | None = None, **env: str) -> Result:
        return self.finish(self.start(who, *args, stdin=stdin, **env))

    def together(self, *calls: tuple) -> list[Result]:
        """Independent commands, run at the same time: (who, *args[, {env or stdin}]), or
        (who, "one command line")."""
        started = []
        for who, *args in calls:
            options = args.pop() if args and isinstance(args[-1], dict) else {}
            if len(args) == 1:
                args = shlex.split(args[0])
            started.append(self.start(who, *args, **options))
        return [self.finish(s) for s in started]


def _user_shape(body: dict, name: str, role: str, active: bool = True) -> None:
    assert set(body) == {"id", "name", "role", "active", "created_at"}
    assert (body["name"], body["role"], body["active"]) == (name, role, active)
    assert datetime.fromisoformat(body["created_at"]).tzinfo is not None


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    """`init` by the admin; users added; the investigator, the authoriser and a spare
    investigator ("temp") each logged in with their own credentials file."""
    root = tmp_path_factory.mktemp("cli")
    s = Site(root, root / "data")
    pw = {"stdin": PASSWORD + "\n"}
    s.setup["init"] = s.run("admin", "init", "--password-stdin", "--json", **pw)
    s.setup["init"].ok()
    s.setup["init-again"], *added = s.together(
        ("admin", "init", "--password-stdin", "--json", pw),
        *[
            ("admin", "user", "add", name, "--role", role, "--password-stdin", "--json", pw)
            for name, role in (
                ("investigator", "investigator"),
                ("authoriser", "authoriser"),
                ("temp", "investigator"),
            )
        ],
    )
    for result in added:
        s.setup[f"add-{result.args[2]}"] = result
        result.ok()
    for result in s.together(
        *[
            (name, "login", name, "--password-stdin", "--json", pw)
            for name in ("investigator", "authoriser", "temp")
        ]
    ):
        s.setup[f"login-{result.args[1]}"] = result
        result.ok()
    return s


# --------------------------------------------------------------------------- accounts


def test_init_login_tokens_and_logout(site: Site) -> None:
    key = str(site.data.resolve())
    # init made the administrator and saved a private token for this data directory.
    body = site.setup["init"].ok()
    assert set(body) == {"user", "role", "token_expires_at"}
    assert (body["user"], body["role"]) == ("admin", "admin")
    expires = datetime.fromisoformat(body["token_expires_at"])
    assert timedelta(days=29) < expires - datetime.now(UTC) <= timedelta(days=30)
    credentials = site.credentials("admin")
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    admin_token = site.saved("admin")[key]
    assert admin_token.startswith("ft_") and list(site.saved("admin")) == [key]
    db = (site.data / "facetrail.db").read_bytes()
    assert admin_token.encode() not in db
    assert not (site.root / "config").exists()  # nothing written to a default location
    site.setup["init-again"].refused(11, "already has users")
    for name, role in (("investigator", "investigator"), ("authoriser", "authoriser")):
        _user_shape(site.setup[f"add-{name}"].ok(), name, role)
        login = site.setup[f"login-{name}"].ok()
        assert set(login) == {"user", "expires_at"} and login["user"] == name
        assert site.saved(name)[key] not in (admin_token, site.saved("admin")[key])

    users, me = site.together(
        ("admin", "user", "list", "--json"),
        ("investigator", "whoami", "--json"),  # the saved token, no --token
    )
    listed = users.ok()["users"]
    assert listed[0]["name"] == "admin"  # added in parallel, so in no set order after it
    assert sorted((u["name"], u["role"]) for u in listed) == [
        ("admin", "admin"),
        ("authoriser", "authoriser"),
        ("investigator", "investigator"),
        ("temp", "investigator"),
    ]
    for user in listed:
        _user_shape(user, user["name"], user["role"])
    _user_shape(me.ok(), "investigator", "investigator")

    # Tokens for scripts: shown once, listed, and they override the saved one.
    created, spare = site.together(
        ("temp", "token", "create", "--label", "script", "--days", "5", "--json"),
        ("temp", "token", "create", "--label", "spare", "--json"),
    )
    script = created.ok()
    assert set(script) == {"token", "id", "user", "label", "created_at", "expires_at", "revoked"}
    assert (script["user"], script["label"], script["revoked"]) == ("temp", "script", False)
    expires = datetime.fromisoformat(script["expires_at"])
    assert timedelta(days=4) < expires - datetime.now(UTC) <= timedelta(days=5)
    assert script["token"].startswith("ft_") and spare.ok()["token"] != script["token"]
    assert script["token"] not in json.dumps(site.saved("temp"))
    listing, by_env, by_flag = site.together(
        ("temp", "token", "list", "--json"),
        ("admin", "whoami", "--json", {"FACETRAIL_TOKEN": script["token"]}),
        ("admin", "--token", script["token"], "whoami", "--json"),
    )
    tokens = listing.ok()["tokens"]
    assert sorted((t["label"], t["user"], t["revoked"]) for t in tokens) == [
        ("cli", "temp", False),
        ("script", "temp", False),
        ("spare", "temp", False),
    ]
    assert set(tokens[0]) == {"id", "user", "label", "created_at", "expires_at", "revoked"}
    assert by_env.ok()["name"] == "temp" and by_flag.ok()["name"] == "temp"

    # `token revoke`; and logging out with --token leaves the saved token alone.
    revoked, spare_out = site.together(
        ("temp", "token", "revoke", str(script["id"]), "--json"),
        ("admin", "--token", spare.json["token"], "logout", "--json"),
    )
    assert revoked.ok() == {"revoked": script["id"]}
    assert spare_out.ok() == {"logged_out": True}
    assert site.saved("admin")[key] == admin_token
    saved_login = site.saved("temp")[key]
    used_revoked, spare_used, logout = site.together(
        ("admin", "--token", script["token"], "whoami", "--json"),
        ("admin", "--token", spare.json["token"], "whoami", "--json"),
        ("temp", "logout", "--json"),
    )
    used_revoked.refused(9, "revoked")
    spare_used.refused(9, "revoked")
    assert logout.ok() == {"logged_out": True}
    assert key not in site.saved("temp")  # forgotten...

    after, old_token, role, itself = site.together(
        ("temp", "whoami"),
        ("temp", "--token", saved_login, "whoami"),  # ...and revoked
        ("admin", "user", "set", "temp", "--role", "operator", "--json"),
        ("admin", "user", "set", "admin", "--disable", "--json"),
    )
    after.refused(9, "not logged in")
    old_token.refused(9, "revoked")
    _user_shape(role.ok(), "temp", "operator")
    itself.refused(11, "cannot disable their own account")


# --------------------------------------------------------------------------- a whole case


def _candidates(report: dict) -> list[dict]:
    return [c for p in report["probes"] for f in p["faces"] for c in f["candidates"]]


def test_one_investigators_case_from_start_to_review(site: Site, shared_data: Path) -> None:
    images = shared_data / FR
    probe = shlex.quote(str(images / "knn_examples/test/obama1.jpg"))
    soon = (datetime.now(UTC) + timedelta(days=10)).date().isoformat()
    too_late = (datetime.now(UTC) + timedelta(days=60)).date().isoformat()

    enrolled, policy_set, opened = site.together(
        ("admin", f"enrol {shlex.quote(str(images / 'knn_examples/train'))} --json"),
        ("admin", "policy set watchlist_max_days 30 --reason 'shorter lists' --json"),
        ("investigator", "case open OP-7 --purpose 'find X' --legal-basis 'PACE 1984' "
         "--second-review --json"),
    )  # fmt: skip
    assert enrolled.ok()["enrolled"] == 9
    assert policy_set.ok()["watchlist_max_days"] == 30
    case = opened.ok()
    assert set(case) == {
        "reference", "purpose", "legal_basis", "second_review", "opened_by", "opened_at",
        "closed_at", "members", "searches", "approvals",
    }  # fmt: skip
    assert (case["reference"], case["purpose"], case["legal_basis"]) == (
        "OP-7",
        "find X",
        "PACE 1984",
    )
    assert (case["second_review"], case["opened_by"], case["members"]) == (
        True,
        "investigator",
        ["investigator"],
    )
    assert (case["closed_at"], case["approvals"], case["searches"]) == (None, [], 0)

    shown, bad_key, missing, wrong_role = site.together(
        ("investigator", "policy show --json"),
        ("admin", "policy set no_such_thing 1 --reason typo --json"),
        ("investigator", "case show OP-NONE --json"),
        ("investigator", "user list --json"),
    )
    policy = shown.ok()
    assert policy["watchlist_max_days"] == 30 and policy["min_password_length"] == 12
    assert set(policy) >= {"floor_fmr", "gallery_search_needs_approval", "approval_days"}
    bad_key.refused(2, "unknown policy setting")
    missing.refused(6, "no case 'OP-NONE'")
    wrong_role.refused(10, "may not users.manage")

    approved, created, too_long = site.together(
        ("authoriser", "case approve OP-7 --scope gallery --reason 'wide search' --json"),
        ("investigator", f"watchlist create WL-X --purpose 'find X' --expires {soon} --json"),
        ("investigator", f"watchlist create WL-L --purpose long --expires {too_late} --json"),
    )
    approval = approved.ok()
    assert set(approval) == {
        "id", "scope", "min_threshold", "reason", "approved_by", "approved_at", "expires_at",
    }  # fmt: skip
    assert (approval["scope"], approval["approved_by"]) == ("gallery", "authoriser")
    assert approval["reason"] == "wide search" and approval["min_threshold"] is None
    watchlist = created.ok()
    assert (watchlist["status"], watchlist["members"]) == ("awaiting authorisation", [])
    assert watchlist["expires_at"].startswith(soon)
    too_long.refused(11, "at most 30 days")

    added, listed, case_shown = site.together(
        ("investigator", "watchlist add WL-X obama biden --reason 'seen at the scene' --json"),
        ("investigator", "case list --json"),
        ("investigator", "case show OP-7 --json"),
    )
    assert [m["subject"] for m in added.ok()["members"]] == ["biden", "obama"]
    assert added.json["status"] == "awaiting authorisation"
    assert [c["reference"] for c in listed.ok()["cases"]] == ["OP-7"]
    assert [a["id"] for a in case_shown.ok()["approvals"]] == [approval["id"]]

    authorised = site.run("authoriser", *shlex.split("watchlist authorise WL-X --reason ok --json"))
    assert (authorised.ok()["status"], authorised.json["authorised_by"]) == (
        "authorised",
        "authoriser",
    )

    shown, searched = site.together(
        ("investigator", "watchlist show WL-X --json"),
        ("investigator", f"search {probe} --case OP-7 --watchlist WL-X --reason lead --json"),
    )
    info = shown.ok()
    assert (info["authorised_by"], info["created_by"]) == ("authoriser", "investigator")
    assert [(m["subject"], m["reason"], m["added_by"]) for m in info["members"]] == [
        ("biden", "seen at the scene", "investigator"),
        ("obama", "seen at the scene", "investigator"),
    ]
    report = searched.ok()
    assert (report["case"], report["scope"], report["watchlist"]) == ("OP-7", "watchlist", "WL-X")
    assert report["gallery_subjects"] == 2 and isinstance(report["search_id"], int)
    (candidate,) = _candidates(report)
    assert candidate["subject"] == "obama" and candidate["above_threshold"]
    assert isinstance(candidate["id"], int) and 0 < candidate["fmr"] < 1e-3
    assert set(report) >= {"model", "threshold", "top_k", "probes", "unmatched_faces_deleted"}

    view = site.run("investigator", "review", "show", str(report["search_id"]), "--json").ok()
    assert (view["id"], view["case"], view["by"], view["scope"], view["watchlist"]) == (
        report["search_id"],
        "OP-7",
        "investigator",
        "watchlist",
        "WL-X",
    )
    (row,) = view["candidates"]
    assert (row["id"], row["subject"], row["outcome"], row["decisions"]) == (
        candidate["id"],
        "obama",
        "undecided",
        [],
    )

    cid = str(candidate["id"])
    decided = site.run("investigator", "review", "decide", cid, "match", "--note", "same", "--json")
    assert decided.ok()["outcome"] == "match (awaiting confirmation)"
    (first,) = decided.json["decisions"]
    assert set(first) == {"id", "verdict", "note", "by", "at", "supersedes", "confirms"}
    assert (first["verdict"], first["by"], first["supersedes"]) == ("match", "investigator", None)
    self_confirm, confirmed = site.together(
        ("investigator", f"review confirm {cid} --note 'me again' --json"),
        ("authoriser", f"review confirm {cid} --note agreed --json"),
    )
    self_confirm.refused(11, "different reviewer")
    assert confirmed.ok()["outcome"] == "match (confirmed)"
    assert [(d["by"], d["confirms"]) for d in confirmed.json["decisions"]] == [
        ("investigator", None),
        ("authoriser", first["id"]),
    ]

    closed = site.run("investigator", *shlex.split("case close OP-7 --reason done --json"))
    assert closed.ok()["closed_at"] is not None and closed.json["searches"] == 1
    late = site.run("investigator", *shlex.split(f"review decide {cid} no-match --note late"))
    late.refused(11, "case OP-7 is closed")
