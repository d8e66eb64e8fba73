"""The garbage collector during a job: paused while it sets up, kept off what exists once it is
set up, and given everything back when the job ends, whatever way it ends."""

from __future__ import annotations

import gc
import weakref

import pytest

from src import collector
from src.train import train


def test_the_collector_is_paused_while_a_job_sets_up_and_given_everything_back_after():
    assert gc.isenabled() and gc.get_freeze_count() == 0
    with collector.setting_up() as set_up:
        assert not gc.isenabled()
        kept = Model()
        assert any(item is kept for item in gc.get_objects())
        set_up()
        assert gc.isenabled()
        assert not any(item is kept for item in gc.get_objects())  # Frozen: out of its sight.
    assert gc.isenabled() and gc.get_freeze_count() == 0
    assert any(item is kept for item in gc.get_objects())


class Model:
    """An object the collector tracks, as a job's model is."""

    itself: Model | None = None


def test_the_next_job_in_a_process_first_frees_what_the_last_one_left():
    with collector.setting_up() as set_up:
        model = Model()
        model.itself = model  # A cycle, as a Keras model has: only the collector frees it.
        left = weakref.ref(model)
        set_up()
    del model
    with collector.setting_up() as set_up:
        assert left() is None  # Not frozen again with this job's set-up.
        set_up()


def test_a_job_that_fails_while_setting_up_gives_the_collector_back():
    with pytest.raises(ValueError), collector.setting_up():
        raise ValueError("bad data")
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_a_user_who_turned_the_collector_off_keeps_it_off():
    gc.disable()
    try:
        with collector.setting_up() as set_up:
            set_up()
            assert not gc.isenabled()
        assert not gc.isenabled() and gc.get_freeze_count() == 0
    finally:
        gc.enable()


def test_a_trained_job_leaves_nothing_frozen(tiny_config):
    train(tiny_config("tracking.enabled=false"))
    assert gc.isenabled() and gc.get_freeze_count() == 0
