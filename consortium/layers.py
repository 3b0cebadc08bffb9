"""The channels-redis layer for REDIS_URL (settings, and bench/ws_fanout.py's publisher, build it here)."""

from typing import Any


def redis_channel_layer(url: str) -> dict[str, Any]:
    return {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {
        # redis-py 8 gives up a read after 5 s, while channels-redis waits up to 5 s for a message: a quiet
        # study's websockets were closed with 1011 (channels_redis#422). Reads wait as long as they need.
        "hosts": [{"address": url, "socket_timeout": None}],
        # Messages queued per server process before channels-redis drops them (each dashboard's consumer
        # fills a gap from the event log, but a burst should not need that).
        "capacity": 1000,
    }}
