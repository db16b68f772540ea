"""The web workspace: server-rendered pages over the same service as the CLI and the API.

Every page acts through a `Facetrail` handle for the session cookie's user, so the service
checks the role and the policy exactly as it does for the CLI; the navigation only hides what
a role may not do, and a page for a forbidden operation answers 403 with a page that says so.
Every POST form carries a CSRF token (an HMAC of the session token; the log-in form's is an
HMAC of a nonce cookie of its own). Refusals are pages with the right status, never a
traceback; pages and face images are sent with `Cache-Control: no-store`, and nothing here
logs. The only script is /static/facetrail.js (drag and drop, job progress); every page works
without it.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from facetrail.errors import AuthenticationError, FacetrailError, InvalidInputError, PolicyError
from facetrail.service.access import Caller, Op, Role, allowed, require
from facetrail.service.app import Facetrail
from facetrail.service.review import VERDICTS, CandidateView, current
from facetrail.web import problems, uploads
from facetrail.web.auth import SESSION_COOKIE, base, client_address, csrf_ok, csrf_token
from facetrail.web.problems import HttpProblem, status_of

TEMPLATES = Path(__file__).resolve().parent / "templates"
LOGIN_COOKIE = "facetrail_login"  # the log-in form's own CSRF nonce, before any session
AUDIT_PAGE = 50
SUBJECTS_PAGE = 100
REFERENCE_CROPS = 3  # reference face crops shown beside each candidate

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
}

# What a page says after a form did its work (keys only travel in the URL, never text).
MESSAGES = {
    "opened": "Case opened.",
    "closed": "Case closed.",
    "member": "Member added.",
    "approved": "Approval recorded.",
    "decided": "Decision recorded.",
    "confirmed": "Confirmation recorded.",
    "renewed": "Review date set.",
    "erased": "Subject erased.",
    "created": "Watchlist created.",
    "added": "Subjects added (the watchlist needs authorising again).",
    "removed": "Subject removed (the watchlist needs authorising again).",
    "authorised": "Watchlist authorised.",
    "user": "User saved.",
    "retention": "Retention run finished.",
}

TITLES = {
    400: "That request was not accepted",
    401: "Please log in",
    403: "Not allowed",
    404: "Not found",
    409: "Not allowed yet",
    413: "Upload too large",
    415: "Not an image or video",
    422: "No usable face",
    429: "Too many attempts",
    500: "Something went wrong",
    503: "The data directory is unavailable",
}


# --------------------------------------------------------------------------- templates


def _when(value: datetime | None) -> str:
    if value is None:
        return "—"
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return f"{value:%Y-%m-%d %H:%M} UTC"


def _fmr(value: float | None) -> str:
    if value is None:
        return "not calibrated"
    if value == 0:
        return "< 1e-7"
    return f"{value:.1e}" if value < 0.01 else f"{value:.3f}"


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    minutes, rest = divmod(max(0.0, float(seconds)), 60)
    return f"{int(minutes)}:{rest:04.1f}"


def _q(value: object) -> str:
    """A value as one path segment of a URL."""
    return quote(str(value), safe="")


templates = Jinja2Templates(directory=TEMPLATES)
templates.env.filters.update(when=_when, fmr=_fmr, clock=_clock, q=_q)
templates.env.globals["VERDICTS"] = VERDICTS


@dataclass(frozen=True)
class NavItem:
    label: str
    href: str
    op: Op


NAVIGATION = (
    NavItem("Cases", "/cases", Op.CASE_READ),
    NavItem("Approvals", "/approvals", Op.APPROVE),
    NavItem("Jobs", "/jobs", Op.SEARCH),
    NavItem("Subjects", "/subjects", Op.GALLERY_READ),
    NavItem("Watchlists", "/watchlists", Op.WATCHLIST_READ),
    NavItem("Live", "/live", Op.LIVE_READ),
    NavItem("Audit", "/audit", Op.AUDIT),
    NavItem("Retention", "/retention", Op.RETENTION_REPORT),
    NavItem("Transparency", "/reports/transparency", Op.TRANSPARENCY),
    NavItem("Users", "/users", Op.USERS),
)


def navigation(caller: Caller | None) -> list[NavItem]:
    """What the menu offers this role (the service still decides every request)."""
    if caller is None:
        return []
    return [item for item in NAVIGATION if allowed(caller.role, item.op)]


def render(
    request: Request,
    template: str,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> Response:
    handle: Facetrail | None = getattr(request.state, "ft", None)
    caller = handle.caller if handle is not None else None
    token: str | None = getattr(request.state, "token", None)
    shared: dict[str, Any] = {
        "me": caller,
        "nav": navigation(caller),
        "path": request.url.path,
        "csrf": csrf_token(request.app.state.secret, token) if token else "",
        "may": (lambda op: caller is not None and allowed(caller.role, Op(op))),
        "message": MESSAGES.get(request.query_params.get("done", "")),
    }
    shared.update(context)
    return templates.TemplateResponse(
        request, template, shared, status_code=status, headers=headers
    )


# --------------------------------------------------------------------------- sessions


class LoginRequired(Exception):
    """No session cookie, or one whose token no longer stands: go and log in."""


def session(request: Request, ft: Annotated[Facetrail, Depends(base)]) -> Facetrail:
    """A handle acting as the session cookie's user (a page without one goes to /login)."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        raise LoginRequired
    handle = ft.as_caller(None)
    try:
        handle.use_token(token)
    except AuthenticationError:
        raise LoginRequired from None
    request.state.ft, request.state.token = handle, token
    return handle


