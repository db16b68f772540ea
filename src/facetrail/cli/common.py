"""What every command shares: options, the session with its caller, output and errors.

Every command takes `--data DIR` (or FACETRAIL_DATA) and most take `--json`; with `--json` a
command prints exactly one JSON document on stdout and nothing else there (progress goes to
stderr). Errors are one line on stderr and a non-zero exit code, never a traceback.

Who is acting: `--token` / FACETRAIL_TOKEN if given, else the token `facetrail login` saved
for this data directory in the user's credentials file (private, 0600).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from platformdirs import user_config_dir
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from facetrail.config import Settings
from facetrail.errors import FacetrailError, InvalidInputError
from facetrail.files import write_atomic
from facetrail.service.app import Facetrail

out = Console(highlight=False, soft_wrap=True, markup=False)  # names are data, not markup
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)


class _State:
    token: str | None = None


STATE = _State()

DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data",
        envvar="FACETRAIL_DATA",
        help="Data directory (default: per-user).",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
PasswordStdin = Annotated[
    bool,
    typer.Option("--password-stdin", help="Read the password from the first line of stdin."),
]


# --------------------------------------------------------------------------- credentials


def credentials_file() -> Path:
    configured = os.environ.get("FACETRAIL_CREDENTIALS")
    if configured:
        return Path(configured)
    return Path(user_config_dir("facetrail", appauthor=False)) / "credentials.json"


def _read_credentials() -> dict[str, str]:
    try:
        data = json.loads(credentials_file().read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _key(data: Path) -> str:
    return str(data.expanduser().resolve())


def saved_token(data: Path) -> str | None:
    return _read_credentials().get(_key(data))


def save_token(data: Path, token: str | None) -> Path:
    """Remember (or, with None, forget) this data directory's token, in a private file."""
    path = credentials_file()
    tokens = _read_credentials()
    if token is None:
        tokens.pop(_key(data), None)
    else:
        tokens[_key(data)] = token
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, json.dumps(tokens, indent=2).encode())  # mkstemp: mode 0600
    return path


# --------------------------------------------------------------------------- sessions


def settings_for(data: Path | None, **overrides: Any) -> Settings:
    return Settings(**({"data": data} if data else {}), **overrides)


@contextmanager
def session(
    data: Path | None, as_json: bool, *, anonymous: bool = False, **overrides: Any
) -> Iterator[Facetrail]:
    """Open the data directory as the current user; turn every facetrail error into one
    line and an exit code. `anonymous`: no caller needed (init, login)."""
    try:
        settings = settings_for(data, **overrides)
        token = None if anonymous else STATE.token or saved_token(settings.data)
        with Facetrail(settings, token=token) as ft:
            yield ft
    except FacetrailError as exc:
        fail(str(exc), type(exc).__name__, exc.exit_code, as_json)
    except KeyboardInterrupt:
        fail("interrupted", "Interrupted", 130, as_json)


def fail(message: str, kind: str, code: int, as_json: bool) -> None:
    if as_json:
        emit_json({"error": {"type": kind, "message": message}})
    err.print(f"[bold red]error:[/] {escape(message)}", markup=True)
    raise typer.Exit(code)


def read_password(from_stdin: bool, prompt: str = "Password", confirm: bool = False) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            fail("no password on stdin", "InvalidInputError", InvalidInputError.exit_code, False)
        return line.rstrip("\r\n")
    return typer.prompt(prompt, hide_input=True, confirmation_prompt=confirm)


def parse_time(value: str) -> datetime:
    """ISO 8601 date or time; a date means its end (23:59:59 UTC), no zone means UTC."""
    try:
        if len(value) == 10:
            parsed = datetime.fromisoformat(value).replace(hour=23, minute=59, second=59)
        else:
            parsed = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not an ISO 8601 date or time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# --------------------------------------------------------------------------- output


def jsonable(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "model_dump"):
        return value.model_dump()
    if is_dataclass(value):
        return asdict(value)  # type: ignore[arg-type]
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):  # {"users": [...]} and the like: their items too
        return {k: jsonable(v) for k, v in value.items()}
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()  # ISO 8601 with its UTC offset
    return str(value)


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(jsonable(value), indent=2, default=_json_default) + "\n")


def when(value: datetime | None) -> str:
    return "-" if value is None else f"{value:%Y-%m-%d %H:%M}"


@contextmanager
def progress_bar(label: str) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    """(set_total, advance) callbacks backed by a rich progress bar on stderr."""
    progress = Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,  # no bar in logs and pipes
    )
    task = progress.add_task(label, total=None)
    with progress:
        yield (
            lambda total: progress.update(task, total=total),
            lambda n: progress.advance(task, n),
        )


def show(value: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    """One JSON document, or the human rendering."""
    if as_json:
        emit_json(value)
    else:
        render(value)


def rate_text(value: float | None) -> str:
    # Three significant digits: an FMR of 0.000255 must not print as 0.0003.
    return "n/a" if value is None else f"{value:.3g}"


def score_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
