"""Pure batching logic: token budget, bucketing, max wait, every item answered exactly once."""

from __future__ import annotations

import random

import pytest

from inference.batching import MicroBatcher, pack_by_budget, padding_ratio


def test_every_index_lands_in_exactly_one_pack() -> None:
    rng = random.Random(7)
    lengths = [rng.randint(1, 200) for _ in range(1000)]
    packs = pack_by_budget(lengths, token_budget=2048, max_docs=64, sort_window=256)
    flat = sorted(i for p in packs for i in p)
    assert flat == list(range(1000))


def test_packs_respect_token_budget_and_doc_cap() -> None:
    rng = random.Random(3)
    lengths = [rng.randint(5, 120) for _ in range(500)]
    packs = pack_by_budget(lengths, token_budget=1000, max_docs=16)
    for pack in packs:
        assert len(pack) <= 16
        assert len(pack) * max(lengths[i] for i in pack) <= 1000


def test_a_document_longer_than_the_budget_gets_its_own_pack() -> None:
    packs = pack_by_budget([10, 5000, 10], token_budget=100, max_docs=8)
    assert [1] in packs
    assert sorted(i for p in packs for i in p) == [0, 1, 2]


def test_length_bucketing_cuts_padding() -> None:
    rng = random.Random(11)
    lengths = [rng.choice([8, 8, 9, 120]) for _ in range(512)]
    unsorted = [list(range(i, i + 32)) for i in range(0, 512, 32)]
    bucketed = pack_by_budget(lengths, token_budget=32 * 128, max_docs=32)
    assert padding_ratio(lengths, bucketed) < 0.2
    assert padding_ratio(lengths, unsorted) > 0.5


def test_sort_window_limits_reordering_to_the_window() -> None:
    lengths = [50, 40, 30, 20, 10, 5]
    packs = pack_by_budget(lengths, token_budget=10_000, max_docs=100, sort_window=3)
    assert packs == [[2, 1, 0], [5, 4, 3]]


def test_invalid_budget_is_refused() -> None:
    with pytest.raises(ValueError):
        pack_by_budget([1], token_budget=0, max_docs=1)


def test_micro_batch_closes_on_token_budget() -> None:
    b: MicroBatcher[str] = MicroBatcher(token_budget=100, max_items=1000, max_wait_s=60)
    b.add("a", 60, now=0.0)
    assert not b.due(0.1)
    b.add("b", 50, now=0.1)
    assert b.due(0.1)
    assert b.take() == ["a", "b"]
    assert len(b) == 0 and b.tokens == 0


def test_micro_batch_closes_on_item_cap() -> None:
    b: MicroBatcher[int] = MicroBatcher(token_budget=10**9, max_items=3, max_wait_s=60)
    for i in range(3):
        b.add(i, 1, now=0.0)
    assert b.due(0.0)


def test_micro_batch_closes_after_max_wait_from_its_oldest_item() -> None:
    b: MicroBatcher[int] = MicroBatcher(token_budget=10**9, max_items=100, max_wait_s=0.2)
    assert not b.due(100.0)  # empty is never due
    b.add(1, 1, now=10.0)
    b.add(2, 1, now=10.15)
    assert not b.due(10.19)
    assert b.time_left(10.1) == pytest.approx(0.1)
    assert b.due(10.21)
    assert b.take() == [1, 2]
    assert b.time_left(11.0) == pytest.approx(0.2)


def test_items_that_already_waited_upstream_are_not_held_back_again() -> None:
    b: MicroBatcher[str] = MicroBatcher(token_budget=10_000, max_items=100, max_wait_s=0.2)
    b.add("fresh", 5, now=10.0, age=0.0)
    assert not b.due(10.1)
    b.add("waited in Kafka while the worker was busy", 5, now=10.1, age=1.5)
    assert b.due(10.1)  # its wait is capped at max_wait_s, which it has already spent
    b.drain()
    b.add("clock skew: a record from the future", 5, now=20.0, age=-3.0)
    assert not b.due(20.1) and b.due(20.2)


