"""Deterministic, resumable, host-sliced input pipelines over random-access sources.

The trainer never iterates a stream whose position it cannot recover. Every batch is
a pure function of ``(seed, step)``:

* :class:`IndexSampler` maps a training step to the global indices of its batch: epoch
  ``e`` is a permutation drawn from ``np.random.default_rng([seed, e])``, step ``s``
  takes the ``s``-th window of the concatenated epochs. Resuming at step ``s`` is
  exact (same data order as an uninterrupted run) with no iterator state to save.
* Each host reads only its slice of every global batch (``process_index``-th of
  ``process_count`` contiguous chunks), which is what
  ``jax.make_array_from_process_local_data`` expects for a batch sharded on the
  leading axis.
* Per-example randomness (augmentation) gets ``np.random.default_rng([seed, step,
  position])``, again a pure function of where the example sits.
* :class:`BatchLoader` reads the steps' examples as a ``grain.MapDataset``, ahead and
  in order, in grain threads or grain worker processes. The order and host slicing
  are :class:`IndexSampler`'s and :func:`host_slice`'s, not grain's ``IndexSampler`` /
  ``ShardByJaxProcess`` (which shard records per process and draw another order): a
  step's batch is the same bit for bit whatever the threads or processes, and the
  resume state is ``(seed, step)``, nothing else.

* `jaxface.data.step_batches.StepBatches` serves whole global batches from a pure
  function of the step (rows gathered from arrays in memory): the trainer reads it like
  a `BatchLoader`, with no per-example work.

A *source* is anything with ``__len__`` and ``__getitem__(int) -> example dict``:
``tfds`` array_record data sources (``builder.as_data_source(split)``), or plain
in-memory arrays via :class:`ArraySource`.

Bad records: a source item that raises while being read or transformed is
replaced by the next readable index of the same split (wrapping), counted and
named in :attr:`BatchLoader.bad_records`; the epoch never dies for one bad file,
and nothing is dropped silently. ``max_bad_fraction`` bounds how much may be
replaced before the loader gives up with an error naming the records.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import logging
import threading
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

Example = Mapping[str, Any]
Transform = Callable[[Example, np.random.Generator], Mapping[str, np.ndarray]]


@functools.lru_cache(maxsize=4)
def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """Epoch order, computed once per epoch rather than once per step (read-only)."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    order.setflags(write=False)
    return order


@dataclasses.dataclass(frozen=True)
class IndexSampler:
    """Global batch indices for any step; a pure function of ``(seed, step)``.

    Attributes:
      num_records: size of the split.
      global_batch_size: examples per step summed over all hosts.
      seed: data-order seed.
      shuffle: permute each epoch (else sequential order, for evaluation).
    """

    num_records: int
    global_batch_size: int
    seed: int = 0
    shuffle: bool = True

    def __post_init__(self):
        if self.num_records <= 0:
            raise ValueError(f"IndexSampler: the split is empty (num_records={self.num_records})")
        if self.global_batch_size <= 0:
            raise ValueError(
                f"IndexSampler: global_batch_size must be positive, got {self.global_batch_size}"
            )

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_records)
        return _permutation(self.num_records, self.seed, epoch)

    def indices(self, step: int) -> np.ndarray:
        """int64 [global_batch_size]: record indices of step ``step`` (0-based)."""
        start = step * self.global_batch_size
        stop = start + self.global_batch_size
        first_epoch, last_epoch = start // self.num_records, (stop - 1) // self.num_records
        order = np.concatenate([self._epoch_order(e) for e in range(first_epoch, last_epoch + 1)])
        offset = first_epoch * self.num_records
        return order[start - offset : stop - offset].astype(np.int64)


