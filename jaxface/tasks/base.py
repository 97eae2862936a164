"""The task plug-in interface of the one trainer (`jaxface.train`).

A task is a model + data + loss + predict functions + evaluators. The trainer owns everything else:
the mesh, the sharded train state, the jitted step with donated state, the
optimizer, metrics, writers, checkpoints, resumption and preemption. A new task is
a new module in `jaxface/tasks/` registered with :func:`jaxface.tasks.register`
and a config in `configs/`; it never copies the trainer.

Contract (all arrays are host NumPy on the way in; everything inside `loss` and
`predict` must be pure and jit-able with fixed shapes):

* ``data(split, train)`` -> ``(source, transform)``: a random-access source
  (``len`` + ``__getitem__``) and a per-example ``transform(example, rng)`` that
  returns a dict of fixed-shape NumPy arrays (see `jaxface.data.pipeline`).
* ``train_batches(split, global_batch, seed, process_index, process_count)``: optional
  whole training batches (`jaxface.data.step_batches.StepBatches`) instead of ``data``'s
  per-example pipeline, for a task whose training examples are rows of arrays it holds
  in memory (e.g. DREAM stitching on cached stem features); default None.
* ``init_from_optional(params)``: optional parameter paths a ``config.init_from``
  checkpoint may lack; they then keep their initialisation (default none).
* ``init_variables(rng, batch)`` -> flax variables ``{"params": ..., <collections>}``.
* ``loss(params, model_state, batch, rng, task_state)`` ->
  ``(scalar_loss, (new_model_state, metrics))`` with ``metrics`` a dict of scalars
  averaged over steps by the trainer (``clu.metrics.Average``).
* ``compute_fields``: the batch fields the trainer casts to ``config.compute_dtype``
  (the image inputs); ``loss`` promotes logits to fp32 before any softmax,
  log-sum-exp, margin or sigmoid and returns an fp32 loss (`jaxface.train`).
* ``param_partition(params)``: optional `PartitionSpec` per parameter over the mesh's
  ``model`` axis (default replicated).
* ``predict_fns()`` -> ``{name: predict_fn(variables, batch) -> dict of arrays}``: the
  task's jitted pure inference functions (embeddings, detections, attribute scores), on
  flax variables ``{"params": ..., <model state>}``.
* ``evaluators()`` -> ``{name: Evaluator}``, built from the config; which of them run is
  chosen by ``config.evals`` (a list of names). An `Evaluator` names the predict
  function it needs and reads its own data; ``run(predict_fn, variables, ctx)`` returns
  ``(metrics, artefacts)``: a dict of scalars and a dict of `Artefact` (figures, images,
  text, JSON, arrays, folders) by path relative to the workdir, which the caller writes
  (`jaxface.training.eval_writer`). An evaluator writes no file itself.
* ``load_pretrained(params, model_state)``: optional pretrained weights (e.g. a
  torchvision backbone) that the trainer puts into a run that starts with neither a
  checkpoint nor ``config.init_from``; ``fresh_collections``: model-state collections
  that ``config.init_from`` leaves at their initial value (buffers, not weights).
* ``init_task_state(...)`` / ``hooks()``: optional non-gradient state (e.g. LMLE's
  cluster assignments) and periodic host-side hooks ``(state, ctx) -> state`` run
  every ``every_steps`` (e.g. re-clustering), each timed and reported. Like
  ``init_variables``, ``init_task_state`` reads no data (loading a checkpoint builds
  the state first); what the data decides is set by a hook ``at_start``.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, Mapping

import jax
import ml_collections
import numpy as np

from jaxface.models import pretrained as pretrained_lib


@dataclasses.dataclass
class Hook:
    """A host-side action ``fn(state, ctx) -> state``: every ``every_steps`` steps (0:
    never periodically) and, with ``at_start``, once before the first step of a fresh run."""

    name: str
    every_steps: int
    fn: Callable[[Any, "EvalContext"], Any]
    at_start: bool = False


# ---------------------------------------------------------------------------------
# Artefacts: what an evaluator hands back for its caller to write. The key of each is
# its path relative to the workdir; ``{step}`` in it is the evaluated step.
# ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Figure:
    """A plot: ``draw(path)`` writes it (the PNG writers of `jaxface.evaluation`)."""

    draw: Callable[[str], Any]


@dataclasses.dataclass(frozen=True)
class Images:
    """``pixels`` uint8 ``[N, H, W, 3]``: one PNG of the N images side by side, and the
    batch logged to TensorBoard under ``tag`` when the caller has a metric writer."""

    pixels: np.ndarray
    tag: str


@dataclasses.dataclass(frozen=True)
class Json:
    """A JSON document (``json.dump`` with ``indent=1``)."""

    payload: Any


@dataclasses.dataclass(frozen=True)
class Text:
    text: str


@dataclasses.dataclass(frozen=True)
class Arrays:
    """Named NumPy arrays, written as one ``.npz``."""

    arrays: Mapping[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Folder:
    """A folder of files: ``write(path)`` fills it (e.g. WIDER prediction files)."""

    write: Callable[[str], Any]


Artefact = Figure | Images | Json | Text | Arrays | Folder
Artefacts = dict[str, Artefact]


@dataclasses.dataclass
class EvalContext:
    """What the trainer hands evaluators and hooks."""

    mesh: jax.sharding.Mesh
    workdir: str
    step: int
    process_index: int
    process_count: int
    writer: Any = None

    @property
    def batch_sharding(self):
        return jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec("data"))

    @property
    def replicated(self):
        return jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())

    def to_global(self, batch: Mapping[str, np.ndarray]):
        """Host-local batch -> global jax arrays sharded on the leading (data) axis."""
        sharding = self.batch_sharding
        return {
            k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in batch.items()
        }


@dataclasses.dataclass(frozen=True)
class Evaluator:
    """One evaluator of ``config.evals``: ``run(predict_fn, variables, ctx) -> (metrics,
    artefacts)`` with ``predict_fn = task.predict_fns()[predict]``."""

    predict: str
    run: Callable[[Callable, Mapping[str, Any], EvalContext], tuple[dict[str, float], Artefacts]]


class Task(abc.ABC):
    """Base class of every task plug-in; see the module docstring for the contract."""

    name: str = ""
    #: Batch fields cast to ``config.compute_dtype`` inside the train step (the model's
    #: image inputs); every other field keeps its dtype. See `jaxface.train`'s precision
    #: contract.
    compute_fields: tuple[str, ...] = ()
    #: Model-state collections that are buffers, not weights (e.g. LMLE's mining pool):
    #: ``config.init_from`` does not read them, a run starts them fresh.
    fresh_collections: tuple[str, ...] = ()

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        #: The trainer's ``("data", "model")`` mesh, set by the trainer before any step is
        #: traced (losses that run collectives over it, e.g. a class-sharded classifier,
        #: need it); None outside training.
        self.mesh: jax.sharding.Mesh | None = None
        self._predict_fns: dict[str, Callable] | None = None

    # -- data -----------------------------------------------------------------
    @abc.abstractmethod
    def data(self, split: str, *, train: bool):
        """(source, transform) for a split."""

    def train_batches(
        self, split: str, global_batch: int, seed: int, process_index: int, process_count: int
    ):
        """Whole training batches (a `jaxface.data.step_batches.StepBatches`) or None (the
        trainer then reads ``data(split, train=True)`` per example)."""
        del split, global_batch, seed, process_index, process_count
        return None

    def init_from_optional(self, params) -> tuple[tuple[str, ...], ...]:
        """Top-level-first key paths into ``params`` that a ``config.init_from`` checkpoint
        may lack (kept at their initialisation then)."""
        del params
        return ()

    # -- model ----------------------------------------------------------------
    def example_batch(self, batch_size: int = 1) -> dict[str, np.ndarray]:
        """Zeros shaped like a batch of ``batch_size`` examples with every field
        ``init_variables`` reads, from the config alone: loading a model needs no data.
        Default: ``image`` float32 ``[B, S, S, 3]``, ``S = config.image_size``."""
        s = int(self.config.image_size)
        return {"image": np.zeros((batch_size, s, s, 3), np.float32)}

    @abc.abstractmethod
    def init_variables(self, rng: jax.Array, batch: Mapping[str, jax.Array]) -> Mapping[str, Any]:
        """Flax variables for a (global) example batch."""

    @abc.abstractmethod
    def loss(self, params, model_state, batch, rng, task_state):
        """Scalar loss and ``(new_model_state, metrics)``."""

    #: Where the ResNet sits in the params (e.g. ``("resnet",)``) for a torchvision file
    #: named by ``pretrained`` (``config.model.backbone.pretrained``); None: no backbone.
    backbone_path: tuple[str, ...] | None = None
    pretrained: str = ""

    def load_pretrained(self, params, model_state):
        """Pretrained weights for a fresh run: ``(params, model_state, description)``, the
        given trees (same structure, shapes and dtypes) with some leaves replaced by
        host arrays, or None (nothing to load). Default: the torchvision ResNet file
        ``self.pretrained`` into the params at ``backbone_path``
        (`jaxface.models.pretrained.load_backbone`)."""
        if not self.pretrained or self.backbone_path is None:
            return None
        params, model_state = pretrained_lib.load_backbone(
            params,
            model_state,
            self.backbone_path,
            self.pretrained,
            field="config.model.backbone.pretrained",
        )
        return params, model_state, f"pretrained backbone {self.pretrained}"

    def metric_names(self) -> tuple[str, ...]:
        """Names of the scalar metrics ``loss`` returns (besides ``loss``)."""
        return ()

    # -- extras ---------------------------------------------------------------
    def init_task_state(self, rng: jax.Array, variables: Mapping[str, Any]) -> Any:
        """Non-gradient state carried in the train state and checkpointed."""
        del rng, variables
        return {}

    def hooks(self) -> list[Hook]:
        return []

    #: ``{name: method name}``: the task's pure inference methods ``(variables, batch) ->
    #: dict of arrays`` that `predict_fns` exposes (e.g. ``{"embed": "predict"}``).
    predictors: Mapping[str, str] = {}

    def predict_fns(self) -> dict[str, Callable]:
        """``{name: jax.jit(method)}`` of `predictors`, jitted once per task so that every
        evaluation of a run reuses one compilation."""
        if self._predict_fns is None:
            self._predict_fns = {
                name: jax.jit(getattr(self, method)) for name, method in self.predictors.items()
            }
        return self._predict_fns

    def evaluators(self) -> dict[str, Evaluator]:
        return {}

    def param_partition(self, params) -> Any:
        """Pytree of `jax.sharding.PartitionSpec` (same structure as ``params``) over the
        trainer's ``("data", "model")`` mesh. Default: everything replicated; a task that
        splits parameters over ``model`` (e.g. a classifier by class) says so here, and the
        trainer splits their optimizer state the same way."""
        return jax.tree.map(lambda _: jax.sharding.PartitionSpec(), params)

    def trainable_mask(self, params) -> Any:
        """Pytree of bools (same structure as params): False = frozen. Default: all."""
        return jax.tree.map(lambda _: True, params)
