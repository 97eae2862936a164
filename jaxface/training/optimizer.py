"""The optimizer of a config: learning-rate schedule, SGD / AdamW, weight decay on
kernels, clipping, frozen parameters (`optimizer_for`, built once per trainer)."""

from __future__ import annotations

import jax
import ml_collections
import optax

__all__ = ["make_schedule", "make_optimizer", "optimizer_for"]


def make_schedule(opt: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    lr = float(opt.learning_rate)
    warmup = int(opt.warmup_steps)
    kind = opt.schedule
    if kind == "constant":
        main = optax.constant_schedule(lr)
    elif kind == "cosine":
        main = optax.cosine_decay_schedule(lr, max(1, num_steps - warmup))
    elif kind == "steps":
        # Multiply by `decay_factor` at each fraction of training (DREAM: 0.8, 0.9, 0.95).
        bounds = {int(f * num_steps) - warmup: float(opt.decay_factor) for f in opt.decay_at}
        main = optax.piecewise_constant_schedule(lr, bounds)
    else:
        raise ValueError(
            f"config.optimizer.schedule: unknown schedule {kind!r} "
            "(expected 'constant', 'cosine' or 'steps')"
        )
    if warmup:
        return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])
    return main


def make_optimizer(opt: ml_collections.ConfigDict, num_steps: int, trainable_mask=None):
    """SGD (momentum, nesterov) or AdamW with a schedule; decoupled weight decay on
    kernels only (ndim > 1); optional global-norm clipping; frozen params via mask."""
    schedule = make_schedule(opt, num_steps)
    wd = float(opt.get("weight_decay", 0.0))
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
    name = opt.name
    if name == "sgd":
        chain = [optax.add_decayed_weights(wd, decay_mask)] if wd else []
        chain.append(
            optax.sgd(
                schedule,
                momentum=opt.momentum or None,
                nesterov=bool(opt.nesterov),
            )
        )
        tx = optax.chain(*chain)
    elif name == "adamw":
        tx = optax.adamw(schedule, weight_decay=wd, mask=decay_mask)
    else:
        raise ValueError(
            f"config.optimizer.name: unknown optimizer {name!r} (expected 'sgd' or 'adamw')"
        )
    clip = float(opt.grad_clip_norm)
    if clip:
        tx = optax.chain(optax.clip_by_global_norm(clip), tx)
    if trainable_mask is not None:
        tx = optax.multi_transform(
            {True: tx, False: optax.set_to_zero()}, lambda params: trainable_mask
        )
    return tx


def optimizer_for(config: ml_collections.ConfigDict, task, params):
    """The optimizer of ``config`` for ``task``'s ``params`` (arrays or their shapes):
    frozen leaves (`Task.trainable_mask`) get no update."""
    mask = task.trainable_mask(params)
    all_trainable = all(jax.tree.leaves(mask))
    return make_optimizer(
        config.optimizer, int(config.num_train_steps), None if all_trainable else mask
    )
