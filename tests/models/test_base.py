"""Run options that every model's loop reads."""

from __future__ import annotations

from models.base import CheckpointClock, RunOptions


def test_epoch_end_checkpoints_can_be_left_to_the_clock():
    every_epoch = CheckpointClock(RunOptions(checkpoint_every_s=1e9))
    by_time = CheckpointClock(RunOptions(checkpoint_every_s=1e9, checkpoint_epochs=False))
    assert every_epoch.due(10, epoch_end=True) and not every_epoch.due(11)
    assert not by_time.due(10, epoch_end=True)
    stopping = CheckpointClock(RunOptions(checkpoint_epochs=False, stop_after_steps=12))
    assert stopping.due(12) and not stopping.due(11, epoch_end=True)
    due_now = CheckpointClock(RunOptions(checkpoint_every_s=0.0, checkpoint_epochs=False))
    assert due_now.due(1)
