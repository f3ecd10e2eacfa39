"""Work on two threads at once: zstd, zlib and numpy's array operations release the GIL."""

from __future__ import annotations

import threading
from typing import Callable


def on_two_threads(first: Callable[[], None], second: Callable[[], None], name: str = "helper") -> None:
    """Run `first` on a helper thread and `second` on this one, at once; an exception from either is raised here."""
    failures: list[BaseException] = []

    def run_first() -> None:
        try:
            first()
        except BaseException as exc:  # re-raised on the calling thread
            failures.append(exc)

    helper = threading.Thread(target=run_first, name=name)
    helper.start()
    try:
        second()
    finally:
        helper.join()
    if failures:
        raise failures[0]
