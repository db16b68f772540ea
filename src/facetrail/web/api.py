"""The JSON API, /api/v1: every route a thin call into the service as the bearer's user.

Each route does what one CLI command does, through the same `Facetrail` method, which checks
the caller's role and the policy and writes the audit event; the routes only translate HTTP
to arguments and results to JSON. Lists are paginated (`limit`, `offset`; the body says
`total`). Creations answer 201; searches and clusterings of uploaded files are background
jobs: the upload answers 202 with the job, whose progress is at /jobs/{id}. Uploads are typed
by their content (never by their name) and refused beyond the configured sizes; the uploaded
files are deleted when the request or job that used them ends. Errors are problem+json.

Evaluation (`facetrail eval lfw`, calibration) is not offered over HTTP: it reads a labelled
data set on the server's disk and runs for minutes, so it stays on the command line.
"""

from __future__ import annotations

import csv
import io
import shutil
from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, Request, Response, UploadFile
from pydantic import BaseModel, BeforeValidator, Field
from starlette.concurrency import run_in_threadpool

from facetrail.errors import InvalidInputError
from facetrail.service.access import Op
from facetrail.service.app import Facetrail
from facetrail.web import uploads
from facetrail.web.auth import Caller, base, client_address
from facetrail.web.jobs import Job
from facetrail.web.problems import HttpProblem

router = APIRouter()

DESCRIPTION = """The JSON API is under `/api/v1`: send `Authorization: Bearer <token>` (from
`POST /api/v1/login`, or `facetrail login --print-token`). Every operation is checked against
the caller's role and the policy by the service, as on the command line. Lists take `limit`
and `offset`; uploads are typed by their content and limited in size; searches and
clusterings run as background jobs (202, then `GET /api/v1/jobs/{id}`); errors are
`application/problem+json`. Evaluation (`facetrail eval lfw`, saving a calibration) is
offered on the command line only: it reads a labelled data set on the server's disk."""

MAX_LIMIT = 500
MAX_MANIFEST_BYTES = 4 * 1024 * 1024

NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


class Page(BaseModel):
    items: list[Any]
    total: int
    limit: int
    offset: int


