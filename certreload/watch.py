"""File events as hints: the only module that imports watchdog.

Each folder holding one of the files is watched non-recursively (a recursive watch would
report certreload's own reads and the kubelet's periodic ones).  Any change of an entry in a
folder (a kubelet ``..data`` rename, a certbot link, a file written and closed) wakes the
reconcile loop; the loop then reads and judges the whole set itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

# Not opened/closed-without-writing (our own reads) and not every modification of a file
# being written: a writer's close, or an entry created, moved or deleted, is the news.
_EVENTS = [
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileClosedEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
]


class _Hint(FileSystemEventHandler):
    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._wake()


class Watcher:
    """Watches folders; calls ``wake()`` (from its own thread) on any change in them."""

    def __init__(self, folders: Iterable[Path], wake: Callable[[], None]) -> None:
        self._folders = tuple(folders)
        self._handler = _Hint(wake)
        self._observer: BaseObserver = Observer()
        self._watches: dict[Path, ObservedWatch] = {}
        self._started = False

    def ensure(self) -> list[str]:
        """Watch every folder not yet watched; return the problems of those that cannot be."""
        if not self._started:
            self._observer.start()
            self._started = True
        problems = []
        for folder in self._folders:
            if folder in self._watches:
                continue
            try:
                self._watches[folder] = self._observer.schedule(
                    self._handler, str(folder), recursive=False, event_filter=_EVENTS
                )
            except OSError as exc:
                problems.append(f"cannot watch {folder}: {exc.strerror or exc}")
        return problems

    @property
    def watching(self) -> tuple[Path, ...]:
        return tuple(self._watches)

    def stop(self) -> None:
        if self._started:
            self._observer.stop()
            self._observer.join(timeout=2)
