"""Class-balanced training batches of the ``attributes`` task (LMLE's sampling).

LMLE draws every batch equally from each class and cluster. The trainer reads training
data through `pipeline.IndexSampler` over ``len(source)``; for ``lmle`` /
``triplet_knn`` (``config.balanced_sampling``) the training source is a
:class:`ClassBalancedSource`, a *virtual* source of ``num_train_steps * batch_size``
records: the trainer's sampler permutes that range once, so virtual record ``v`` sits at
one known global position ``p`` of the run, i.e. step ``p // B``, slot ``p % B``; the
source returns slot ``p % B`` of the balanced batch of that step, drawn by
`BalancedQuintupletSampler` (attributes round-robin, attribute ``step mod 40``: half the
batch from each of its classes). Every batch is therefore a pure function of ``(seed,
step)``, and resumption stays exact. Cluster balance is applied inside the step
(`jaxface.tasks.attributes_lmle.balanced_anchor_weights`).
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from jaxface import ops
from jaxface.data import pipeline

# A virtual balanced source longer than this wraps (see ClassBalancedSource).
MAX_VIRTUAL_RECORDS = 1 << 22


class ClassBalancedSource:
    """A virtual training source whose record ``v`` is a slot of a class-balanced batch.

    The trainer draws indices with ``pipeline.IndexSampler(len(self), batch_size, seed)``.
    Its first epoch is one permutation ``perm`` of ``range(len(self))``; with ``len(self)
    = num_steps * batch_size`` the run reads exactly that epoch, step ``s`` reading
    ``perm[s*B:(s+1)*B]``. So the inverse permutation tells, for a requested ``v``, its
    step and slot; the record returned is that slot of
    ``BalancedQuintupletSampler(labels, 0, batch_size, seed).batch(step)``. Reading
    ``IndexSampler`` through the public API only (``indices(0)`` of a sampler whose batch
    is the whole epoch) keeps the two in step. Longer runs than ``MAX_VIRTUAL_RECORDS /
    batch_size`` steps wrap into later epochs of other permutations; a batch then mixes
    slots of several balanced batches (still class-balanced in expectation, no longer per
    step), which is logged.

    Args:
      source: the real training source. labels: ``[N, A]`` {0, 1} of its records.
      batch_size: the global batch size. seed: the run's seed. num_steps: the run length.
      tag_attribute: add ``balanced_for`` (the attribute the record's batch is balanced
        for) to every record, for losses that apply only on their own balanced batches.
      attributes: optional attribute indices: the round-robin visits only these
        (attribute ``attributes[step mod len(attributes)]`` at a step); None: all.
    """

    def __init__(
        self,
        source,
        labels,
        *,
        batch_size: int,
        seed: int,
        num_steps: int,
        tag_attribute: bool = False,
        attributes=None,
    ):
        labels = np.asarray(labels)
        self.attributes = (
            np.arange(labels.shape[1]) if attributes is None else np.asarray(attributes, int)
        )
        if (
            self.attributes.size == 0
            or not ((self.attributes >= 0) & (self.attributes < labels.shape[1])).all()
        ):
            raise ValueError(
                f"attributes={list(self.attributes)}: expected indices in [0, {labels.shape[1]})"
            )
        if labels.shape[0] != len(source):
            raise ValueError(f"labels for {labels.shape[0]} records, source has {len(source)}")
        self.source, self.batch_size = source, int(batch_size)
        self.tag_attribute = bool(tag_attribute)
        total = int(num_steps) * self.batch_size
        cap = (MAX_VIRTUAL_RECORDS // self.batch_size) * self.batch_size
        self.length = max(self.batch_size, min(total, cap))
        if total > self.length:
            logging.warning(
                "ClassBalancedSource: %d steps x %d exceed %d virtual records; later "
                "batches mix slots of several balanced batches",
                num_steps,
                batch_size,
                self.length,
            )
        perm = pipeline.IndexSampler(self.length, self.length, seed=int(seed)).indices(0)
        self.position = np.empty(self.length, np.int64)
        self.position[perm] = np.arange(self.length)
        sub = labels[:, self.attributes]
        self.sampler = ops.BalancedQuintupletSampler(
            sub, np.zeros_like(sub), batch_size=self.batch_size, seed=int(seed)
        )
        self._cache: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def __len__(self):
        return self.length

    def batch_indices(self, step: int) -> np.ndarray:
        """The real record indices of the balanced batch of ``step``."""
        with self._lock:
            if step not in self._cache:
                if len(self._cache) > 64:
                    self._cache.pop(min(self._cache))
                self._cache[step] = self.sampler.batch(step)[1]
            return self._cache[step]

    def record_index(self, v: int) -> int:
        step, slot = divmod(int(self.position[int(v)]), self.batch_size)
        return int(self.batch_indices(step)[slot])

    def balanced_for(self, v: int) -> int:
        """The attribute the batch of virtual record ``v`` is balanced for."""
        step = int(self.position[int(v)]) // self.batch_size
        return int(self.attributes[step % self.sampler.num_attributes])

    def __getitem__(self, v):
        record = self.source[self.record_index(v)]
        if self.tag_attribute:
            record = dict(record)
            record["balanced_for"] = np.int32(self.balanced_for(v))
        return record
