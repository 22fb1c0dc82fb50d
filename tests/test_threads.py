"""The pool of one-thread workers: order, errors, thread settings."""

from __future__ import annotations

import threading

import pytest
import torch

from mechprobe.stats.threads import map_one_thread, one_thread


def test_results_keep_the_items_order_and_run_on_workers():
    names: set[str] = set()

    def work(i: int) -> tuple[int, int]:
        names.add(threading.current_thread().name)
        return i, torch.get_num_threads()

    before = torch.get_num_threads()
    got = map_one_thread(work, range(20), workers=2)
    assert [i for i, _ in got] == list(range(20))
    assert {n for _, n in got} == {1}  # every call on one torch thread
    assert torch.get_num_threads() == before
    assert threading.main_thread().name not in names


def test_the_first_failing_items_error_is_raised_and_settings_restored():
    def work(i: int) -> int:
        if i in (3, 7):
            raise ValueError(f"item {i}")
        return i

    before = torch.get_num_threads()
    with pytest.raises(ValueError, match="item 3"):
        map_one_thread(work, range(10), workers=2)
    assert torch.get_num_threads() == before


def test_one_thread_restores_after_an_error():
    before = torch.get_num_threads()
    with pytest.raises(KeyError), one_thread():
        assert torch.get_num_threads() == 1
        raise KeyError("x")
    assert torch.get_num_threads() == before
