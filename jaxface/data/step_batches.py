"""Whole training batches from a pure function of the step (`StepBatches`): for tasks
whose training examples are rows of arrays held in memory (e.g. DREAM stitching on cached
stem features), where `jaxface.data.pipeline.BatchLoader`'s per-example reads and
transforms would cost more than the step itself."""

from __future__ import annotations

from typing import Callable, Iterator, Mapping

import numpy as np

from jaxface.data.pipeline import IndexSampler, host_slice

__all__ = ["StepBatches"]


class StepBatches:
    """Host-local batches from ``make(step) -> dict of [global_batch, ...] arrays``, a pure
    function of the step (vectorised: no per-example transform). It offers what the
    trainer reads of a `BatchLoader`: `batch`, `iterate`, ``sampler`` (its
    ``num_records`` counts the records of one epoch), `report` and `close`.

    Args:
      make: the global batch of a step (each field's leading axis ``global_batch_size``).
      sampler: the :class:`IndexSampler` ``make`` draws its rows from (epoch accounting).
      process_index, process_count: this host's slice of every global batch.
    """

    def __init__(
        self,
        make: Callable[[int], Mapping[str, np.ndarray]],
        sampler: IndexSampler,
        *,
        process_index: int = 0,
        process_count: int = 1,
    ):
        if sampler.global_batch_size % process_count:
            raise ValueError(
                f"global batch {sampler.global_batch_size} is not divisible by "
                f"process_count={process_count}"
            )
        self.make, self.sampler = make, sampler
        self.process_index, self.process_count = process_index, process_count

    def batch(self, step: int) -> dict[str, np.ndarray]:
        out = {}
        for k, v in self.make(int(step)).items():
            v = np.asarray(v)
            if len(v) != self.sampler.global_batch_size:
                raise ValueError(
                    f"StepBatches: field {k!r} has {len(v)} rows, expected "
                    f"{self.sampler.global_batch_size}"
                )
            out[k] = host_slice(v, self.process_index, self.process_count)
        return out

    def iterate(self, start_step: int) -> Iterator[dict[str, np.ndarray]]:
        step = int(start_step)
        while True:
            yield self.batch(step)
            step += 1

    def report(self) -> str:
        return ""

    def close(self):
        pass