def test_one_large_poll_becomes_several_micro_batches_within_the_caps() -> None:
    """A micro-batch is one ES bulk and one commit: its caps hold however many records one poll returned."""
    b: MicroBatcher[int] = MicroBatcher(token_budget=100, max_items=4, max_wait_s=0.2)
    for i in range(10):
        b.add(i, 10, now=5.0, age=0.05)
    assert b.take() == [0, 1, 2, 3]
    assert len(b) == 6 and b.tokens == 60 and b.due(5.0)  # the rest is full already
    assert b.take() == [4, 5, 6, 7]
    assert not b.due(5.1) and b.due(5.15)  # the last two keep the batch's age
    assert b.take() == [8, 9] and len(b) == 0 and b.tokens == 0
    for tokens in (30, 80, 500, 10):
        b.add(tokens, tokens, now=6.0)
    assert b.take() == [30, 80]  # the item that reaches the budget closes the batch
    assert b.take() == [500]  # an item over the budget goes alone
    assert b.take() == [10]
    b.add(1, 1, now=7.0)
    b.add(2, 1, now=7.0)
    assert b.drain() == [1, 2] and len(b) == 0  # drain: everything, to drop it


def _padded(packs: list[list[int]], lengths: list[int]) -> int:
    return sum(len(p) * max(lengths[i] for i in p) for p in packs)


def _light_stream_batch() -> list[int]:
    # 50 tweets as a light stream brings them: mostly 12-40 tokens, one long one that sets a single pack's width
    rng = random.Random(7)
    return [rng.choice([12, 16, 20, 24, 28, 32, 36, 40]) for _ in range(49)] + [80]


def test_the_spread_rule_splits_a_small_mixed_batch_into_packs_of_similar_lengths() -> None:
    lengths = _light_stream_batch()
    one_pack = pack_by_budget(lengths, token_budget=4096, max_docs=128)
    assert len(one_pack) == 1
    split = pack_by_budget(lengths, token_budget=4096, max_docs=128, max_spread=1.5)
    assert sorted(i for p in split for i in p) == list(range(len(lengths)))
    assert len(split) > 1
    assert _padded(split, lengths) < 0.6 * _padded(one_pack, lengths)


def test_the_spread_rule_keeps_a_large_sorted_window_in_full_budgets() -> None:
    # a backlog's window sorts into long runs of equal lengths: the budget, not the spread, closes its packs
    rng = random.Random(3)
    lengths = [rng.randint(12, 60) for _ in range(1000)]
    plain = pack_by_budget(lengths, token_budget=4096, max_docs=128)
    spread = pack_by_budget(lengths, token_budget=4096, max_docs=128, max_spread=1.5)
    assert sorted(i for p in spread for i in p) == list(range(1000))
    assert len(spread) <= len(plain) + 3


def test_the_spread_rule_does_not_split_off_packs_too_small_to_pay_for_a_forward_pass() -> None:
    # ten 5-token texts hold 50 tokens: too few for a pass of their own, so they ride with the longer ones
    lengths = [5] * 10 + [50] * 10
    assert len(pack_by_budget(lengths, token_budget=4096, max_docs=128, max_spread=1.5)) == 1
    # with room for it, the same rule splits them
    assert len(pack_by_budget(lengths, token_budget=4096, max_docs=128, max_spread=1.5, min_pack_tokens=40)) == 2


def test_a_pack_spread_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_spread"):
        pack_by_budget([10, 20], token_budget=100, max_docs=8, max_spread=0.5)


@pytest.mark.parametrize("steps", [4, 8])
def test_row_buckets_pad_little_and_leave_few_shapes(steps: int) -> None:
    """The lean encoder pads a pass's token rows to a bucket size: never fewer rows, at most 1/steps more (past the
    smallest sizes), and a few dozen sizes over every pack the default token budget allows."""
    from riskstream.bert import bucket_rows

    sizes = {bucket_rows(rows, steps) for rows in range(1, 4097)}
    for rows in range(1, 4097):
        padded = bucket_rows(rows, steps)
        assert padded >= rows
        assert padded % 8 == 0 or rows <= 8
        if rows >= 8 * steps:
            assert padded <= rows * (1 + 1 / steps)
    assert len(sizes) == 15 + 6 * steps  # 1-8, the multiples of 8 up to 64, then `steps` per power of two
    assert bucket_rows(4096, steps) == 4096
    assert all(bucket_rows(rows, 0) == rows for rows in (1, 77, 3001))  # 0 = off
