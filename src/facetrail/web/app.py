"""The HTTP service: the API under /api/v1 (OpenAPI at /docs) and the web workspace.

`create_app` wraps one data directory's `Facetrail` (opened once: retention runs on start);
each request acts through a handle for its caller, so every route is as thin as a CLI command
and the service decides what is allowed.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from facetrail import __version__
from facetrail.config import Settings
from facetrail.errors import FacetrailError
from facetrail.service.app import Facetrail
from facetrail.web import api, api_live, api_reports, pages, pages_live, pages_reports, problems
from facetrail.web.auth import LoginLimiter, load_secret
from facetrail.web.jobs import JobManager

STATIC = Path(__file__).resolve().parent / "static"


def create_app(settings: Settings | None = None, *, jobs: int = 1) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Deployments this service was running when it stopped carry on.
        app.state.ft.resume_deployments()
        yield
        app.state.jobs.shutdown()
        app.state.ft.close()

    app = FastAPI(
        title="facetrail",
        version=__version__,
        summary="Accountable facial recognition: cases, watchlists, searches, review, audit.",
        description=api.DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.ft = Facetrail(settings)
    # Jobs do not outlive the process: uploads a crash left behind belong to none.
    shutil.rmtree(settings.data / "uploads", ignore_errors=True)
    app.state.jobs = JobManager(jobs)
    app.state.limiter = LoginLimiter()
    app.state.secret = load_secret(settings.data)
    app.state.settings = settings
    app.add_exception_handler(FacetrailError, problems.facetrail_error)
    app.add_exception_handler(RequestValidationError, problems.validation_error)
    app.add_exception_handler(StarletteHTTPException, problems.http_error)
    # The reports first: api.router's /cases/{reference:path} would take /cases/X/report.
    app.include_router(api_reports.router, prefix="/api/v1")
    app.include_router(api.router, prefix="/api/v1")
    app.include_router(api_live.router, prefix="/api/v1")
    app.include_router(pages_live.router)
    app.include_router(pages_reports.router)  # before pages: /cases/{ref:path}/report
    app.include_router(pages.router)
    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
