"""Accounts and policy: init, login, logout, whoami, user ..., token ..., policy ..."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from facetrail.cli.common import (
    STATE,
    DataOpt,
    JsonOpt,
    PasswordStdin,
    emit_json,
    err,
    out,
    read_password,
    save_token,
    saved_token,
    session,
    show,
    when,
)

app = typer.Typer()
user_app = typer.Typer(help="Users and their roles (administrators).", no_args_is_help=True)
token_app = typer.Typer(help="API tokens for scripts.", no_args_is_help=True)
policy_app = typer.Typer(help="The policy every user works under.", no_args_is_help=True)


@app.command()
def init(
    admin: Annotated[str, typer.Option(help="Name of the first administrator.")] = "admin",
    password_stdin: PasswordStdin = False,
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set up a new data directory: the first administrator and the default policy."""
    password = read_password(password_stdin, "Administrator password", confirm=True)
    with session(data, as_json, anonymous=True) as ft:
        issued = ft.init(admin, password)
        saved = save_token(ft.settings.data, issued.token)
    if as_json:
        return emit_json(
            {"user": admin, "role": "admin", "token_expires_at": issued.info.expires_at}
        )
    out.print(f"created administrator {admin} and the default policy; logged in ({saved})")
    out.print("next: `facetrail user add NAME --role investigator` for the people who search")


@app.command()
def login(
    name: Annotated[str, typer.Argument(help="Your user name.")],
    password_stdin: PasswordStdin = False,
    print_token: Annotated[
        bool, typer.Option("--print-token", help="Print the token instead of saving it.")
    ] = False,
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Log in: the token is kept in your credentials file for this data directory."""
    password = read_password(password_stdin)
    with session(data, as_json, anonymous=True) as ft:
        issued = ft.login(name, password, label="cli")
        saved = None if print_token else save_token(ft.settings.data, issued.token)
    body = {"user": name, "expires_at": issued.info.expires_at}
    if print_token:
        body["token"] = issued.token
    if as_json:
        return emit_json(body)
    if print_token:
        out.print(issued.token)
    else:
        out.print(f"logged in as {name} until {when(issued.info.expires_at)} UTC ({saved})")


@app.command()
def logout(data: DataOpt = None, as_json: JsonOpt = False) -> None:
    """Revoke the current token and forget it."""
    with session(data, as_json) as ft:
        ft.logout()
        # Forget the saved token only if it is the one logged out (not a --token's).
        if STATE.token is None or STATE.token == saved_token(ft.settings.data):
            save_token(ft.settings.data, None)
    show({"logged_out": True}, as_json, lambda _: out.print("logged out"))


@app.command()
def whoami(data: DataOpt = None, as_json: JsonOpt = False) -> None:
    """Who the current token belongs to."""
    with session(data, as_json) as ft:
        me = ft.whoami()
    show(me, as_json, lambda u: out.print(f"{u.name} ({u.role})"))


def _users_table(users: list) -> None:
    table = Table("user", "role", "active", "created")
    for u in users:
        table.add_row(u.name, u.role, "yes" if u.active else "no", when(u.created_at))
    out.print(table)


@user_app.command("add")
def user_add(
    name: Annotated[str, typer.Argument(help="User name.")],
    role: Annotated[str, typer.Option(help="admin, authoriser, investigator, operator, auditor.")],
    password_stdin: PasswordStdin = False,
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a user with a role."""
    password = read_password(password_stdin, f"Password for {name}", confirm=True)
    with session(data, as_json) as ft:
        user = ft.add_user(name, role, password)
    show(user, as_json, lambda u: out.print(f"added {u.name} ({u.role})"))


@user_app.command("list")
def user_list(data: DataOpt = None, as_json: JsonOpt = False) -> None:
    """List users."""
    with session(data, as_json) as ft:
        users = ft.users()
    show({"users": users}, as_json, lambda v: _users_table(v["users"]))


@user_app.command("set")
def user_set(
    name: Annotated[str, typer.Argument(help="User name.")],
    role: Annotated[str | None, typer.Option(help="New role.")] = None,
    active: Annotated[
        bool | None, typer.Option("--enable/--disable", help="Enable or disable the account.")
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Reset the password from stdin.")
    ] = False,
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a user's role, disable or enable them, or reset their password."""
    password = read_password(True) if password_stdin else None
    with session(data, as_json) as ft:
        user = ft.set_user(name, role=role, active=active, password=password)
    show(user, as_json, lambda u: _users_table([u]))


@token_app.command("create")
def token_create(
    label: Annotated[str, typer.Option(help="What the token is for.")],
    days: Annotated[int | None, typer.Option(help="Valid for (default: policy).")] = None,
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a token for yourself (shown once; keep it secret)."""
    with session(data, as_json) as ft:
        issued = ft.create_token(label, days)
    if as_json:
        return emit_json({"token": issued.token, **issued.info.__dict__})
    out.print(issued.token)
    err.print(f"token {issued.info.id} valid until {when(issued.info.expires_at)} UTC")


@token_app.command("list")
def token_list(data: DataOpt = None, as_json: JsonOpt = False) -> None:
    """Your tokens (an administrator sees everyone's)."""
    with session(data, as_json) as ft:
        tokens = ft.tokens()

    def render(v: dict) -> None:
        table = Table("id", "user", "label", "created", "expires", "revoked")
        for t in v["tokens"]:
            revoked = "yes" if t.revoked else ""
            table.add_row(
                str(t.id), t.user, t.label, when(t.created_at), when(t.expires_at), revoked
            )
        out.print(table)

    show({"tokens": tokens}, as_json, render)


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[int, typer.Argument(help="Token id (from `token list`).")],
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke a token."""
    with session(data, as_json) as ft:
        ft.revoke_token(token_id)
    show({"revoked": token_id}, as_json, lambda _: out.print(f"revoked token {token_id}"))


@policy_app.command("show")
def policy_show(data: DataOpt = None, as_json: JsonOpt = False) -> None:
    """The current policy."""
    with session(data, as_json) as ft:
        policy = ft.policy()

    def render(p: object) -> None:
        for key, value in p.model_dump().items():  # type: ignore[attr-defined]
            out.print(f"{key} = {value}")

    show(policy, as_json, render)


@policy_app.command("set")
def policy_set(
    key: Annotated[str, typer.Argument(help="Setting (see `policy show`).")],
    value: Annotated[str, typer.Argument(help="New value ('none' to clear).")],
    reason: Annotated[str, typer.Option(help="Why (audited).")],
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change one policy setting (administrators; audited with old and new values)."""
    with session(data, as_json) as ft:
        policy = ft.set_policy(key, value, reason=reason)
    show(policy, as_json, lambda p: out.print(f"{key} = {getattr(p, key)}"))
