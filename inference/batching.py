"""Pure batching logic: length bucketing, token-budget packing and the micro-batch accumulator.

Nothing here touches torch, Kafka or a clock of its own (time is passed in), so it is tested fast and exactly.

Two levels of batching:

- :class:`MicroBatcher` groups arriving messages into *micro-batches*, the worker's unit of work and of commit:
  it closes when the batch holds ``token_budget`` (estimated) tokens, ``max_items`` messages, or when its oldest
  message has waited ``max_wait_s``.
- :func:`pack_by_budget` splits the documents of a micro-batch (or of a file) into *forward passes*: it sorts a
  window of pending documents by length (length bucketing) and packs neighbours while ``rows x longest row`` stays
  within the token budget, so padding is small. Every input index lands in exactly one pack.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


def pack_by_budget(
    lengths: Sequence[int],
    token_budget: int,
    max_docs: int,
    *,
    sort_window: int | None = None,
    max_spread: float | None = None,
    min_pack_tokens: int = 256,
) -> list[list[int]]:
    """Group indices of ``lengths`` into packs whose padded size (``len(pack) * max length``) fits the budget.

    Indices are sorted by length within consecutive windows of ``sort_window`` items (all at once when None), then
    packed greedily in that order. With ``max_spread``, a pack that already holds ``min_pack_tokens`` real tokens
    also closes before a document longer than ``max_spread`` times its shortest: a few dozen documents of mixed
    lengths then travel in packs of similar lengths instead of one pack padded to the longest, while a large,
    already well-sorted window still fills whole budgets (fewer, larger forward passes). A single document longer
    than the budget forms a pack of its own (it is truncated upstream, never dropped). Returns packs of indices into
    ``lengths``; each index appears exactly once.
    """
    if token_budget <= 0 or max_docs <= 0:
        raise ValueError("token_budget and max_docs must be positive")
    if max_spread is not None and max_spread < 1.0:
        raise ValueError("max_spread must be at least 1")
    n = len(lengths)
    window = n if not sort_window or sort_window <= 0 else sort_window
    packs: list[list[int]] = []
    for start in range(0, n, max(window, 1)):
        order = sorted(range(start, min(start + window, n)), key=lambda i: lengths[i])
        current: list[int] = []
        longest = 0
        shortest = 0
        real = 0
        for i in order:
            length = max(int(lengths[i]), 1)
            new_longest = max(longest, length)
            # only a row that would widen the pack counts: rows as long as its longest cost no padding
            spread_out = (
                max_spread is not None
                and real >= min_pack_tokens
                and length > longest
                and new_longest > max_spread * shortest
            )
            if current and (len(current) >= max_docs or (len(current) + 1) * new_longest > token_budget or spread_out):
                packs.append(current)
                current, new_longest, real = [], length, 0
            if not current:
                shortest = length
            current.append(i)
            real += length
            longest = new_longest
        if current:
            packs.append(current)
    return packs


def padding_ratio(lengths: Sequence[int], packs: Sequence[Sequence[int]]) -> float:
    """Share of padded positions that are padding (0 = none); for benchmarks and tests."""
    padded = sum(len(p) * max(lengths[i] for i in p) for p in packs if p)
    real = sum(lengths[i] for p in packs for i in p)
    return 0.0 if padded == 0 else 1.0 - real / padded


def estimate_tokens(text: str) -> int:
    """Cheap token estimate for closing micro-batches before tokenizing (WordPiece: ~4 characters a token)."""
    return len(text) // 4 + 2


@dataclass
class MicroBatcher(Generic[T]):
    """Accumulates items until a token budget, an item cap or a max wait closes the batch.

    ``now`` values are monotonic seconds supplied by the caller.
    """

    token_budget: int
    max_items: int
    max_wait_s: float
    _items: list[T] = field(default_factory=list)
    _item_tokens: list[int] = field(default_factory=list)
    _tokens: int = 0
    _opened_at: float | None = None

    def add(self, item: T, tokens: int, now: float, age: float = 0.0) -> None:
        """Add ``item``; ``age`` is how long it already waited upstream (e.g. in Kafka since it was produced).

        The batch's clock starts at its oldest item's arrival upstream, capped at ``max_wait_s``: items that already
        waited their share while the consumer was busy are not held back for a second ``max_wait_s``."""
        opened = now - min(max(age, 0.0), self.max_wait_s)
        if self._opened_at is None or opened < self._opened_at:
            self._opened_at = opened
        self._items.append(item)
        self._item_tokens.append(max(tokens, 0))
        self._tokens += max(tokens, 0)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def tokens(self) -> int:
        return self._tokens

    def full(self) -> bool:
        return len(self._items) >= self.max_items or self._tokens >= self.token_budget

    def due(self, now: float) -> bool:
        """True when the batch should be processed now (full, or its oldest item waited max_wait_s)."""
        if not self._items:
            return False
        if self.full():
            return True
        return self._opened_at is not None and now - self._opened_at >= self.max_wait_s - 1e-9  # float slack

    def time_left(self, now: float) -> float:
        """Seconds until the batch is due by age (max_wait_s when empty); for poll timeouts."""
        if self._opened_at is None:
            return self.max_wait_s
        return max(0.0, self.max_wait_s - (now - self._opened_at))

    def take(self) -> list[T]:
        """The next micro-batch, oldest first: at most ``max_items`` items, and no more once ``token_budget`` is
        reached (a single item over the budget still goes alone). What is left stays, with the batch's age: one
        large poll becomes several micro-batches, each due at once."""
        n, tokens = 0, 0
        while n < len(self._items) and n < self.max_items and (n == 0 or tokens < self.token_budget):
            tokens += self._item_tokens[n]
            n += 1
        items = self._items[:n]
        del self._items[:n], self._item_tokens[:n]
        self._tokens -= tokens
        if not self._items:
            self._opened_at = None
        return items

    def drain(self) -> list[T]:
        """Every item, whatever the caps (to drop them all, e.g. when their partitions are revoked)."""
        items, self._items, self._item_tokens, self._tokens, self._opened_at = self._items, [], [], 0, None
        return items
