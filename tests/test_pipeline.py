"""Deterministic, resumable, host-sliced input pipeline."""

import numpy as np
import pytest

from jaxface.data import pipeline


def test_sampler_is_a_pure_function_of_step_and_covers_each_epoch():
    s = pipeline.IndexSampler(num_records=10, global_batch_size=4, seed=3)
    steps = [s.indices(i) for i in range(5)]  # 20 indices = 2 epochs exactly
    flat = np.concatenate(steps)
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert not np.array_equal(flat[:10], flat[10:])  # each epoch reshuffled
    again = pipeline.IndexSampler(num_records=10, global_batch_size=4, seed=3)
    for i in (4, 0, 2):  # any order, any start: same batches
        np.testing.assert_array_equal(again.indices(i), steps[i])
    other = pipeline.IndexSampler(num_records=10, global_batch_size=4, seed=4)
    assert not np.array_equal(np.concatenate([other.indices(i) for i in range(3)]), flat[:12])


def test_unshuffled_sampler_is_sequential():
    s = pipeline.IndexSampler(num_records=5, global_batch_size=3, shuffle=False)
    np.testing.assert_array_equal(
        np.concatenate([s.indices(i) for i in range(3)]), [0, 1, 2, 3, 4, 0, 1, 2, 3]
    )


def test_host_slices_partition_the_global_batch():
    g = np.arange(12) * 7
    parts = [pipeline.host_slice(g, p, 4) for p in range(4)]
    np.testing.assert_array_equal(np.concatenate(parts), g)
    with pytest.raises(ValueError, match="not divisible"):
        pipeline.host_slice(g, 0, 5)


def _source(n=16):
    return pipeline.ArraySource({"x": np.arange(n, dtype=np.float32)[:, None], "y": np.arange(n)})


def _identity(example, rng):
    return {"x": example["x"] + 0 * rng.random(), "y": example["y"]}


def test_loader_batches_match_sampler_and_hosts_split_the_work():
    src = _source()
    sampler = pipeline.IndexSampler(len(src), 8, seed=1)
    full = pipeline.BatchLoader(src, sampler, _identity)
    it = full.iterate(2)
    b2, b3 = next(it), next(it)
    np.testing.assert_array_equal(b2["y"], sampler.indices(2))
    np.testing.assert_array_equal(b3["y"], sampler.indices(3))
    hosts = [
        pipeline.BatchLoader(src, sampler, _identity, process_index=p, process_count=2)
        for p in range(2)
    ]
    np.testing.assert_array_equal(np.concatenate([h.batch(3)["y"] for h in hosts]), b3["y"])
    for loader in hosts + [full]:
        loader.close()


def test_augmentation_rng_depends_only_on_position():
    src = _source()
    sampler = pipeline.IndexSampler(len(src), 4, seed=0)
    noisy = lambda ex, rng: {"x": ex["x"] + rng.random()}
    a = pipeline.BatchLoader(src, sampler, noisy).batch(5)["x"]
    b = pipeline.BatchLoader(src, sampler, noisy, num_workers=1).batch(5)["x"]
    np.testing.assert_array_equal(a, b)


class _Flaky(pipeline.ArraySource):
    def __init__(self, bad):
        super().__init__({"y": np.arange(40)})
        self.bad = set(bad)

    def __getitem__(self, i):
        if i in self.bad:
            raise OSError(f"truncated image file #{i}")
        return super().__getitem__(i)


def test_bad_records_are_replaced_counted_and_named():
    src = _Flaky(bad={5})
    sampler = pipeline.IndexSampler(len(src), 40, shuffle=False)
    loader = pipeline.BatchLoader(src, sampler, lambda ex, rng: dict(ex), max_bad_fraction=0.1)
    batch = loader.batch(0)
    assert len(batch["y"]) == 40  # the epoch goes on
    assert list(batch["y"]).count(6) == 2  # record 5 replaced by the next readable one
    assert loader.bad_records[5] == 1
    assert "record 5" in loader.report() and "truncated image file #5" in loader.report()


