"""Re-apply the routes file on every save."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from ..routing.errors import ConfigError

log = logging.getLogger("ferry")


async def watch_file(path: Path, apply: Callable[[], Awaitable[object]], watching: asyncio.Event) -> None:
    """Call `apply()` on every save of `path`. Watching the folder survives editors that save by rename.

    The file's own folder and, when it is a symlink, its target's folder are watched: a Kubernetes
    ConfigMap volume updates by swapping the `..data` symlink in the mounted folder (the file itself is a
    symlink through it), so any `..`-named entry changing there means "read the file again" (an unchanged
    text costs nothing). The watcher yields on a short idle timeout too: its first yield proves it is
    registered (`watching` is set then), and then the file is read once more, so a save made while ferry was
    starting is not missed. A rejected file is the caller's to report; the watch goes on."""
    from watchfiles import Change, awatch

    target = path.absolute()
    names = {target, target.resolve()}
    folders = sorted({str(p.parent) for p in names})

    def touches(kind: Change, changed: str) -> bool:
        changed_path = Path(changed)
        return (changed_path in names and kind != Change.deleted) or changed_path.name.startswith("..")

    async for changes in awatch(
        *folders, debounce=10, step=5, recursive=False, rust_timeout=100, yield_on_timeout=True
    ):
        if not watching.is_set():
            watching.set()
            changes = {(Change.modified, str(target))}
        if any(touches(kind, p) for kind, p in changes):
            try:
                await apply()
            except ConfigError:
                pass  # logged and recorded in status; the last good configuration keeps serving
            except OSError as err:
                log.error("cannot read %s: %s", target, err)