def plain(value: Any) -> Any:
    """Dataclasses and pydantic models as JSON-ready values."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "model_dump"):
        return value.model_dump()
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


class Paging(BaseModel):
    limit: int = Field(50, ge=1, le=MAX_LIMIT)
    offset: int = Field(0, ge=0)


def paging(
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Paging:
    return Paging(limit=limit, offset=offset)


Pages = Annotated[Paging, Depends(paging)]


def paged(items: list[Any], p: Paging) -> Page:
    """One page of a list the service returned whole."""
    window = items[p.offset : p.offset + p.limit]
    return Page(items=plain(window), total=len(items), limit=p.limit, offset=p.offset)


def _moment(value: Any) -> Any:
    """An ISO 8601 date or time as the CLI reads it: a date means its end (23:59:59 UTC), a
    time without a zone is UTC."""
    if not isinstance(value, str):
        return value
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("not an ISO 8601 date or time") from None
    if len(value) == 10:
        parsed = parsed.replace(hour=23, minute=59, second=59)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


Moment = Annotated[datetime, BeforeValidator(_moment)]
Reason = Annotated[str, Field(min_length=1, max_length=1000, description="Why (audited).")]
Note = Annotated[str, Field(min_length=1, max_length=2000)]


def _utc(when: datetime | None) -> datetime | None:
    return when.replace(tzinfo=UTC) if when is not None and when.tzinfo is None else when


# --------------------------------------------------------------------------- uploads


async def _read_manifest(upload: UploadFile) -> str:
    data = await upload.read(MAX_MANIFEST_BYTES + 1)
    if len(data) > MAX_MANIFEST_BYTES:
        raise HttpProblem(413, f"the manifest is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise HttpProblem(415, "the manifest is not UTF-8 CSV text") from None


def _rebase_manifest(text: str, files: list[UploadFile], saved: list[Path], out: Path) -> None:
    """Write the manifest with its `image` column pointing at the saved uploads: a manifest
    names uploaded files (by the name they were uploaded under, or its last part), never a
    path on the server."""
    names: dict[str, str] = {}
    for upload, path in zip(files, saved, strict=True):
        given, where = upload.filename or "", str(path.relative_to(out.parent))
        names.setdefault(given, where)
        names.setdefault(Path(given).name, where)
    try:
        reader = csv.DictReader(io.StringIO(text))
        fields = list(reader.fieldnames or [])
        rows = list(reader)
    except csv.Error as exc:
        raise InvalidInputError(f"the manifest cannot be read as CSV ({exc})") from None
    for line, row in enumerate(rows, start=2):
        image = (row.get("image") or "").strip()
        if not image:
            continue  # the service names what is missing
        found = names.get(image) or names.get(Path(image).name)
        if found is None:
            raise InvalidInputError(f"manifest line {line}: {image!r} was not uploaded")
        row["image"] = found
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _image_response(data: bytes) -> Response:
    return Response(data, media_type=uploads.image_type(data), headers=NO_STORE)


# --------------------------------------------------------------------------- accounts


class LoginBody(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    password: str = Field(min_length=1, max_length=1024)
    label: str = Field("api", min_length=1, max_length=100)


@router.post("/login", tags=["accounts"])
def login(body: LoginBody, request: Request, ft: Annotated[Facetrail, Depends(base)]) -> dict:
    """Exchange a name and password for a bearer token (rate limited per name and client)."""
    limiter = request.app.state.limiter
    client = client_address(request)
    limiter.check(body.name, client)
    handle = ft.as_caller(None)
    try:
        issued = handle.login(body.name, body.password, label=body.label)
    except Exception:
        limiter.failed(body.name, client)
        raise
    limiter.succeeded(body.name, client)
    return {"token": issued.token, **plain(issued.info)}


@router.post("/logout", tags=["accounts"])
def logout(ft: Caller) -> dict:
    """Revoke the token this request carries."""
    ft.logout()
    return {"logged_out": True}


@router.get("/me", tags=["accounts"])
def me(ft: Caller) -> dict:
    return plain(ft.whoami())


class NewUser(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    role: str = Field(description="admin, authoriser, investigator, operator or auditor")
    password: str = Field(min_length=1, max_length=1024)


class UserChange(BaseModel):
    role: str | None = None
    active: bool | None = None
    password: str | None = Field(None, min_length=1, max_length=1024)


@router.get("/users", tags=["accounts"])
def users(ft: Caller, p: Pages) -> Page:
    return paged(ft.users(), p)


@router.post("/users", status_code=201, tags=["accounts"])
def add_user(body: NewUser, ft: Caller) -> dict:
    return plain(ft.add_user(body.name, body.role, body.password))


@router.patch("/users/{name}", tags=["accounts"])
def change_user(name: str, body: UserChange, ft: Caller) -> dict:
    """Change a role, enable or disable, or reset the password; the user's tokens are
    revoked unless they were only enabled."""
    return plain(ft.set_user(name, role=body.role, active=body.active, password=body.password))


class NewToken(BaseModel):
    label: str = Field(min_length=1, max_length=100)
    days: int | None = Field(None, description="Valid for (default and most: policy)")


@router.get("/tokens", tags=["accounts"])
def tokens(ft: Caller, p: Pages) -> Page:
    """The caller's tokens (an administrator's: everyone's); never the token values."""
    return paged(ft.tokens(), p)


@router.post("/tokens", status_code=201, tags=["accounts"])
def create_token(body: NewToken, ft: Caller) -> dict:
    """A new token for the caller (for scripts); its value is shown this once."""
    issued = ft.create_token(body.label, body.days)
    return {"token": issued.token, **plain(issued.info)}


@router.delete("/tokens/{token_id}", tags=["accounts"])
def revoke_token(token_id: int, ft: Caller) -> dict:
    ft.revoke_token(token_id)
    return {"revoked": token_id}


# --------------------------------------------------------------------------- policy


class PolicyChange(BaseModel):
    key: str = Field(min_length=1, max_length=100)
    value: Any = Field(description="The new value (JSON number, boolean, or null)")
    reason: Reason


@router.get("/policy", tags=["policy"])
def policy(ft: Caller) -> dict:
    return plain(ft.policy())


@router.patch("/policy", tags=["policy"])
def set_policy(body: PolicyChange, ft: Caller) -> dict:
    return plain(ft.set_policy(body.key, body.value, reason=body.reason))


@router.post("/storage/encryption", tags=["policy"])
def encrypt_existing(ft: Caller) -> dict:
    """Encrypt the images, crops and templates stored before a key was configured."""
    return ft.encrypt_existing()


# --------------------------------------------------------------------------- gallery


