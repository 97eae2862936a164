"""The ``attributes`` task: 40 binary face attributes on one shared trunk.

Losses (``config.loss``): ``bce`` — per-attribute sigmoid cross-entropy, optionally
with inverse-frequency class weights (``config.class_balanced``). Evaluation: per-
attribute balanced accuracy, accuracy and imbalance level on a held-out split
(`jaxface.evaluation.attributes`).

Data (``config.data``): any builder whose examples hold ``image`` uint8 [H, W, 3]
and ``attributes`` [40] in {0, 1} (or CelebA's {-1, 1}); images are resized to
``config.image_size`` when they differ.
"""
from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxface import losses
from jaxface.data import sources
from jaxface.evaluation import attributes as attr_eval
from jaxface.models.attributes import AttributeNet
from jaxface.tasks import common
from jaxface.tasks.base import EvalContext, Task


class AttributesTask(Task):
  name = "attributes"

  def __init__(self, config):
    super().__init__(config)
    m = config.model
    self.model = AttributeNet(num_attributes=int(config.num_attributes),
                              embedding_dim=int(m.embedding_dim), widths=tuple(m.widths),
                              convs_per_stage=int(m.convs_per_stage))
    if config.loss not in ("bce",):
      raise ValueError(f"config.loss: unknown attributes loss {config.loss!r} (expected 'bce')")
    self._sources = {}
    self._class_weights = None

  # -- data -------------------------------------------------------------------
  def source(self, split):
    if split not in self._sources:
      self._sources[split] = sources.source_from_config(self.config.data, split)
    return self._sources[split]

  def transform(self, example, rng, *, train: bool):
    size = int(self.config.image_size)
    image = np.asarray(example["image"])
    if image.shape[:2] != (size, size):
      image = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
    if train and self.config.get("random_flip", True) and rng.random() < 0.5:
      image = image[:, ::-1]
    attrs = np.asarray(example["attributes"]).astype(np.int32)
    return {"image": common.normalize_image(image), "attributes": (attrs > 0).astype(np.int32)}

  def data(self, split, *, train):
    return self.source(split), functools.partial(self.transform, train=train)

  def positive_rates(self) -> np.ndarray:
    """[A] positive rate of each attribute on (a sample of) the training split."""
    src = self.source(self.config.get("train_split", "train"))
    n = min(len(src), int(self.config.get("rate_sample", 5000)))
    idx = np.linspace(0, len(src) - 1, n).astype(int)
    return np.mean([np.asarray(src[int(i)]["attributes"]) > 0 for i in idx], axis=0)

  # -- model ------------------------------------------------------------------
  def init_variables(self, rng, batch):
    return self.model.init(rng, batch["image"], train=False)

  def init_task_state(self, rng, variables):
    del rng, variables
    if self.config.get("class_balanced", False):
      return {"class_weights": jnp.asarray(losses.balanced_class_weights(self.positive_rates()))}
    return {}

  def loss(self, params, model_state, batch, rng, task_state):
    del rng
    out, new_state = self.model.apply({"params": params, **model_state}, batch["image"],
                                      train=True, mutable=list(model_state.keys()))
    per_example = losses.sigmoid_binary_cross_entropy(
        out["logits"], batch["attributes"], class_weights=task_state.get("class_weights"))
    loss = jnp.mean(per_example)
    pred = out["logits"] > 0
    acc = jnp.mean(pred == (batch["attributes"] > 0))
    return loss, (new_state, {"accuracy": acc})

  def metric_names(self):
    return ("accuracy",)

  # -- evaluation ----------------------------------------------------------------
  def predict(self, variables, batch):
    out = self.model.apply(variables, batch["image"], train=False)
    return {"logits": out["logits"]}

  def evaluators(self):
    return {"balanced_accuracy": self._evaluate_balanced}

  def _evaluate_balanced(self, state, ctx: EvalContext):
    split = self.config.get("eval_split", "test")
    src, transform = self.data(split, train=False)
    out = common.predict_split(ctx, self.predict, common.variables_of(state), src, transform,
                               int(self.config.eval_batch_size),
                               limit=self.config.get("eval_limit") or None, keep=("attributes",))
    pred = (out["logits"] > 0).astype(np.int32)
    report = attr_eval.attribute_metrics(
        pred, out["attributes"], names=list(self.config.get("attribute_names", [])) or None)
    if ctx.process_index == 0:
      path = os.path.join(ctx.workdir, f"attributes_eval_step{ctx.step}.json")
      with open(path, "w") as f:
        json.dump({k: np.asarray(v).tolist() for k, v in report.items()}, f, indent=1)
    return {"mean_balanced_accuracy": report["mean_balanced_accuracy"],
            "mean_accuracy": report["mean_accuracy"]}
