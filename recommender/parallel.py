"""Row-wise array work split across two threads: numpy's casts and copies release the GIL."""

from __future__ import annotations

import threading
from typing import Callable

PARALLEL_ELEMENTS = 1 << 20  # below this one thread finishes before a second one has started


def by_row_halves(work: Callable[[slice], None], n_rows: int, elements: int) -> None:
    """Call `work(rows)` for the two halves of `n_rows` rows at once, or once for all rows when small.

    `work` must only touch its own rows. An exception on the helper thread is raised here.
    """
    if elements < PARALLEL_ELEMENTS or n_rows < 2:
        work(slice(0, n_rows))
        return
    half = n_rows // 2
    failures: list[BaseException] = []

    def first_half() -> None:
        try:
            work(slice(0, half))
        except BaseException as exc:  # re-raised on the calling thread
            failures.append(exc)

    helper = threading.Thread(target=first_half, name="row-halves")
    helper.start()
    try:
        work(slice(half, n_rows))
    finally:
        helper.join()
    if failures:
        raise failures[0]
