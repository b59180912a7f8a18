"""The FastAPI application: lifespan (settings, engine, NATS publisher), routers, error answers.

`python -m api.serve` serves it (uvicorn with the HTTP limits of api/http_limits.py). Building
`app` touches nothing outside the process: settings are read, and connections made, when the
lifespan starts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DBAPIError
from starlette.requests import ClientDisconnect

from api.allowed_methods import method_not_allowed
from api.callbacks import CallbackPolicy, CallbackSender
from api.dispatcher import Dispatcher, DispatchPolicy
from api.head_requests import HeadAsGet
from api.metrics import ApiMetrics, UploadCounter
from api.metrics import router as metrics_router
from api.openapi import openapi_document
from api.publisher import TaskPublisher
from api.reprocess_runner import ReprocessRunner
from api.response_headers import ResponseHeaders
from api.routes import (
    controls,
    direct_uploads,
    events,
    failed_page,
    health,
    jobs,
    originals,
    pages,
    presets,
    reprocess,
    resumable,
    tasks,
)
from api.same_origin import refuse_cross_site
from api.schemas import DATABASE_UNAVAILABLE
from api.server_spans import ServerSpans
from api.state import Services
from api.sweeps import Sweeps
from api.templating import templates, wants_html
from api.uploads import UploadRefused
from config import get_settings
from core import loops, tracing
from core.db import (
    DATABASE_UNAVAILABLE_ERRORS,
    is_database_unavailable,
    make_driver_pool,
    make_engine,
    make_sessionmaker,
)
from core.formats import configure_pillow
from core.logs import configure_logging
from core.processing.presets import configured_presets
from core.storage import STORAGE_UNAVAILABLE, StorageUnavailable, make_storage
from core.tasks import DatabaseUnavailable

log = logging.getLogger(__name__)

# Connections per API process (PostgreSQL allows 100 in all by default): uploads (16 at a time) and
# their inserts run on the driver pool (core.tasks); reads, deletes, the dispatcher and callbacks
# on the engine's.
UPLOAD_CONNECTIONS = 16
SESSION_CONNECTIONS = 10


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    presets = configured_presets(settings)
    configure_logging(settings.log_level, json_lines=settings.log_json)
    traced = tracing.configure_tracing(settings.otel_exporter_otlp_endpoint, tracing.API_SERVICE)
    configure_pillow(settings.max_image_pixels)
    storage = make_storage(settings, client_name="imagequeue-api-storage")
    storage.folders.ensure_dirs()
    # In the background, like the task publisher: the API answers (and /ready says why not) meanwhile.
    storage.start_in_background()
    engine = make_engine(settings.database_url, pool_size=SESSION_CONNECTIONS)
    sessions = make_sessionmaker(engine)
    driver_pool = await make_driver_pool(settings.database_url, max_size=UPLOAD_CONNECTIONS)
    publisher = TaskPublisher(settings.nats_url, stream_replicas=settings.stream_replicas)
    dispatcher = Dispatcher(
        sessions,
        publisher,
        DispatchPolicy(
            settings.dispatch_window, settings.outbox_interval_seconds, settings.dispatch_urgent_places
        ),
        driver_pool,
    )
    publisher.start(on_settled=dispatcher.wake)
    sweeps = Sweeps(
        sessions,
        publisher,
        storage,
        lost_after_seconds=settings.lost_after_seconds,
        max_attempts=settings.max_attempts,
        job_retention_seconds=settings.job_retention_seconds,
        tus_expiry_seconds=settings.tus_expiry_seconds,
    )
    # Each loop stops on this event; closing it is bounded (core.loops), so SIGTERM ends the process.
    background = loops.Background("API loops")
    background.start(dispatcher.run(background.stop), name="dispatcher")
    background.start(sweeps.run(background.stop), name="lease-sweep")
    reprocess_runner = ReprocessRunner(sessions, dispatcher, storage)
    background.start(
        reprocess_runner.run(settings.reprocess_interval_seconds, background.stop), name="reprocess"
    )
    callbacks = None
    if settings.webhook_secret:
        callbacks = CallbackSender(
            sessions,
            CallbackPolicy(
                secret=settings.webhook_secret,
                allow_private=settings.webhook_allow_private,
                max_attempts=settings.webhook_max_attempts,
                retry_seconds=settings.webhook_retry_seconds,
                timeout_seconds=settings.webhook_timeout_seconds,
            ),
        )
        callbacks.start()
    app.state.services = Services(
        settings, engine, sessions, driver_pool, storage, publisher, dispatcher, presets, callbacks
    )
    try:
        yield
    finally:
        # The loops first: they use the publisher, the storage and the database.
        await background.close()
        if callbacks is not None:
            await callbacks.close()
        await publisher.close()
        await dispatcher.close()  # its last queued marks, before the pool goes
        await storage.close()
        await driver_pool.close()
        await engine.dispose()
        if traced:  # last: the spans of everything above are exported before the process ends
            await asyncio.to_thread(tracing.shutdown_tracing)


async def _upload_refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, UploadRefused)  # registered for it alone; Starlette types handlers loosely
    # The browser form gets a page it can show; API clients get JSON. No `Connection: close`: with
    # it uvicorn closes the socket at once, and a body still arriving makes the kernel reset it
    # under a client that sends all before reading, losing this answer. Answered with the body
    # unread, the HTTP layer's lingering close ends the connection once the client can read it
    # (api.http_limits); answered after the whole body, the connection stays open for the next.
    headers: dict[str, str] = {}
    if exc.status_code == 503:  # nothing was stored; the same request will do once storage is back
        headers["Retry-After"] = "5"
    if wants_html(request):
        return templates.TemplateResponse(
            request, "error.html", {"message": exc.message}, status_code=exc.status_code, headers=headers
        )
    return JSONResponse({"detail": exc.message}, status_code=exc.status_code, headers=headers)


async def _client_gone(request: Request, exc: Exception) -> Response:
    # Nobody is left to read an answer; the partial upload was already removed.
    log.info("client disconnected during %s %s", request.method, request.url.path)
    return Response(status_code=400)


async def _database_error(request: Request, exc: Exception) -> Response:
    # DatabaseUnavailable: core.tasks' word for it; the rest reach here from sessions used elsewhere.
    if not isinstance(exc, DatabaseUnavailable) and not is_database_unavailable(exc):
        log.error("database error during %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": "Internal Server Error"}, status_code=500)
    log.warning("database unavailable during %s %s: %s", request.method, request.url.path, exc)
    return JSONResponse({"detail": DATABASE_UNAVAILABLE}, status_code=503, headers={"Retry-After": "5"})


async def _storage_unavailable(request: Request, exc: Exception) -> Response:
    log.warning("file store unavailable during %s %s: %s", request.method, request.url.path, exc)
    return JSONResponse({"detail": STORAGE_UNAVAILABLE}, status_code=503, headers={"Retry-After": "5"})


def create_app() -> FastAPI:
    app = FastAPI(
        title="imagequeue",
        summary="Upload images; workers process them through a NATS JetStream queue.",
        version="1.0.0",
        lifespan=lifespan,
    )
    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    app.include_router(tasks.router)
    app.include_router(resumable.router)
    app.include_router(direct_uploads.router)
    app.include_router(controls.router)
    # The result page's Reprocess form posts there: refused when another site's page sent it.
    app.include_router(reprocess.router, dependencies=[Depends(refuse_cross_site)])
    app.include_router(jobs.router)
    app.include_router(presets.router)
    app.include_router(originals.router)
    app.include_router(events.router)
    app.include_router(pages.router)
    app.include_router(failed_page.router)
    app.include_router(health.router)
    app.include_router(metrics_router)
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")
    app.add_exception_handler(405, method_not_allowed)
    app.add_exception_handler(UploadRefused, _upload_refused)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(StorageUnavailable, _storage_unavailable)
    database_errors: tuple[type[Exception], ...] = (
        DatabaseUnavailable,
        *DATABASE_UNAVAILABLE_ERRORS,
        DBAPIError,
    )
    for error in database_errors:
        app.add_exception_handler(error, _database_error)

    app.state.metrics = ApiMetrics.for_this_process()
    app.add_middleware(UploadCounter, metrics=app.state.metrics)
    app.add_middleware(ResponseHeaders)
    # Every layer inside sees the GET it answers.
    app.add_middleware(HeadAsGet)
    # Outermost: the request's span covers all of it, and names the method the client sent.
    app.add_middleware(ServerSpans)
    return app


app = create_app()
