"""Dependency-injection glue: the only place routes get services, sessions and tasks from."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request
from sqlalchemy.ext.asyncio import AsyncSession

from api.state import Services
from core.models import ImageTask

TASK_NOT_FOUND = "Task not found"
# The id column is a PostgreSQL integer: larger ids cannot exist, and asking the database would fail.
MAX_TASK_ID = 2**31 - 1


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_session(services: ServicesDep) -> AsyncIterator[AsyncSession]:
    # A session takes a pooled connection only at its first query, not while a body streams in.
    async with services.sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


async def get_task(task_id: Annotated[int, Path(ge=1, le=MAX_TASK_ID)], session: SessionDep) -> ImageTask:
    task = await session.get(ImageTask, task_id)
    if task is None:
        raise HTTPException(status_code=404, detail=TASK_NOT_FOUND)
    return task


TaskDep = Annotated[ImageTask, Depends(get_task)]
