"""Watch a directory for changes to some of its entries, in settled bursts (inotify).

The directory is watched, not the file: editors and `kubectl` (ConfigMap `..data` symlink
swaps) replace a file by rename, which a watch on the file itself would miss.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable
from pathlib import Path

from asyncinotify import Inotify, Mask

DIR_MASK = Mask.CLOSE_WRITE | Mask.MOVED_TO | Mask.CREATE | Mask.DELETE | Mask.ATTRIB
# Editors write in bursts (truncate, write, rename); one reload after the burst settles.
DEBOUNCE_SECONDS = 0.05
# A read that would take things away is re-read after HOLD_SECONDS and acted on only when
# two reads in a row agree; a file still changing after HOLD_TRIES re-reads is left alone
# (the writer's next close brings it back).
HOLD_SECONDS = 0.3
HOLD_TRIES = 4


async def changes(directory: Path, wanted: Callable[[str], bool],
                  initial: bool = True) -> AsyncGenerator[float, None]:
    """The bursts of changes to the entries of `directory` that `wanted` accepts (by name;
    `..data` is a ConfigMap volume's swap), one per burst once it settles: yields the
    time.monotonic() of the burst's first event. With `initial`, it first yields once as soon
    as the watch is in place. Close it (contextlib.aclosing) to stop."""
    with Inotify() as ino:
        ino.add_watch(directory, DIR_MASK)
        if initial:
            # Once the watch is in place: whatever changed between the caller's first read
            # and now has no event of its own, so the caller reads again.
            yield time.monotonic()
        events = aiter(ino)
        while True:
            event = await anext(events)
            if event.name is not None and not wanted(str(event.name)):
                continue
            changed_at = time.monotonic()
            while True:
                try:
                    await asyncio.wait_for(anext(events), DEBOUNCE_SECONDS)
                except TimeoutError:
                    break
            yield changed_at
