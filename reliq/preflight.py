"""Start-up checks: warn, one clear line each, when Redis's settings put tasks at risk."""

from __future__ import annotations

import logging

from redis.asyncio import Redis
from redis.exceptions import ResponseError

log = logging.getLogger(__name__)


async def redis_risks(redis: Redis) -> list[str]:
    """What in this Redis's configuration could lose tasks (empty when nothing does)."""
    try:
        config = await redis.config_get("maxmemory-policy")
        config.update(await redis.config_get("appendonly"))
        config.update(await redis.config_get("save"))
    except ResponseError:  # managed Redis services often disable CONFIG
        return ["cannot read Redis's CONFIG; make sure maxmemory-policy is noeviction and AOF is on"]
    risks = []
    policy = _text(config.get("maxmemory-policy"))
    if policy != "noeviction":
        risks.append(f"Redis maxmemory-policy is {policy!r}: under memory pressure it may evict task "
                     "records and queues; set it to 'noeviction'")
    if _text(config.get("appendonly")) != "yes":
        saves = _text(config.get("save"))
        risks.append("Redis has AOF off" + (f" (RDB snapshots '{saves}')" if saves else " and no snapshots") +
                     ": tasks accepted since the last save are lost if Redis restarts; "
                     "enable appendonly yes")
    return risks


async def warn_about_redis(redis: Redis) -> None:
    """Log each risk as a warning."""
    for risk in await redis_risks(redis):
        log.warning("%s", risk)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")