def test_too_many_bad_records_is_an_error():
    src = _Flaky(bad=set(range(0, 40, 2)))
    sampler = pipeline.IndexSampler(len(src), 40, shuffle=False)
    loader = pipeline.BatchLoader(src, sampler, lambda ex, rng: dict(ex), max_bad_fraction=0.05)
    with pytest.raises(pipeline.BadRecordError, match="unreadable"):
        loader.batch(0)


def test_iterated_batches_equal_direct_batches_for_any_start_and_workers():
    """The grain read-ahead path gives `batch(step)` bit for bit: start and threads
    change nothing (the resume contract)."""
    src = _source(20)
    sampler = pipeline.IndexSampler(len(src), 6, seed=2)
    noisy = lambda ex, rng: {"x": ex["x"] + rng.random(), "y": ex["y"]}
    ref = pipeline.BatchLoader(src, sampler, noisy)
    want = [ref.batch(s) for s in range(9)]
    for workers, start in ((1, 0), (2, 3), (4, 7)):
        loader = pipeline.BatchLoader(src, sampler, noisy, num_workers=workers, prefetch=3)
        it = loader.iterate(start)
        for s in range(start, 9):
            got = next(it)
            for k in want[s]:
                assert got[k].tobytes() == want[s][k].tobytes(), (workers, start, s, k)
        loader.close()


def test_bad_records_replaced_and_fatal_through_iterate():
    src = _Flaky(bad={5})
    sampler = pipeline.IndexSampler(len(src), 40, shuffle=False)
    loader = pipeline.BatchLoader(src, sampler, lambda ex, rng: dict(ex), max_bad_fraction=0.1)
    batch = next(loader.iterate(0))
    # Read ahead, step 1 (the same 40 records) may have met record 5 again already.
    assert list(batch["y"]).count(6) == 2 and loader.bad_records[5] >= 1
    assert "truncated image file #5" in loader.report()
    loader.close()
    bad = _Flaky(bad=set(range(0, 40, 2)))
    loader = pipeline.BatchLoader(bad, sampler, lambda ex, rng: dict(ex), max_bad_fraction=0.05)
    with pytest.raises(pipeline.BadRecordError, match="unreadable"):
        next(loader.iterate(0))
    loader.close()


def _flaky_data():
    return _Flaky(bad={5}), _noisy


def _noisy(ex, rng):
    return {"y": ex["y"], "x": np.float32(ex["y"]) + rng.random()}


def test_worker_processes_give_the_same_batches_and_count_replaced_records():
    """grain worker processes (``processes=2``): the threads' batches bit for bit, from
    any start, and the records they replaced counted and named in the main process."""
    import sys

    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # for the spawned workers
    src, transform = _flaky_data()
    sampler = pipeline.IndexSampler(len(src), 8, seed=4)
    ref = pipeline.BatchLoader(src, sampler, transform, max_bad_fraction=0.5)
    loader = pipeline.BatchLoader(
        src, sampler, transform, max_bad_fraction=0.5, processes=2, make_data=_flaky_data
    )
    it = loader.iterate(3)
    for s in range(3, 9):
        got, want = next(it), ref.batch(s)
        for k in want:
            assert got[k].tobytes() == want[k].tobytes(), (s, k)
    loader.close()
    assert loader.bad_records[5] >= 1 and "truncated image file #5" in loader.report()
    assert loader.records_read == 6 * 8 + sum(loader.bad_records.values())
    with pytest.raises(ValueError, match="make_data"):
        pipeline.BatchLoader(src, sampler, transform, processes=1)


def test_eval_batches_pad_and_mask():
    src = _source(10)
    batches = list(pipeline.eval_batches(src, 4, _identity))
    assert [b["_valid"].sum() for b in batches] == [4, 4, 2]
    ys = np.concatenate([b["y"][b["_valid"]] for b in batches])
    np.testing.assert_array_equal(ys, np.arange(10))
