"""The review cursor: which card of the review queue the keyboard acts on, and the page it is on.

A plain value (no Streamlit here): the Review page keeps one in `st.session_state` and replaces it
after every move. Moves that depend on the queue as it will be after a decision (the decided card
may leave a filtered queue, an undone one may come back) are recorded as pending and resolved by
`placed(queue)` on the next rerun, when the new queue is known.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

PAGE_SIZE = 24


@dataclass(frozen=True)
class ReviewCursor:
    run: str | None = None  # the run the position belongs to: another run starts at its top card
    position: int = 0  # the focused card's place in the filtered queue
    page_size: int = PAGE_SIZE
    decided: str | None = None  # pending: the card just decided, focus moves past it
    decided_at: int = 0  # ... and where it was, for when it left the queue
    undone: tuple[str, ...] = ()  # pending: the cards an undo put back, focus returns to the first of them

    # ---- moves

    def on_run(self, run: str | None) -> ReviewCursor:
        """This cursor, or a fresh one at the top when `run` is another run."""
        return self if run == self.run else ReviewCursor(run=run, page_size=self.page_size)

    def moved_to(self, position: int) -> ReviewCursor:
        return replace(self, position=max(0, int(position)), decided=None, undone=())

    def next(self) -> ReviewCursor:
        return self.moved_to(self.position + 1)

    def previous(self) -> ReviewCursor:
        return self.moved_to(self.position - 1)

    def next_page(self) -> ReviewCursor:
        return self.moved_to((self.page + 1) * self.page_size)

    def previous_page(self) -> ReviewCursor:
        return self.moved_to((self.page - 1) * self.page_size)

    def after_decision(self, path: str, position: int) -> ReviewCursor:
        """A card was decided (key or click): the focus goes to the card after it."""
        return replace(self, position=max(0, int(position)), decided=path, decided_at=max(0, int(position)),
                       undone=())

    def after_undo(self, paths: Sequence[str]) -> ReviewCursor:
        """An undo put these cards back: the focus returns to them, so the next key decides them again."""
        return replace(self, decided=None, undone=tuple(paths)) if paths else self

    def placed(self, queue: Sequence[str]) -> ReviewCursor:
        """The cursor on `queue` (its paths, in order): pending moves resolved, the position clamped."""
        position = self.position
        if self.undone:
            wanted = set(self.undone)
            position = next((i for i, p in enumerate(queue) if p in wanted), position)
        elif self.decided is not None:
            # Still in the queue: step past it. Filtered out by its new status: the next card took its place.
            at = _index(queue, self.decided)
            position = at + 1 if at is not None else self.decided_at
        position = min(max(0, position), max(len(queue) - 1, 0))
        return replace(self, position=position, decided=None, undone=())

    # ---- paging

    @property
    def page(self) -> int:
        return self.position // self.page_size

    @property
    def page_start(self) -> int:
        return self.page * self.page_size

    def page_stop(self, n: int) -> int:
        return min(self.page_start + self.page_size, n)

    def n_pages(self, n: int) -> int:
        return max(1, math.ceil(n / self.page_size))

    @property
    def slot(self) -> int:
        """The focused card's place on its page (0 = top left)."""
        return self.position - self.page_start


def _index(queue: Sequence[str], path: str) -> int | None:
    try:
        return list(queue).index(path)
    except ValueError:
        return None
