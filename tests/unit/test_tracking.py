"""Offset tracking (entrypoints/tracking.py): a partition's commit point only moves past offsets
that are done together with every offset before them."""

from __future__ import annotations

from payment_worker.entrypoints.tracking import OffsetTracker

TP = ("process-payment", 0)
OTHER = ("process-payment", 1)


def tracker_with(*offsets: int, key: tuple[str, int] = TP) -> OffsetTracker:
    tracker = OffsetTracker()
    for offset in offsets:
        tracker.started(*key, offset)
    return tracker


def test_nothing_to_commit_before_anything_finishes() -> None:
    """Started but unfinished records give no commit point."""
    assert tracker_with(3, 4, 5).to_commit() == {}


def test_commit_point_is_one_past_the_finished_offset() -> None:
    """When the first record finishes, the commit point is its offset + 1."""
    tracker = tracker_with(3, 4, 5)
    tracker.finished(*TP, 3)
    assert tracker.to_commit() == {TP: 4}


def test_later_offsets_finishing_first_do_not_move_the_commit_point() -> None:
    """Finishing 5 and 4 before 3 commits nothing: 3 is not done."""
    tracker = tracker_with(3, 4, 5)
    tracker.finished(*TP, 5)
    tracker.finished(*TP, 4)
    assert tracker.to_commit() == {}


def test_commit_point_jumps_past_contiguous_finished_offsets() -> None:
    """Once 3 finishes after 4 and 5, the commit point jumps to 6."""
    tracker = tracker_with(3, 4, 5)
    tracker.finished(*TP, 5)
    tracker.finished(*TP, 4)
    tracker.finished(*TP, 3)
    assert tracker.to_commit() == {TP: 6}


def test_commit_point_stops_at_a_gap() -> None:
    """With 3 and 5 done but 4 not, the commit point is 4 (not 6)."""
    tracker = tracker_with(3, 4, 5)
    tracker.finished(*TP, 5)
    tracker.finished(*TP, 3)
    assert tracker.to_commit() == {TP: 4}


def test_committed_points_are_not_returned_again() -> None:
    """After committed() records a point, to_commit returns nothing until it moves."""
    tracker = tracker_with(3, 4)
    tracker.finished(*TP, 3)
    tracker.committed(tracker.to_commit())
    assert tracker.to_commit() == {}


def test_a_moved_point_is_returned_after_a_commit() -> None:
    """After a commit, a further finished offset gives the new point."""
    tracker = tracker_with(3, 4)
    tracker.finished(*TP, 3)
    tracker.committed(tracker.to_commit())
    tracker.finished(*TP, 4)
    assert tracker.to_commit() == {TP: 5}


def test_partitions_are_tracked_independently() -> None:
    """A gap on one partition does not hold back another."""
    tracker = tracker_with(10, 11)
    tracker.started(*OTHER, 7)
    tracker.finished(*TP, 11)
    tracker.finished(*OTHER, 7)
    assert tracker.to_commit() == {OTHER: 8}


def test_to_commit_can_be_limited_to_some_partitions() -> None:
    """to_commit(only=...) returns points of the named partitions alone."""
    tracker = tracker_with(1)
    tracker.started(*OTHER, 1)
    tracker.finished(*TP, 1)
    tracker.finished(*OTHER, 1)
    assert tracker.to_commit([OTHER]) == {OTHER: 2}


def test_unfinished_counts_records_behind_the_commit_point() -> None:
    """unfinished counts records not yet committable, including done ones behind a gap."""
    tracker = tracker_with(3, 4, 5)
    tracker.finished(*TP, 5)
    assert tracker.unfinished() == 3
    tracker.finished(*TP, 3)
    assert tracker.unfinished() == 2


def test_forget_drops_a_partition() -> None:
    """After forget(), a revoked partition has no commit point and no unfinished records."""
    tracker = tracker_with(3, 4)
    tracker.finished(*TP, 3)
    tracker.forget([TP])
    assert (tracker.to_commit(), tracker.unfinished()) == ({}, 0)


def test_finishing_on_a_forgotten_partition_is_ignored() -> None:
    """A record finishing after its partition was revoked does not resurrect a commit point."""
    tracker = tracker_with(3)
    tracker.forget([TP])
    tracker.finished(*TP, 3)
    assert tracker.to_commit() == {}


def test_reassigned_partition_starts_afresh() -> None:
    """A partition forgotten and assigned again tracks from the new records only."""
    tracker = tracker_with(3, 4)
    tracker.finished(*TP, 3)
    tracker.forget([TP])
    tracker.started(*TP, 4)
    tracker.finished(*TP, 4)
    assert tracker.to_commit() == {TP: 5}
