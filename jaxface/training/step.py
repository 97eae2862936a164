"""The train step of the one trainer (`jaxface.train`)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxface.tasks.base import Task
from jaxface.training.checkpoints import tree_finite
from jaxface.training.precision import cast_batch, cast_params
from jaxface.training.state import TrainState

__all__ = ["make_train_step"]


def make_train_step(
    task: Task,
    config: ml_collections.ConfigDict,
    optimizer,
    collection,
    state_sharding,
    batch_sharding,
    replicated,
):
    """The jitted train step ``(state, batch, rng) -> (state, metrics)`` with donated
    state: ``optimizer(params)`` is the trainer's optimizer, ``collection`` its
    ``clu.metrics.Collection`` of the loss and the task's metrics; gradient accumulation
    over ``config.grad_accum_steps`` microbatches, the precision contract's casts
    (`jaxface.training.precision`), and a non-finite loss or gradient keeps the state."""

    accum = int(config.grad_accum_steps)
    compute_dtype = jnp.dtype(config.compute_dtype)

    params_to_compute = functools.partial(cast_params, dtype=compute_dtype)
    batch_to_compute = functools.partial(
        cast_batch, fields=tuple(task.compute_fields), dtype=compute_dtype
    )

    def like(tree, ref):
        return jax.tree.map(lambda x, r: x.astype(r.dtype), tree, ref)

    def micro_grads(params, model_state, batch, rng, task_state):
        def loss_fn(p):
            # Model state (BatchNorm statistics) stays fp32: flax promotes where it meets it.
            loss, (ms, aux) = task.loss(
                params_to_compute(p), model_state, batch_to_compute(batch), rng, task_state
            )
            if loss.dtype != jnp.float32:
                raise TypeError(
                    f"task {task.name!r} returned a {loss.dtype} loss; the precision "
                    "contract (jaxface.train) wants every loss reduction in float32"
                )
            return loss, (like(ms, model_state), aux)

        (loss, (ms, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, ms, {k: jnp.asarray(v, jnp.float32) for k, v in aux.items()}, grads

    def train_step(state: TrainState, batch, rng):
        tx = optimizer(state.params)
        step_rng = jax.random.fold_in(rng, state.step)

        if accum == 1:
            loss, new_model_state, aux, grads = micro_grads(
                state.params, state.model_state, batch, step_rng, state.task_state
            )
        else:
            # Microbatch i takes rows i, i + k, i + 2k, ...: every device contributes to each
            # microbatch, so all of them stay busy. Gradients and metrics are averaged; the
            # model state (e.g. BatchNorm statistics) is threaded through the microbatches.
            micro = jax.tree.map(
                lambda x: x.reshape((x.shape[0] // accum, accum) + x.shape[1:]).swapaxes(0, 1),
                batch,
            )

            def body(carry, xs):
                model_state, g_sum, i = carry
                mb = xs
                loss, ms, aux, g = micro_grads(
                    state.params,
                    model_state,
                    mb,
                    jax.random.fold_in(step_rng, i),
                    state.task_state,
                )
                g_sum = jax.tree.map(jnp.add, g_sum, g)
                return (ms, g_sum, i + 1), (loss, aux)

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            (new_model_state, g_sum, _), (losses, auxs) = jax.lax.scan(
                body, (state.model_state, zeros, jnp.zeros((), jnp.int32)), micro
            )
            grads = jax.tree.map(lambda g: g / accum, g_sum)
            loss = jnp.mean(losses)
            aux = {k: jnp.mean(v) for k, v in auxs.items()}

        updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & tree_finite(grads) & tree_finite(new_params)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        new_state = state.replace(
            step=state.step + 1,
            params=keep(new_params, state.params),
            opt_state=keep(new_opt_state, state.opt_state),
            model_state=keep(new_model_state, state.model_state),
            nonfinite_consecutive=jnp.where(finite, 0, state.nonfinite_consecutive + 1),
            nonfinite_total=state.nonfinite_total + jnp.where(finite, 0, 1),
        )
        outputs = {"loss": loss, **aux}
        outputs = {k: jnp.where(finite, v, 0.0) for k, v in outputs.items()}
        metrics = collection.single_from_model_output(
            mask=finite[None], **{k: v[None] for k, v in outputs.items()}
        )
        return new_state, metrics

    return jax.jit(
        train_step,
        in_shardings=(state_sharding, batch_sharding, replicated),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(0,),
    )