@router.get("/subjects", tags=["gallery"])
def subjects(ft: Caller, p: Pages) -> Page:
    return paged(ft.subjects(), p)


@router.get("/subjects/{name:path}/files/{sha256}", tags=["gallery"])
def subject_file(name: str, sha256: str, ft: Caller) -> Response:
    """A subject's stored reference image or face crop (not cached by the browser)."""
    return _image_response(ft.subject_file(name, sha256))


@router.post("/subjects/{name:path}/images", status_code=201, tags=["gallery"])
async def enrol_images(
    name: str,
    request: Request,
    ft: Caller,
    files: Annotated[list[UploadFile], File(description="Reference images of this subject.")],
) -> dict:
    """Enrol uploaded reference images as one subject (created if new)."""
    await run_in_threadpool(ft.require, Op.ENROL)
    folder, saved = await uploads.save_all(request.app.state.settings, files)
    try:
        report = await run_in_threadpool(lambda: ft.enrol(saved, subject=name))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return uploads.relabel(plain(report), saved)


@router.post("/enrolments", status_code=201, tags=["gallery"])
async def enrol_manifest(
    request: Request,
    ft: Caller,
    manifest: Annotated[
        UploadFile,
        File(description="CSV: subject, image (an uploaded file's name), optional reference."),
    ],
    files: Annotated[list[UploadFile], File(description="The images the manifest names.")],
) -> dict:
    """Enrol many subjects at once, with reference numbers, as `enrol --manifest` does."""
    await run_in_threadpool(ft.require, Op.ENROL)
    text = await _read_manifest(manifest)
    folder, saved = await uploads.save_all(request.app.state.settings, files)
    try:
        _rebase_manifest(text, files, saved, folder / "manifest.csv")
        report = await run_in_threadpool(lambda: ft.enrol(manifest=folder / "manifest.csv"))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return uploads.relabel(plain(report), saved)


class Renewal(BaseModel):
    until: Moment = Field(description="New review date (ISO 8601; a date means its end, UTC)")
    reason: Reason


@router.post("/subjects/{name:path}/renewal", tags=["gallery"])
def renew_subject(name: str, body: Renewal, ft: Caller) -> dict:
    """Keep a subject past its review date (authorisers)."""
    until = ft.renew_subject(name, body.until, reason=body.reason)
    return {"subject": name, "review_at": until}


@router.get("/subjects/{name:path}", tags=["gallery"])
def subject(name: str, ft: Caller) -> dict:
    return plain(ft.subject(name))


@router.delete("/subjects/{name:path}", tags=["gallery"])
def erase_subject(
    name: str, ft: Caller, reason: Annotated[str | None, Query(max_length=1000)] = None
) -> dict:
    """Erase a subject completely: images, faces, templates, index entries."""
    return plain(ft.erase(name, reason=reason))


# --------------------------------------------------------------------------- cases


class NewCase(BaseModel):
    reference: str = Field(min_length=1, max_length=100)
    purpose: str = Field(min_length=1, max_length=1000)
    legal_basis: str = Field(min_length=1, max_length=1000)
    second_review: bool = False


class CaseClose(BaseModel):
    reason: str | None = Field(None, max_length=1000)


class NewMember(BaseModel):
    user: str = Field(min_length=1, max_length=100)


class NewApproval(BaseModel):
    scope: str = Field(description="gallery or below-floor")
    reason: Reason
    days: int | None = Field(None, description="Valid for (default and most: policy)")
    min_threshold: float | None = Field(None, ge=-1, le=1)


@router.get("/cases", tags=["cases"])
def list_cases(ft: Caller, p: Pages) -> Page:
    """The cases the caller may see (investigators: those they are members of)."""
    return paged(ft.cases(), p)


@router.post("/cases", status_code=201, tags=["cases"])
def open_case(body: NewCase, ft: Caller) -> dict:
    return plain(
        ft.open_case(
            body.reference,
            purpose=body.purpose,
            legal_basis=body.legal_basis,
            second_review=body.second_review,
        )
    )


@router.get("/cases/{reference:path}/searches", tags=["review"])
def case_searches(reference: str, ft: Caller, p: Pages) -> Page:
    """A case's searches with their candidates (viewing them is audited)."""
    return paged(ft.searches(reference), p)


@router.post("/cases/{reference:path}/close", tags=["cases"])
def close_case(reference: str, body: CaseClose, ft: Caller) -> dict:
    return plain(ft.close_case(reference, reason=body.reason))


