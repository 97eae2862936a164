"""The trainer's config fields, declared once; experiment files in `configs/` extend them.

Every field the trainer reads is declared here with its default, so a typo on the
command line (``--config.batch_sise=8``) is an error naming the field rather than
a silently ignored value. Task fields are declared by each config file.
"""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = ""  # a name from jaxface.tasks.available()
    c.seed = 0  # init, data order and augmentation all derive from it
    c.batch_size = 64  # global batch (all hosts, all devices); per-device is derived
    c.grad_accum_steps = 1  # microbatches per step (gradients averaged)
    c.compute_dtype = "float32"  # float32 | bfloat16 (parameters and optimizer stay fp32)
    c.eval_batch_size = 128
    c.num_train_steps = 1000
    c.stop_at_step = 0  # >0: stop (with a checkpoint) at this step; resume later
    c.model_parallel = 1  # size of the mesh's "model" axis
    c.train_split = "train"
    c.eval_split = "test"
    c.eval_limit = 0  # 0: the whole eval split
    # Names of the task's evaluators to run; a tuple, so --config.evals='("a","b")' works.
    c.evals = ()
    c.log_every = 50
    c.eval_every = 1000
    c.checkpoint_every = 500
    c.keep_checkpoints = 3
    c.async_checkpointing = True
    c.init_from = ""  # a workdir whose latest checkpoint initialises params
    c.max_consecutive_nonfinite = 10
    c.data_workers = 2
    c.prefetch = 2

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "sgd"  # sgd | adamw
    c.optimizer.learning_rate = 0.1
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = False
    c.optimizer.weight_decay = 1e-4
    c.optimizer.schedule = "cosine"  # constant | cosine | steps
    c.optimizer.decay_at = [0.8, 0.9, 0.95]  # for "steps": fractions of training
    c.optimizer.decay_factor = 0.1
    c.optimizer.warmup_steps = 0
    c.optimizer.grad_clip_norm = 0.0

    c.data = ml_collections.ConfigDict()
    c.data.builder = ""  # tfds name (jaxface.data.sources.BUILDER_MODULES)
    c.data.config = ""  # builder config name
    c.data.data_dir = ""  # tfds data_dir ("" = $TFDS_DATA_DIR or ~/tensorflow_datasets)
    c.data.manual_dir = ""  # original-layout directory of a real dataset
    c.data.overrides = ml_collections.ConfigDict()  # builder-config fields to change
    return c
