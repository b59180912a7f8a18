"""What the API process holds for its lifetime, made in the lifespan and shared by every request."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from api.callbacks import CallbackSender
from api.publisher import TaskPublisher
from config import Settings
from core.processing.presets import Preset
from core.storage import Storage


@dataclass(frozen=True)
class Services:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    # For the statements run once per upload (core.db.DriverStatement); the sessions for the rest.
    database: asyncpg.Pool
    storage: Storage
    publisher: TaskPublisher
    presets: dict[str, Preset]
    callbacks: CallbackSender | None
