"""Work split across two threads: numpy's casts and copies, zstd and zlib release the GIL."""

from __future__ import annotations

import threading
from typing import Callable

PARALLEL_ELEMENTS = 1 << 20  # below this one thread finishes before a second one has started


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


def by_row_halves(work: Callable[[slice], None], n_rows: int, elements: int) -> None:
    """Call `work(rows)` for the two halves of `n_rows` rows at once, or once for all rows when small.

    `work` must only touch its own rows. An exception on the helper thread is raised here.
    """
    if elements < PARALLEL_ELEMENTS or n_rows < 2:
        work(slice(0, n_rows))
        return
    half = n_rows // 2
    on_two_threads(lambda: work(slice(0, half)), lambda: work(slice(half, n_rows)), name="row-halves")