Session = Annotated[Facetrail, Depends(session)]


def checked(request: Request, ft: Session, csrf: Annotated[str | None, Form()] = None) -> Facetrail:
    """The session's handle, for a form whose CSRF token is this session's (else 403,
    before anything is read or done)."""
    if not csrf_ok(request.app.state.secret, request.state.token, csrf):
        raise HttpProblem(
            403,
            "this form is out of date or did not come from this site; nothing was changed. "
            "Reload the page and try again.",
        )
    return ft


Posted = Annotated[Facetrail, Depends(checked)]


def me(ft: Facetrail) -> Caller:
    assert ft.caller is not None
    return ft.caller


def safe_next(target: str | None) -> str:
    """A local path to go to after logging in (never another site)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def back(target: str | None, default: str) -> str:
    return safe_next(target) if target else default


def redirect(url: str, done: str | None = None, anchor: str | None = None) -> RedirectResponse:
    if done:
        url += ("&" if "?" in url else "?") + urlencode({"done": done})
    if anchor:
        url += f"#{anchor}"
    return RedirectResponse(url, status_code=303)


def _https(request: Request) -> bool:
    return request.url.scheme == "https"


def _forget(response: Response, request: Request, cookie: str, path: str) -> None:
    response.delete_cookie(
        cookie, path=path, secure=_https(request), httponly=True, samesite="strict"
    )


def _wants_json(request: Request) -> bool:
    return request.headers.get("accept", "").startswith("application/json")


def _to_login(request: Request) -> Response:
    if _wants_json(request):
        return problems.problem(401, "AuthenticationError", "log in again")
    path = request.url.path
    if request.method == "GET" and path not in ("/", "/login"):
        target = path + (f"?{request.url.query}" if request.url.query else "")
        response = RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)
    else:
        response = RedirectResponse("/login", status_code=303)
    if request.cookies.get(SESSION_COOKIE):
        _forget(response, request, SESSION_COOKIE, "/")
    return response


def _refusal(request: Request, exc: Exception) -> Response:
    """The page (or, for the JSON progress endpoint, the problem) for a refused request."""
    if isinstance(exc, LoginRequired | AuthenticationError):
        return _to_login(request)
    headers: dict[str, str] = {}
    if isinstance(exc, FacetrailError):
        status, detail = status_of(exc), str(exc)
        headers = dict(getattr(exc, "headers", {}) or {})
    elif isinstance(exc, RequestValidationError):
        # Field names and messages only: what was typed is not echoed back.
        status = 400
        detail = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'form'}: {e.get('msg', '?')}"
            for e in exc.errors()
        )
    elif isinstance(exc, StarletteHTTPException):
        status, detail = exc.status_code, str(exc.detail)
        headers = dict(exc.headers or {})
    else:
        raise exc
    title = TITLES.get(status, "Refused")
    if _wants_json(request):
        return problems.problem(status, title, detail, headers)
    context = {"title": title, "detail": detail, "code": status}
    return render(request, "error.html", status=status, headers=headers, **context)


class PageRoute(APIRoute):
    """A page route: refusals become pages, and every response gets the security headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                response = await handler(request)
            except Exception as exc:
                response = _refusal(request, exc)
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            return response

        return route


