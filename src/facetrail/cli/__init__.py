"""The `facetrail` command: a thin front door over `facetrail.service`.

The commands live in modules by subject (gallery and search, accounts, cases and review,
oversight); this module only assembles them and takes the global `--token`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from facetrail.cli import accounts, admin, calibrate, cases, gallery
from facetrail.cli.cohort import cohort_app
from facetrail.cli.common import STATE
from facetrail.cli.live import live_app
from facetrail.cli.reports import report_app
from facetrail.cli.templates import templates_app

app = typer.Typer(
    help="facetrail: accountable facial recognition (enrol, search, review, audit).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _global(
    token: Annotated[
        str | None,
        typer.Option(
            envvar="FACETRAIL_TOKEN",
            help="Act with this API token instead of the one `login` saved.",
            show_default=False,
        ),
    ] = None,
) -> None:
    STATE.token = token


for group in (gallery.app, accounts.app, admin.serve_app, calibrate.app):
    app.registered_commands += group.registered_commands
app.add_typer(accounts.user_app, name="user")
app.add_typer(accounts.token_app, name="token")
app.add_typer(accounts.policy_app, name="policy")
app.add_typer(cases.case_app, name="case")
app.add_typer(cases.watchlist_app, name="watchlist")
app.add_typer(cases.review_app, name="review")
app.add_typer(admin.audit_app, name="audit")
app.add_typer(admin.retention_app, name="retention")
app.add_typer(admin.key_app, name="key")
app.add_typer(gallery.eval_app, name="eval")
app.add_typer(live_app, name="live")
app.add_typer(report_app, name="report")
app.add_typer(templates_app, name="templates")
app.add_typer(cohort_app, name="cohort")


def main() -> None:
    app()
