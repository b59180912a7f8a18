"""What the API process holds for its lifetime, made in the lifespan and shared by every request."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from api.callbacks import CallbackSender
from api.dispatcher import Dispatcher
from api.publisher import TaskPublisher
from config import Settings
from core.db import DriverPool
from core.processing.presets import Preset
from core.storage import Storage


@dataclass(frozen=True)
class Services:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    # asyncpg's own pool, for core.tasks' statement run once per upload (the insert);
    # the sessions for everything else.
    driver_pool: DriverPool
    storage: Storage
    publisher: TaskPublisher
    # Puts committed tasks into the stream (a request wakes it once its row is committed).
    dispatcher: Dispatcher
    presets: dict[str, Preset]
    callbacks: CallbackSender | None