router = APIRouter(route_class=PageRoute, include_in_schema=False)


# --------------------------------------------------------------------------- log in, out


def _login_csrf(request: Request, nonce: str) -> str:
    return csrf_token(request.app.state.secret, "login:" + nonce)


def _login_page(
    request: Request, nonce: str, *, status: int = 200, error: str | None = None, **extra: Any
) -> Response:
    response = render(
        request,
        "login.html",
        status=status,
        title="Log in",
        login_csrf=_login_csrf(request, nonce),
        error=error,
        **extra,
    )
    response.set_cookie(
        LOGIN_COOKIE, nonce, httponly=True, samesite="strict", secure=_https(request), path="/login"
    )
    return response


@router.get("/login")
def login_form(request: Request, next: str | None = None) -> Response:
    nonce = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(32)
    return _login_page(request, nonce, next=safe_next(next), name="")


@router.post("/login")
def login(
    request: Request,
    ft: Annotated[Facetrail, Depends(base)],
    name: Annotated[str, Form(max_length=100)],
    password: Annotated[str, Form(max_length=1024)],
    csrf: Annotated[str | None, Form()] = None,
    next: Annotated[str | None, Form()] = None,
) -> Response:
    """Check the password and set the session cookie (HttpOnly, SameSite=Strict, Secure over
    HTTPS); failed attempts are limited per name and per client address."""
    target = safe_next(next)
    nonce = request.cookies.get(LOGIN_COOKIE)
    if not nonce or not csrf_ok(request.app.state.secret, "login:" + nonce, csrf):
        fresh = secrets.token_urlsafe(32)
        error = "This log-in form is out of date (or cookies are off): please try again."
        return _login_page(request, fresh, status=403, error=error, next=target, name="")
    limiter, client = request.app.state.limiter, client_address(request)
    try:
        limiter.check(name, client)
    except HttpProblem as exc:
        error = "Too many failed log-in attempts: wait a few minutes and try again."
        return _login_page(
            request, nonce, status=429, headers=exc.headers, error=error, next=target, name=name
        )
    try:
        issued = ft.as_caller(None).login(name, password, label="web")
    except FacetrailError:
        limiter.failed(name, client)
        error = "Wrong name or password, or the account is disabled."
        return _login_page(request, nonce, status=401, error=error, next=target, name=name)
    limiter.succeeded(name, client)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        issued.token,
        httponly=True,
        samesite="strict",
        secure=_https(request),
        path="/",
    )
    _forget(response, request, LOGIN_COOKIE, "/login")
    return response


@router.post("/logout")
def logout(request: Request, ft: Posted) -> Response:
    """Revoke the session's token and forget the cookie."""
    with contextlib.suppress(AuthenticationError):  # already revoked: logged out all the same
        ft.logout()
    response = RedirectResponse("/login", status_code=303)
    _forget(response, request, SESSION_COOKIE, "/")
    return response


@router.get("/")
def home(ft: Session) -> Response:
    items = navigation(me(ft))
    return redirect(items[0].href if items else "/account")


