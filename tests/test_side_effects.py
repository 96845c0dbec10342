"""Library calls leave process-wide state alone: torch's global generator and its thread count.

Both are shared by every thread of the process. A library that reseeds the generator makes its caller's "random"
draws repeat; one that sets the thread count, even if it puts it back afterwards, changes it under every other
thread running torch meanwhile (a Dask worker's other tasks, a notebook's background widget).
"""
import threading

import pytest
import torch

from netmoments.data import load_mnist
from netmoments.linearize import TwoStageLinearization, affine_linearize, two_stage_linearize
from netmoments.models import load_lenet


@pytest.fixture(scope="module")
def digits():
    images, _ = load_mnist("test")
    return images[:3]


def _global_state():
    return torch.get_num_threads(), torch.random.get_rng_state()


def _assert_unchanged(before):
    threads, rng = before
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.random.get_rng_state(), rng), "torch's global generator moved"


def test_loading_data_and_the_shipped_lenet_leaves_the_generator_and_threads_alone():
    torch.manual_seed(7)
    before = _global_state()
    load_lenet()
    load_mnist("test")
    _assert_unchanged(before)


def _in_a_new_thread(fn):
    out = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    thread.join()
    return out[0]


def _thread_counts_seen_by(model) -> tuple[list, list]:
    """(a list the model's layers append to whenever they run, their hook handles).

    Each entry is (torch's thread count on the calling thread, on a thread started there). With OpenMP a
    thread reads its own setting, which it copies from the process-wide one when it first uses torch: a switch
    shows up in the caller, and in every thread that starts while it lasts, keeping the switched value for good.
    """
    seen = []

    def hook(*_):
        seen.append((torch.get_num_threads(), _in_a_new_thread(torch.get_num_threads)))

    return seen, [layer.register_forward_hook(hook) for layer in model]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batched", [False, True], ids=["one digit", "three digits"])
def test_linearizing_the_shipped_lenet_never_changes_the_generator_or_thread_count(digits, threads, batched):
    # two torch threads, so that a library switching to one thread (even for a moment) is seen; conftest.py
    # puts the caller's count back after the test
    torch.set_num_threads(2)
    model = load_lenet()
    point = digits if batched else digits[0]
    seen, handles = _thread_counts_seen_by(model)
    before = _global_state()
    try:
        net = two_stage_linearize(model, point, threads=threads)
        lin = TwoStageLinearization(model, digits, threads=threads)
        lin.update(digits.flip(-1))
        affine_linearize(model, point, threads=threads)
    finally:
        for handle in handles:
            handle.remove()
    _assert_unchanged(before)
    assert seen and set(seen) == {(2, 2)}, f"(caller's, new thread's) thread counts while the layers ran: {set(seen)}"
    assert net.A.shape[-2:] == (1024, 784)


@pytest.mark.parametrize("threads, error", [(0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError),
                                            ("2", TypeError)])
def test_threads_must_be_a_positive_int(digits, threads, error):
    model = load_lenet()
    with pytest.raises(error, match="threads"):
        two_stage_linearize(model, digits[0], threads=threads)
    with pytest.raises(error, match="threads"):
        affine_linearize(model, digits[0], threads=threads)
