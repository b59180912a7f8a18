"""Liveness (`/health`: the process answers) and readiness (`/ready`: its dependencies answer)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import ServicesDep
from api.openapi import RETRY_AFTER
from api.schemas import HealthResponse, ReadinessResponse

router = APIRouter(tags=["health"])

DATABASE_CHECK_TIMEOUT_SECONDS = 2.0
RETRY_AFTER_SECONDS = 5


@router.get("/health", response_model=HealthResponse)
async def health() -> HealthResponse:
    """The process is up. Deliberately checks nothing else, so a restart never fixes an outage."""
    return HealthResponse()


async def _database_ok(services: ServicesDep) -> bool:
    try:
        async with asyncio.timeout(DATABASE_CHECK_TIMEOUT_SECONDS):
            async with services.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
    except Exception:
        return False
    return True


@router.get(
    "/ready",
    response_model=ReadinessResponse,
    responses={
        503: {
            "model": ReadinessResponse,
            "description": "PostgreSQL or NATS (or the file store) cannot be reached; `database`, "
            "`nats` and (s3 backend) `storage` say which.",
            "headers": RETRY_AFTER,
        }
    },
)
async def ready(services: ServicesDep) -> JSONResponse:
    """Whether this API can take uploads now: PostgreSQL and NATS JetStream both reachable."""
    database_ok = await _database_ok(services)
    storage = services.storage
    # With the nats storage backend, the object store buckets are part of "NATS is usable"; an S3
    # bucket is a dependency of its own, reported as `storage`.
    own_store = services.settings.storage_backend == "s3"
    nats_ok = services.publisher.is_ready and (own_store or storage.is_ready)
    problem = services.publisher.nats_problem or (None if own_store else storage.problem)
    storage_ok = storage.is_ready
    body = ReadinessResponse(
        status="ready" if database_ok and nats_ok and storage_ok else "unavailable",
        database="ok" if database_ok else "unreachable",
        nats="ok" if nats_ok else problem or "unreachable",
        storage=("ok" if storage_ok else storage.problem or "unreachable") if own_store else None,
    )
    answer = body.model_dump(exclude_none=True)
    if body.status == "ready":
        return JSONResponse(answer)
    # As every other 503: when to look again.
    return JSONResponse(answer, status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