@router.get("/account")
def account(request: Request, ft: Session) -> Response:
    return render(request, "account.html", title="Your account", user=ft.whoami())


# --------------------------------------------------------------------------- cases


@router.get("/cases")
def cases_page(request: Request, ft: Session) -> Response:
    return render(request, "cases.html", title="Cases", cases=ft.cases())


@router.post("/cases")
def open_case(
    ft: Posted,
    reference: Annotated[str, Form(max_length=100)],
    purpose: Annotated[str, Form(max_length=1000)],
    legal_basis: Annotated[str, Form(max_length=1000)],
    second_review: Annotated[bool, Form()] = False,
) -> Response:
    info = ft.open_case(
        reference.strip(), purpose=purpose, legal_basis=legal_basis, second_review=second_review
    )
    return redirect(f"/cases/{_q(info.reference)}", "opened")


@dataclass
class SearchRow:
    view: Any
    outcomes: dict[str, int] = field(default_factory=dict)


@router.get("/cases/{reference:path}/search")
def search_form(request: Request, ft: Session, reference: str) -> Response:
    case = _open_case(ft, reference)
    usable = []
    if allowed(me(ft).role, Op.WATCHLIST_READ):
        usable = [w for w in ft.watchlists() if w.status == "authorised"]
    return render(
        request,
        "upload.html",
        title=f"Search probes in {case.reference}",
        case=case,
        kind="search",
        watchlists=usable,
    )


@router.get("/cases/{reference:path}/cluster")
def cluster_form(request: Request, ft: Session, reference: str) -> Response:
    case = _open_case(ft, reference)
    return render(
        request,
        "upload.html",
        title=f"Find unknown persons in {case.reference}",
        case=case,
        kind="cluster",
        watchlists=[],
    )


def _open_case(ft: Facetrail, reference: str) -> Any:
    """A case this user may see and search in: open (searching also needs the role)."""
    require(me(ft), Op.SEARCH)
    case = ft.case(reference)
    if case.closed_at is not None:
        raise PolicyError(f"case {case.reference} is closed")
    return case


@router.post("/cases/{reference:path}/search")
async def start_search(
    request: Request,
    ft: Posted,
    reference: str,
    files: Annotated[list[UploadFile], File()],
    watchlist: Annotated[str | None, Form(max_length=100)] = None,
    top_k: Annotated[int | None, Form(ge=1, le=100)] = None,
    reason: Annotated[str | None, Form(max_length=1000)] = None,
) -> Response:
    case = _open_case(ft, reference)  # a case this user may see, before any upload is kept
    folder, saved = await uploads.save_all(request.app.state.settings, files)
    job = request.app.state.jobs.submit(
        ft,
        "search",
        folder,
        saved,
        case=case.reference,
        watchlist=watchlist or None,
        top_k=top_k,
        reason=reason or None,
    )
    return redirect(f"/jobs/{job.id}")


@router.post("/cases/{reference:path}/cluster")
async def start_cluster(
    request: Request,
    ft: Posted,
    reference: str,
    files: Annotated[list[UploadFile], File()],
    threshold: Annotated[float | None, Form(ge=-1, le=1)] = None,
) -> Response:
    case = _open_case(ft, reference)
    folder, saved = await uploads.save_all(request.app.state.settings, files)
    job = request.app.state.jobs.submit(
        ft, "cluster", folder, saved, case=case.reference, threshold=threshold
    )
    return redirect(f"/jobs/{job.id}")


@router.post("/cases/{reference:path}/close")
def close_case(
    ft: Posted, reference: str, reason: Annotated[str | None, Form(max_length=1000)] = None
) -> Response:
    ft.close_case(reference, reason=reason or None)
    return redirect(f"/cases/{_q(reference)}", "closed")


@router.post("/cases/{reference:path}/members")
def add_member(ft: Posted, reference: str, user: Annotated[str, Form(max_length=100)]) -> Response:
    ft.add_case_member(reference, user.strip())
    return redirect(f"/cases/{_q(reference)}", "member")


