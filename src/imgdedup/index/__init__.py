"""Index backends: in-memory (the embedded default) and Redis multi-index hashing.

`open_index` opens the one the settings name. Backends are imported when opened, so
importing a submodule (such as the pure `mih` maths) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from imgdedup.config import Settings
    from imgdedup.index.interface import DedupIndex


async def open_index(settings: Settings) -> DedupIndex:
    """The index `settings.index_backend` names; `StartupError` if Redis does not answer."""
    if settings.index_backend == "memory":
        from imgdedup.index.memory import MemoryIndex

        return MemoryIndex()
    from imgdedup.index.redis.client import open_redis_index

    return await open_redis_index(settings)