@router.post("/cases/{reference:path}/members", status_code=201, tags=["cases"])
def add_case_member(reference: str, body: NewMember, ft: Caller) -> dict:
    return plain(ft.add_case_member(reference, body.user))


@router.post("/cases/{reference:path}/approvals", status_code=201, tags=["cases"])
def approve(reference: str, body: NewApproval, ft: Caller) -> dict:
    """An authoriser's approval of gallery-wide or below-floor searches in the case."""
    return plain(
        ft.approve(
            reference,
            scope=body.scope,
            reason=body.reason,
            days=body.days,
            min_threshold=body.min_threshold,
        )
    )


@router.get("/cases/{reference:path}", tags=["cases"])
def case(reference: str, ft: Caller) -> dict:
    return plain(ft.case(reference))


# --------------------------------------------------------------------------- watchlists


class NewWatchlist(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    purpose: str = Field(min_length=1, max_length=1000)
    expires: Moment = Field(description="Expiry (ISO 8601; a date means its end, UTC)")


class Members(BaseModel):
    subjects: list[str] = Field(min_length=1, max_length=1000)
    reason: Reason


class Authorisation(BaseModel):
    reason: Reason


@router.get("/watchlists", tags=["watchlists"])
def list_watchlists(ft: Caller, p: Pages) -> Page:
    return paged(ft.watchlists(), p)


@router.post("/watchlists", status_code=201, tags=["watchlists"])
def create_watchlist(body: NewWatchlist, ft: Caller) -> dict:
    """Create a watchlist (it needs members and an authoriser before it can be searched)."""
    return plain(ft.create_watchlist(body.name, purpose=body.purpose, expires_at=body.expires))


@router.get("/watchlists/{name}", tags=["watchlists"])
def watchlist(name: str, ft: Caller) -> dict:
    return plain(ft.watchlist(name))


@router.post("/watchlists/{name}/members", status_code=201, tags=["watchlists"])
def add_members(name: str, body: Members, ft: Caller) -> dict:
    """Add subjects (with the reason each is on it); this withdraws the authorisation."""
    return plain(ft.add_to_watchlist(name, body.subjects, reason=body.reason))


@router.delete("/watchlists/{name}/members", tags=["watchlists"])
def remove_members(
    name: str,
    ft: Caller,
    subject: Annotated[list[str], Query(min_length=1, description="Subjects to remove.")],
    reason: Annotated[str, Query(min_length=1, max_length=1000)],
) -> dict:
    """Remove subjects; this withdraws the authorisation."""
    return plain(ft.remove_from_watchlist(name, subject, reason=reason))


@router.post("/watchlists/{name}/authorisation", tags=["watchlists"])
def authorise_watchlist(name: str, body: Authorisation, ft: Caller) -> dict:
    """Authorise the watchlist as it stands (authorisers; not its last editor)."""
    return plain(ft.authorise_watchlist(name, reason=body.reason))


# --------------------------------------------------------------------------- searches


@router.post("/searches", status_code=202, tags=["searches"])
async def start_search(
    request: Request,
    ft: Caller,
    files: Annotated[list[UploadFile], File(description="Probe images and videos.")],
    case: Annotated[str, Form()],
    watchlist: Annotated[str | None, Form()] = None,
    top_k: Annotated[int | None, Form(ge=1, le=100)] = None,
    threshold: Annotated[float | None, Form(ge=-1, le=1)] = None,
    include_below: Annotated[bool, Form()] = False,
    reason: Annotated[str | None, Form(max_length=1000)] = None,
) -> dict:
    """Upload probes and search them in a case, as a background job (202 + the job).
    The role, the case and the scope are checked before the files are kept."""
    await run_in_threadpool(
        lambda: ft.check_search(
            case=case, watchlist=watchlist, threshold=threshold, include_below=include_below
        )
    )
    folder, saved = await uploads.save_all(request.app.state.settings, files)
    job: Job = request.app.state.jobs.submit(
        ft,
        "search",
        folder,
        saved,
        case=case,
        watchlist=watchlist,
        top_k=top_k,
        threshold=threshold,
        include_below=include_below,
        reason=reason,
    )
    return job.to_dict()


@router.post("/clusters", status_code=202, tags=["searches"])
async def start_cluster(
    request: Request,
    ft: Caller,
    files: Annotated[list[UploadFile], File(description="Images and videos to group.")],
    case: Annotated[str, Form()],
    threshold: Annotated[float | None, Form(ge=-1, le=1)] = None,
) -> dict:
    """Group the faces of uploaded media into unknown persons, as a background job."""
    await run_in_threadpool(lambda: ft.check_cluster(case=case))
    folder, saved = await uploads.save_all(request.app.state.settings, files)
    job: Job = request.app.state.jobs.submit(
        ft, "cluster", folder, saved, case=case, threshold=threshold
    )
    return job.to_dict()


@router.get("/jobs", tags=["searches"])
def jobs(request: Request, ft: Caller, p: Pages) -> Page:
    """The caller's jobs, newest first (without their results)."""
    mine = request.app.state.jobs.of(ft.whoami().id)
    items = [{k: v for k, v in j.to_dict().items() if k != "result"} for j in mine]
    return paged(items, p)


@router.get("/jobs/{job_id}", tags=["searches"])
def job(job_id: str, request: Request, ft: Caller) -> dict:
    """A job's progress (files done; per video, seconds done and speed) and, once done, its
    result: the search report (with `search_id`) or the persons found."""
    caller = ft.whoami()
    return request.app.state.jobs.get(job_id, caller.id).to_dict()


@router.post("/verify", tags=["searches"])
async def verify(
    request: Request,
    ft: Caller,
    a: Annotated[UploadFile, File(description="First image.")],
    b: Annotated[UploadFile, File(description="Second image.")],
    case: Annotated[str, Form()],
    threshold: Annotated[float | None, Form(ge=-1, le=1)] = None,
) -> dict:
    """Compare the main face of two uploaded images, in a case (answered at once)."""
    await run_in_threadpool(ft.require, Op.VERIFY)
    folder, (first, second) = await uploads.save_all(request.app.state.settings, [a, b])
    try:
        report = await run_in_threadpool(
            lambda: ft.verify(first, second, case=case, threshold=threshold)
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return uploads.relabel(plain(report), [first, second])


# --------------------------------------------------------------------------- review


class NewDecision(BaseModel):
    verdict: str = Field(description="match, no-match or inconclusive")
    note: Note


class NewConfirmation(BaseModel):
    note: Note


@router.get("/searches/{search_id}", tags=["review"])
def search_results(search_id: int, ft: Caller) -> dict:
    """A search's candidates with their decisions (viewing them is audited)."""
    return plain(ft.search_results(search_id))


@router.get("/candidates/{candidate_id}/face.png", tags=["review"])
def candidate_face(candidate_id: int, ft: Caller) -> Response:
    """The probe face crop of a candidate (not cached by the browser)."""
    data = ft.candidate_face(candidate_id)
    return Response(data, media_type="image/png", headers=NO_STORE)


@router.post("/candidates/{candidate_id}/decisions", status_code=201, tags=["review"])
def decide(candidate_id: int, body: NewDecision, ft: Caller) -> dict:
    """Record a decision; deciding again supersedes the standing one."""
    return plain(ft.decide(candidate_id, body.verdict, note=body.note))


@router.post("/candidates/{candidate_id}/confirmations", status_code=201, tags=["review"])
def confirm(candidate_id: int, body: NewConfirmation, ft: Caller) -> dict:
    """A second reviewer's confirmation of the standing match decision."""
    return plain(ft.confirm(candidate_id, note=body.note))


# --------------------------------------------------------------------------- audit, retention


@router.get("/audit/verify", tags=["audit"])
def verify_audit(ft: Caller) -> dict:
    """Walk the hash chain; `ok` false names the first broken event."""
    return plain(ft.verify_audit())


@router.get("/audit/events", tags=["audit"])
def audit_events(
    ft: Caller,
    p: Pages,
    since: Annotated[
        datetime | None, Query(description="Only events at or after this time (UTC if no zone).")
    ] = None,
) -> Page:
    """The audit events, oldest first: an export, itself audited."""
    return paged(ft.export_audit(_utc(since)), p)


@router.post("/retention/run", tags=["retention"])
def run_retention(ft: Caller) -> dict:
    """Delete what policy no longer allows to be kept (also done when the service starts)."""
    return plain(ft.run_retention())


@router.get("/retention/report", tags=["retention"])
def retention_report(ft: Caller, days: Annotated[int, Query(ge=0, le=36500)] = 30) -> dict:
    """What retention deleted, and what falls due within `days`."""
    return plain(ft.retention_report(days))