@router.post("/cases/{reference:path}/approvals")
def approve(
    ft: Posted,
    reference: str,
    scope: Annotated[str, Form(max_length=32)],
    reason: Annotated[str, Form(max_length=1000)],
    days: Annotated[int | None, Form(ge=1, le=3650)] = None,
    min_threshold: Annotated[float | None, Form(ge=-1, le=1)] = None,
    next: Annotated[str | None, Form()] = None,
) -> Response:
    ft.approve(reference, scope=scope, reason=reason, days=days, min_threshold=min_threshold)
    return redirect(back(next, f"/cases/{_q(reference)}"), "approved")


@router.get("/cases/{reference:path}")
def case_page(request: Request, ft: Session, reference: str) -> Response:
    case = ft.case(reference)
    rows = []
    for view in ft.searches(case.reference):
        counts: dict[str, int] = {}
        for c in view.candidates:
            counts[c.outcome] = counts.get(c.outcome, 0) + 1
        rows.append(SearchRow(view, counts))
    jobs = [j for j in request.app.state.jobs.of(me(ft).user_id) if j.case == case.reference]
    return render(
        request, "case.html", title=f"Case {case.reference}", case=case, searches=rows, jobs=jobs
    )


# --------------------------------------------------------------------------- jobs


def _job_progress(job: Any) -> dict[str, Any]:
    """What the progress bar shows: files done, and for each video the seconds read."""
    done = float(job.files_done)
    for video in job.videos.values():
        if video.duration and job.status == "running":
            done += min(1.0, video.seconds / video.duration) if job.files_done < job.files else 0
    fraction = 1.0 if job.status in ("done", "failed") else min(0.99, done / max(1, job.files))
    result_url = f"/searches/{job.search_id}" if job.search_id is not None else None
    return {
        "id": job.id,
        "kind": job.kind,
        "case": job.case,
        "status": job.status,
        "files": job.files,
        "files_done": job.files_done,
        "fraction": round(fraction, 3),
        "videos": {
            name: {
                "seconds": v.seconds,
                "duration": v.duration,
                "speed": v.speed,
                "frames": v.frames,
            }
            for name, v in job.videos.items()
        },
        "result_url": result_url,
        "error": job.error,
    }


@router.get("/jobs")
def jobs_page(request: Request, ft: Session) -> Response:
    require(me(ft), Op.SEARCH)
    jobs = request.app.state.jobs.of(me(ft).user_id)
    return render(request, "jobs.html", title="Your jobs", jobs=jobs)


@router.get("/jobs/{job_id}/progress")
def job_progress(request: Request, ft: Session, job_id: str) -> Response:
    """The job's progress as JSON, for the job page's script (cookie-authenticated GET)."""
    job = request.app.state.jobs.get(job_id, me(ft).user_id)
    return JSONResponse(_job_progress(job))


@router.get("/jobs/{job_id}")
def job_page(request: Request, ft: Session, job_id: str) -> Response:
    job = request.app.state.jobs.get(job_id, me(ft).user_id)
    summary: dict[str, Any] = {}
    if job.kind == "search" and job.result:
        probes = job.result.get("probes", [])
        summary = {
            "probes": len(probes),
            "faces": sum(len(p.get("faces", [])) for p in probes),
            "candidates": sum(len(f["candidates"]) for p in probes for f in p.get("faces", [])),
            "errors": [
                (Path(p["probe"]).name, p["error"]) for p in probes if p.get("error") is not None
            ],
        }
    return render(
        request,
        "job.html",
        title="Search job" if job.kind == "search" else "Clustering job",
        job=job,
        progress=_job_progress(job),
        summary=summary,
        name=lambda p: Path(p).name,
    )


# --------------------------------------------------------------------------- review


@dataclass
class FaceBlock:
    """One probe face (in a video: one appearance) with its candidates, for the review page."""

    id: int
    media: str
    kind: str
    start: float | None
    end: float | None
    best_time: float | None
    candidates: list[CandidateView]


