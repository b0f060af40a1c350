"""When nightly curation runs: every day at the configured local time, as a background task."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from server.memory.curation import Consolidate
from server.memory.service import MemoryService

logger = logging.getLogger(__name__)


def seconds_until(time_of_day: str, now: datetime) -> float:
    """Seconds from `now` to the next `HH:MM` (tomorrow's if today's has passed)."""
    hour, minute = (int(part) for part in time_of_day.split(":"))
    target = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if target <= now:
        target += timedelta(days=1)
    return (target - now).total_seconds()


async def curate_nightly(service: MemoryService, consolidate: Consolidate, time_of_day: str) -> None:
    """Runs until cancelled; one group's failure is logged and the schedule goes on."""
    while True:
        await asyncio.sleep(seconds_until(time_of_day, datetime.now()))
        logger.info("nightly memory curation starting")
        reports = await service.curate_all(consolidate)
        logger.info(
            "nightly memory curation done: %d groups, %d changes", len(reports), sum(len(r.applied) for r in reports)
        )