def host_slice(global_indices: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
    """The contiguous part of a global batch that host ``process_index`` reads."""
    n = len(global_indices)
    if n % process_count:
        raise ValueError(f"global batch {n} is not divisible by process_count={process_count}")
    per = n // process_count
    return global_indices[process_index * per : (process_index + 1) * per]


class ArraySource:
    """A random-access source over a dict of equally long NumPy arrays."""

    def __init__(self, arrays: Mapping[str, np.ndarray]):
        lengths = {k: len(v) for k, v in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"ArraySource: arrays differ in length: {lengths}")
        self._arrays = dict(arrays)
        self._len = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {k: v[index] for k, v in self._arrays.items()}


def collate(examples: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stacks per-example dicts (identical keys and shapes) into a batch dict."""
    keys = examples[0].keys()
    out = {}
    for k in keys:
        try:
            out[k] = np.stack([np.asarray(e[k]) for e in examples])
        except ValueError as err:
            shapes = sorted({np.shape(e[k]) for e in examples})
            raise ValueError(
                f"collate: field {k!r} has differing shapes {shapes}; "
                "the task transform must produce fixed shapes"
            ) from err
    return out


class BadRecordError(RuntimeError):
    pass


class BatchLoader:
    """Host-local batches for consecutive steps: a grain pipeline.

    `dataset` is a ``grain.MapDataset`` whose element ``k`` is row ``k % per_host`` of
    this host's batch of step ``start + k // per_host`` (the host's slice of
    `IndexSampler.indices`, read and transformed with a generator keyed by ``(seed,
    step, position)``). `iterate` reads it ahead in ``num_workers`` grain threads
    (``grain.ReadOptions``: ``prefetch`` batches' worth of examples in flight, returned
    in order) and stacks each step's rows (`collate`). A batch depends on ``(seed,
    step)`` only: never on the worker count, on where iteration started, or on
    whether it came from `batch` or `iterate`.

    With ``processes > 0`` grain worker processes (``mp_prefetch``) read whole batches
    instead, each over its own ``make_data()``: past the GIL, which the transforms hold
    for much of their work (NumPy on small arrays, Python per example), at the cost of
    each process importing and building the task. ``benchmarks/loader.py`` measures
    both (examples/s per thread and per process, ``benchmarks/README.md``).

    Args:
      source: random-access source (``len`` + ``__getitem__``).
      sampler: :class:`IndexSampler` over ``len(source)``.
      transform: ``(example, rng) -> dict of fixed-shape arrays``.
      process_index, process_count: this host's slice of every global batch.
      num_workers: reader threads.
      prefetch: batches read ahead.
      max_bad_fraction: give up when more than this fraction of the records read
        so far had to be replaced.
      name: used in reports.
      processes: grain worker processes (``mp_prefetch``) instead of threads; 0: threads.
      make_data: ``() -> (source, transform)``, picklable, building in a worker process
        what ``source`` and ``transform`` are here (needed with ``processes``).
    """

    # Steps one `iterate` can run (grain datasets have a length): far beyond any run.
    HORIZON = 1 << 40

    def __init__(
        self,
        source,
        sampler: IndexSampler,
        transform: Transform,
        *,
        process_index: int = 0,
        process_count: int = 1,
        num_workers: int = 2,
        prefetch: int = 2,
        max_bad_fraction: float = 0.01,
        name: str = "train",
        processes: int = 0,
        make_data: Callable[[], tuple[Any, Transform]] | None = None,
    ):
        if processes and make_data is None:
            raise ValueError(f"{name}: worker processes need make_data (source, transform)")
        if len(source) != sampler.num_records:
            raise ValueError(
                f"{name}: sampler has {sampler.num_records} records, source {len(source)}"
            )
        self.source, self.sampler, self.transform = source, sampler, transform
        self.process_index, self.process_count = process_index, process_count
        self.num_workers = max(1, num_workers)
        self.prefetch = max(1, prefetch)
        self.max_bad_fraction = max_bad_fraction
        self.name = name
        self.bad_records: collections.Counter = collections.Counter()
        self.bad_reasons: dict[int, str] = {}
        self.records_read = 0
        self._lock = threading.Lock()
        self._iterators: list = []
        self.processes, self.make_data = max(0, int(processes)), make_data
        # Host indices of the steps being read (each example looks up its step's).
        self._host_indices = functools.lru_cache(maxsize=8)(self._host_indices_of)
        if sampler.global_batch_size % process_count:
            raise ValueError(
                f"global batch {sampler.global_batch_size} is not divisible by "
                f"process_count={process_count}"
            )
        self.per_host = sampler.global_batch_size // process_count

    def _read_one(self, index: int, rng_key: Sequence[int]) -> Mapping[str, np.ndarray]:
        n = len(self.source)
        for attempt in range(n):
            i = (int(index) + attempt) % n
            try:
                example = self.source[i]
                out = self.transform(example, np.random.default_rng(list(rng_key)))
            except Exception as err:  # pylint: disable=broad-except
                with self._lock:
                    self.bad_records[i] += 1
                    self.bad_reasons.setdefault(i, f"{type(err).__name__}: {err}")
                    self.records_read += 1
                    too_many = len(self.bad_records) > max(
                        1, self.max_bad_fraction * max(self.records_read, 1)
                    )
                logging.warning(
                    "%s: record %d unreadable (%s); using record %d instead",
                    self.name,
                    i,
                    err,
                    (i + 1) % n,
                )
                if too_many:
                    raise BadRecordError(self.report()) from err
                continue
            with self._lock:
                self.records_read += 1
            return out
        raise BadRecordError(f"{self.name}: no record of the split is readable. {self.report()}")

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """The host-local batch of ``step`` (read in the calling thread)."""
        first = int(step) * self.per_host
        return collate([self._example(first + j) for j in range(self.per_host)])

    def _host_indices_of(self, step: int) -> np.ndarray:
        return host_slice(self.sampler.indices(step), self.process_index, self.process_count)

    def _example(self, position: int) -> Mapping[str, np.ndarray]:
        """Example ``position = step * per_host + j``: row ``j`` of the host batch of ``step``."""
        step, j = divmod(int(position), self.per_host)
        index = self._host_indices(step)[j]
        return self._read_one(
            index, (self.sampler.seed, step, self.process_index * self.per_host + j)
        )

    def dataset(self, start_step: int = 0):
        """``grain.MapDataset`` of this host's examples of steps ``start_step, ...`` in
        order (``per_host`` per step); element ``k`` is row ``k % per_host`` of the batch
        of step ``start_step + k // per_host``."""
        import grain  # pylint: disable=import-outside-toplevel

        first = start_step * self.per_host
        return grain.MapDataset.range(first, first + self.HORIZON * self.per_host).map(
            self._example
        )

    def iterate(self, start_step: int) -> Iterator[dict[str, np.ndarray]]:
        """Batches of steps ``start_step, start_step + 1, ...`` with read-ahead."""
        import grain  # pylint: disable=import-outside-toplevel

        if self.processes:
            return self._iterate_processes(start_step)
        options = grain.ReadOptions(
            num_threads=self.num_workers, prefetch_buffer_size=self.prefetch * self.per_host
        )
        ds = (
            self.dataset(start_step).to_iter_dataset(options).batch(self.per_host, batch_fn=collate)
        )
        it = iter(ds)
        self._iterators.append(it)
        return it

    def _iterate_processes(self, start_step: int) -> Iterator[dict[str, np.ndarray]]:
        """`iterate` in ``processes`` grain worker processes (``mp_prefetch``): process
        ``k`` reads the whole batches of steps ``start + k, start + k + processes, ...``
        (its own source and transform from ``make_data()``; the task objects themselves
        do not pickle), returned in step order; the records each replaced are counted
        here."""
        import grain  # pylint: disable=import-outside-toplevel
        from absl import flags  # pylint: disable=import-outside-toplevel

        if not flags.FLAGS.is_parsed():  # grain's worker processes read its absl flags
            flags.FLAGS.mark_as_parsed()
        reader = _StepReader(self)
        ds = (
            grain.MapDataset.range(start_step, start_step + self.HORIZON)
            .map(reader)
            .to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=1))
            .mp_prefetch(
                grain.MultiprocessingOptions(
                    num_workers=self.processes,
                    per_worker_buffer_size=max(1, -(-self.prefetch // self.processes)),
                )
            )
        )
        it = iter(ds)
        self._iterators.append(it)
        for batch, replaced, reads in it:
            with self._lock:
                self.records_read += reads
                for i, reason in replaced:
                    self.bad_records[i] += 1
                    self.bad_reasons.setdefault(i, reason)
                too_many = len(self.bad_records) > max(
                    1, self.max_bad_fraction * max(self.records_read, 1)
                )
            if too_many:
                raise BadRecordError(self.report())
            yield batch

    def report(self) -> str:
        """A human-readable account of replaced records (empty when none)."""
        if not self.bad_records:
            return ""
        return _bad_record_report(
            self.name, len(self.bad_records), "replaced", self.records_read, self.bad_reasons
        )

    def close(self):
        for it in self._iterators:
            close = getattr(it, "close", None)
            if close is not None:
                close()
        self._iterators.clear()


class _StepReader:
    """step -> ``(host batch, [(record, reason) replaced], records read)`` in a grain
    worker process, through a one-thread `BatchLoader` over ``make_data()`` built there
    on first use: the same `BatchLoader.batch` as in the main process."""

    def __init__(self, loader: BatchLoader):
        self.make_data, self.sampler = loader.make_data, loader.sampler
        self.process_index, self.process_count = loader.process_index, loader.process_count
        self.max_bad_fraction, self.name = loader.max_bad_fraction, loader.name
        self._loader = None

    def __getstate__(self):
        return {**self.__dict__, "_loader": None}

    def __call__(self, step: int):
        if self._loader is None:
            source, transform = self.make_data()
            self._loader = BatchLoader(
                source,
                self.sampler,
                transform,
                process_index=self.process_index,
                process_count=self.process_count,
                num_workers=1,
                max_bad_fraction=self.max_bad_fraction,
                name=self.name,
            )
        loader = self._loader
        seen, read = collections.Counter(loader.bad_records), loader.records_read
        batch = loader.batch(step)
        replaced = [
            (i, loader.bad_reasons.get(i, ""))
            for i, c in loader.bad_records.items()
            for _ in range(c - seen[i])
        ]
        return batch, replaced, loader.records_read - read


def _bad_record_report(name, count, verb, records_read, reasons, shown=50) -> str:
    """``<name>: N unreadable record(s) <verb> out of M read:`` and the first ``shown``
    records with their reasons."""
    lines = [f"{name}: {count} unreadable record(s) {verb} out of {records_read} read:"]
    for i in sorted(reasons)[:shown]:
        lines.append(f"  record {i}: {reasons[i]}")
    if len(reasons) > shown:
        lines.append(f"  ... and {len(reasons) - shown} more")
    return "\n".join(lines)


class EvalSkips:
    """Records an evaluation pass could not read, by source index, each named.

    Given to `eval_batches` (or ``jaxface.tasks.common.predict_split``), a record that
    raises while being read or transformed is skipped: its row is padding
    (``_valid = False``), it is named in `bad` and logged. More than
    ``max_bad_fraction`` of the records read (at least one is always allowed) is a
    `BadRecordError` naming them: an evaluation on a mostly unreadable set is no result.
    """

    def __init__(self, name: str = "eval", max_bad_fraction: float = 0.01):
        self.name = name
        self.max_bad_fraction = max_bad_fraction
        self.bad: dict[int, str] = {}
        self.records_read = 0

    def __len__(self) -> int:
        return len(self.bad)

    def report(self) -> str:
        """A human-readable account of skipped records (empty when none)."""
        if not self.bad:
            return ""
        return _bad_record_report(self.name, len(self.bad), "skipped", self.records_read, self.bad)


def record_name(source, index: int) -> str:
    """``record <i>``, with the source's name for it when it has ``names`` (file paths)."""
    names = getattr(source, "names", None)
    if names is not None and 0 <= index < len(names):
        return f"record {index} ({names[index]})"
    return f"record {index}"


def eval_batches(
    source,
    batch_size: int,
    transform: Transform,
    *,
    process_index: int = 0,
    process_count: int = 1,
    limit: int | None = None,
    seed: int = 0,
    num_workers: int = 2,
    skips: EvalSkips | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """One pass over a split in fixed-size batches, padded, with a ``_valid`` mask and
    ``_global_index`` (the source index of every row of the global batch; host-side only).

    The last batch is padded by repeating its first example and marking the padding
    ``_valid = False``, so one compiled evaluation step serves every batch. Each host
    reads its contiguous slice of each global batch.

    A record that raises while read or transformed is a `BadRecordError` naming it
    (index and, for sources with ``names``, the file); with ``skips`` it is skipped
    instead (see `EvalSkips`).
    """
    n = len(source) if limit is None else min(limit, len(source))
    if n == 0:
        raise ValueError("eval_batches: empty split")
    per_host = batch_size // process_count
    name = skips.name if skips is not None else "eval"
    filler = []  # a readable example, for rows of skipped records

    def read(i):
        i = int(i)
        try:
            return transform(source[i], np.random.default_rng([seed, i]))
        except Exception as err:  # pylint: disable=broad-except
            what = f"{record_name(source, i)}: {type(err).__name__}: {err}"
            if skips is None:
                raise BadRecordError(f"{name}: unreadable {what}") from err
            return what

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, num_workers))
    try:
        for start in range(0, n, batch_size):
            gidx = np.arange(start, start + batch_size)
            valid = gidx < n
            gidx = np.where(valid, gidx, start)
            lo = process_index * per_host
            idx, val = gidx[lo : lo + per_host], valid[lo : lo + per_host].copy()
            exs = list(pool.map(read, idx))
            if skips is not None:
                skips.records_read += int(val.sum())
                for k, (i, ex) in enumerate(zip(idx, exs)):
                    if isinstance(ex, str):
                        if val[k] and int(i) not in skips.bad:
                            skips.bad[int(i)] = ex
                            logging.warning("%s: skipped %s", name, ex)
                        val[k] = False
                if len(skips.bad) > max(1, skips.max_bad_fraction * skips.records_read):
                    raise BadRecordError(skips.report())
                good = [ex for ex in exs if not isinstance(ex, str)]
                if good:
                    filler[:] = good[:1]
                elif not filler:
                    filler.append(_first_readable(source, n, read))
                exs = [filler[0] if isinstance(ex, str) else ex for ex in exs]
            batch = collate(exs)
            batch["_valid"] = val
            batch["_global_index"] = gidx
            yield batch
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _first_readable(source, n: int, read):
    for i in range(n):
        ex = read(i)
        if not isinstance(ex, str):
            return ex
    raise BadRecordError(f"no record of the {n} is readable")