@dataclass
class Segment:
    face: int
    left: float  # percent of the video's length
    width: float
    label: str
    start: float | None
    end: float | None


@dataclass
class Timeline:
    name: str
    duration: float
    complete: bool
    segments: list[Segment]
    ticks: list[tuple[float, str]]
    faces: list[FaceBlock]


def _ticks(duration: float) -> list[tuple[float, str]]:
    step = next((s for s in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600) if duration / s <= 10), 1800)
    marks, t = [], 0.0
    while t <= duration + 1e-9:
        marks.append((100.0 * t / duration, _clock(t).removesuffix(".0")))
        t += step
    return marks


def _timeline(name: str, duration: float | None, complete: bool, faces: list[FaceBlock]):
    length = duration or max((f.end or 0.0 for f in faces), default=0.0) or 1.0
    segments = []
    for f in faces:
        start, end = f.start or 0.0, f.end if f.end is not None else (f.start or 0.0)
        top = f.candidates[0] if f.candidates else None
        label = f"{top.subject} {top.score:.3f}" if top else "no candidate"
        left = max(0.0, min(100.0, 100.0 * start / length))
        width = max(0.8, min(100.0 - left, 100.0 * (end - start) / length))
        segments.append(Segment(f.id, round(left, 2), round(width, 2), label, f.start, f.end))
    return Timeline(name, length, complete, segments, _ticks(length), faces)


@router.get("/searches/{search_id}")
def search_page(request: Request, ft: Session, search_id: int) -> Response:
    result = ft.search_results(search_id)
    by_id = {c.id: c for c in result.candidates}
    blocks: list[FaceBlock] = []
    timelines: list[Timeline] = []
    for media in ft.search_media(search_id):
        faces = [
            FaceBlock(
                a.face,
                media.name,
                media.kind,
                a.start,
                a.end,
                a.best_time,
                [by_id[i] for i in a.candidates if i in by_id],
            )
            for a in media.appearances
        ]
        blocks += faces
        if media.kind == "video" and faces:
            faces = sorted(faces, key=lambda f: (f.start or 0.0, f.id))
            timelines.append(_timeline(media.name, media.duration, media.complete, faces))
    references: dict[str, list[tuple[str, str]]] = {}
    for name in sorted({c.subject for c in result.candidates if not c.subject_erased}):
        try:
            detail = ft.subject(name)
        except FacetrailError:
            continue  # erased since the search
        crops = [
            (face.chip_sha256, image.name)
            for image in detail.images
            for face in image.faces
            if face.chip_sha256
        ]
        references[name] = crops[:REFERENCE_CROPS]
    case_open = None
    if allowed(me(ft).role, Op.CASE_READ):
        case_open = ft.case(result.case).closed_at is None
    decided_by = {}  # who made each candidate's standing decision (not their own to confirm)
    for c in result.candidates:
        standing = current(c.decisions)
        decided_by[c.id] = standing.by if standing else None
    return render(
        request,
        "search.html",
        title=f"Search {result.id}: candidates",
        search=result,
        faces=blocks,
        timelines=timelines,
        references=references,
        case_open=case_open,
        decided_by=decided_by,
    )


@router.get("/candidates/{candidate_id}/face.png")
def candidate_face(ft: Session, candidate_id: int) -> Response:
    return Response(ft.candidate_face(candidate_id), media_type="image/png")


@router.post("/candidates/{candidate_id}/decision")
def decide(
    ft: Posted,
    candidate_id: int,
    verdict: Annotated[str, Form(max_length=32)],
    note: Annotated[str, Form(max_length=2000)],
    search: Annotated[int, Form()],
) -> Response:
    ft.decide(candidate_id, verdict, note=note)
    return redirect(f"/searches/{search}", "decided", f"candidate-{candidate_id}")


