"""The JSON API, /api/v1: every route a thin call into the service as the bearer's user.

Lists are paginated (`limit`, `offset`; the body says `total`). Searches and clusterings of
uploaded files are background jobs: the upload answers 202 with the job, whose progress is at
/jobs/{id}.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from pydantic import BaseModel, Field

from facetrail.service.app import Facetrail
from facetrail.web import uploads
from facetrail.web.auth import Caller, base, client_address
from facetrail.web.jobs import Job
from facetrail.web.problems import HttpProblem

router = APIRouter()

MAX_LIMIT = 500


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
    if isinstance(value, list):
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
    ft.logout()
    return {"logged_out": True}


@router.get("/me", tags=["accounts"])
def me(ft: Caller) -> dict:
    return plain(ft.whoami())


# --------------------------------------------------------------------------- gallery


@router.get("/subjects", tags=["gallery"])
def subjects(ft: Caller, p: Pages) -> Page:
    return paged(ft.subjects(), p)


@router.get("/subjects/{name}", tags=["gallery"])
def subject(name: str, ft: Caller) -> dict:
    return plain(ft.subject(name))


# --------------------------------------------------------------------------- searches


async def _save_all(request: Request, files: list[UploadFile]) -> tuple[Path, list[Path]]:
    if not files:
        raise HttpProblem(400, "no files uploaded")
    settings = request.app.state.settings
    uploads_dir = settings.data / "uploads"
    uploads_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder = Path(tempfile.mkdtemp(prefix="job-", dir=uploads_dir))
    try:
        saved = [
            await uploads.save(
                f,
                folder,
                n,
                max_image_bytes=settings.max_file_bytes,
                max_video_bytes=settings.max_upload_bytes,
            )
            for n, f in enumerate(files)
        ]
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder, saved


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
    """Upload probes and search them in a case, as a background job (202 + the job)."""
    ft.policy()  # refuse an unauthenticated caller before reading any upload
    folder, saved = await _save_all(request, files)
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


@router.get("/jobs/{job_id}", tags=["searches"])
def job(job_id: str, request: Request, ft: Caller) -> dict:
    caller = ft.whoami()
    return request.app.state.jobs.get(job_id, caller.id).to_dict()


@router.get("/searches/{search_id}", tags=["review"])
def search_results(search_id: int, ft: Caller) -> dict:
    return plain(ft.search_results(search_id))