@router.post("/candidates/{candidate_id}/confirmation")
def confirm(
    ft: Posted,
    candidate_id: int,
    note: Annotated[str, Form(max_length=2000)],
    search: Annotated[int, Form()],
) -> Response:
    ft.confirm(candidate_id, note=note)
    return redirect(f"/searches/{search}", "confirmed", f"candidate-{candidate_id}")


# --------------------------------------------------------------------------- gallery


def _end_of_day(value: str, what: str) -> datetime:
    """An HTML date (YYYY-MM-DD) as the end of that day, UTC."""
    try:
        day = date.fromisoformat(value.strip())
    except ValueError:
        raise InvalidInputError(f"{what} must be a date (YYYY-MM-DD)") from None
    return datetime.combine(day, time(23, 59, 59), tzinfo=UTC)


@router.get("/subjects")
def subjects_page(request: Request, ft: Session, page: Annotated[int, Query(ge=1)] = 1) -> Response:
    everyone = ft.subjects()
    pages = max(1, -(-len(everyone) // SUBJECTS_PAGE))
    shown = everyone[(page - 1) * SUBJECTS_PAGE : page * SUBJECTS_PAGE]
    return render(
        request,
        "subjects.html",
        title="Subjects",
        subjects=shown,
        total=len(everyone),
        page=page,
        pages=pages,
    )


@router.get("/subjects/{name}/files/{sha256}")
def subject_file(ft: Session, name: str, sha256: str) -> Response:
    data = ft.subject_file(name, sha256)
    return Response(data, media_type=uploads.image_type(data))


@router.post("/subjects/{name}/renew")
def renew_subject(
    ft: Posted,
    name: str,
    until: Annotated[str, Form(max_length=40)],
    reason: Annotated[str, Form(max_length=1000)],
) -> Response:
    ft.renew_subject(name, _end_of_day(until, "the new review date"), reason=reason)
    return redirect(f"/subjects/{_q(name)}", "renewed")


@router.post("/subjects/{name}/erase")
def erase_subject(
    ft: Posted,
    name: str,
    reason: Annotated[str, Form(max_length=1000)],
    confirm_name: Annotated[str, Form(max_length=200)],
) -> Response:
    if confirm_name.strip() != name:
        raise InvalidInputError("type the subject's name to confirm the erasure")
    ft.erase(name, reason=reason)
    return redirect("/subjects", "erased")


@router.get("/subjects/{name}")
def subject_page(request: Request, ft: Session, name: str) -> Response:
    detail = ft.subject(name)
    return render(request, "subject.html", title=f"Subject {detail.name}", subject=detail)


# --------------------------------------------------------------------------- watchlists


@router.get("/watchlists")
def watchlists_page(request: Request, ft: Session) -> Response:
    return render(request, "watchlists.html", title="Watchlists", watchlists=ft.watchlists())


@router.post("/watchlists")
def create_watchlist(
    ft: Posted,
    name: Annotated[str, Form(max_length=100)],
    purpose: Annotated[str, Form(max_length=1000)],
    expires: Annotated[str, Form(max_length=40)],
) -> Response:
    w = ft.create_watchlist(
        name.strip(), purpose=purpose, expires_at=_end_of_day(expires, "the expiry")
    )
    return redirect(f"/watchlists/{_q(w.name)}", "created")


@router.get("/watchlists/{name}")
def watchlist_page(request: Request, ft: Session, name: str) -> Response:
    w = ft.watchlist(name)
    members = {m.subject for m in w.members}
    candidates = []
    if allowed(me(ft).role, Op.WATCHLIST_EDIT):
        candidates = [s.name for s in ft.subjects() if s.name not in members]
    return render(request, "watchlist.html", title=f"Watchlist {w.name}", w=w, addable=candidates)


@router.post("/watchlists/{name}/members")
def add_members(
    ft: Posted,
    name: str,
    subjects: Annotated[list[str], Form()],
    reason: Annotated[str, Form(max_length=1000)],
) -> Response:
    ft.add_to_watchlist(name, subjects, reason=reason)
    return redirect(f"/watchlists/{_q(name)}", "added")


@router.post("/watchlists/{name}/members/remove")
def remove_member(
    ft: Posted,
    name: str,
    subject: Annotated[str, Form(max_length=200)],
    reason: Annotated[str, Form(max_length=1000)],
) -> Response:
    ft.remove_from_watchlist(name, [subject], reason=reason)
    return redirect(f"/watchlists/{_q(name)}", "removed")


@router.post("/watchlists/{name}/authorise")
def authorise_watchlist(
    ft: Posted,
    name: str,
    reason: Annotated[str, Form(max_length=1000)],
    next: Annotated[str | None, Form()] = None,
) -> Response:
    ft.authorise_watchlist(name, reason=reason)
    return redirect(back(next, f"/watchlists/{_q(name)}"), "authorised")


# --------------------------------------------------------------------------- authorisers


@router.get("/approvals")
def approvals_page(request: Request, ft: Session) -> Response:
    """An authoriser's desk: approve searches in open cases, authorise watchlists."""
    require(me(ft), Op.APPROVE)
    open_cases = [c for c in ft.cases() if c.closed_at is None]
    pending = [w for w in ft.watchlists() if w.status == "awaiting authorisation"]
    return render(
        request, "approvals.html", title="Approvals", cases=open_cases, watchlists=pending
    )


# --------------------------------------------------------------------------- audit


@router.get("/audit")
def audit_page(
    request: Request,
    ft: Session,
    page: Annotated[int, Query(ge=1)] = 1,
    action: Annotated[str, Query(max_length=100)] = "",
    actor: Annotated[str, Query(max_length=100)] = "",
    case: Annotated[str, Query(max_length=100)] = "",
) -> Response:
    """The trail's verification and its events, newest first (viewing them is audited)."""
    chain = ft.verify_audit()
    shown = ft.audit_page(page, size=AUDIT_PAGE, action=action, actor=actor, case=case)
    query = {k: v for k, v in {"action": action, "actor": actor, "case": case}.items() if v}
    return render(
        request,
        "audit.html",
        title="Audit trail",
        chain=chain,
        events=shown.events,
        total=shown.total,
        page=page,
        pages=shown.pages,
        actions=shown.actions,
        filters=query,
        query=urlencode(query),
    )


@router.get("/retention")
def retention_page(
    request: Request, ft: Session, days: Annotated[int, Query(ge=0, le=36500)] = 30
) -> Response:
    report = ft.retention_report(days)
    return render(
        request,
        "retention.html",
        title="Retention",
        report=report,
        days=days,
        deleted=list(reversed(report.deleted)),
    )


@router.post("/retention/run")
def run_retention(ft: Posted) -> Response:
    ft.run_retention()
    return redirect("/retention", "retention")


# --------------------------------------------------------------------------- users


@router.get("/users")
def users_page(request: Request, ft: Session) -> Response:
    return render(
        request, "users.html", title="Users and roles", users=ft.users(), roles=list(Role)
    )


@router.post("/users")
def add_user(
    ft: Posted,
    name: Annotated[str, Form(max_length=100)],
    role: Annotated[str, Form(max_length=32)],
    password: Annotated[str, Form(max_length=1024)],
) -> Response:
    ft.add_user(name.strip(), role, password)
    return redirect("/users", "user")


@router.post("/users/{name}")
def change_user(
    ft: Posted,
    name: str,
    role: Annotated[str | None, Form(max_length=32)] = None,
    active: Annotated[str | None, Form(max_length=8)] = None,
    password: Annotated[str | None, Form(max_length=1024)] = None,
) -> Response:
    if active not in (None, "yes", "no"):
        raise InvalidInputError("active is 'yes' or 'no'")
    ft.set_user(
        name,
        role=role or None,
        active=None if active is None else active == "yes",
        password=password or None,
    )
    return redirect("/users", "user")
