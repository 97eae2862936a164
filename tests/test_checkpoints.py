"""`jaxface.training.checkpoints.restore_weights` with optional sub-trees: read when the
checkpoint has them, kept when it has not, an error when their shapes differ."""

import flax
import jax
import ml_collections
import numpy as np
import pytest

from jaxface.training import checkpoints


@flax.struct.dataclass
class _State:
    params: dict
    model_state: dict


def _save(workdir, params):
    config = ml_collections.ConfigDict(dict(keep_checkpoints=1, async_checkpointing=False))
    mngr = checkpoints.make_checkpoint_manager(str(workdir), config)
    state = _State(params=params, model_state={"bn": {"mean": np.arange(2.0)}})
    assert checkpoints.save_checkpoint(mngr, state, 3)
    mngr.wait_until_finished()
    mngr.close()


def _restore(workdir, params):
    model_state = {"bn": {"mean": np.zeros(2)}}
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shard = lambda tree: jax.tree.map(lambda _: one, tree)  # noqa: E731
    return checkpoints.restore_weights(
        str(workdir),
        params,
        model_state,
        shard(params),
        shard(model_state),
        optional=(("dream",),),
    )


GIVEN = {"stem": {"w": np.zeros((2, 3), np.float32)}, "dream": {"w": np.ones((4,), np.float32)}}


def test_an_optional_subtree_in_the_checkpoint_is_read(tmp_path):
    saved = {
        "stem": {"w": np.full((2, 3), 2.0, np.float32)},
        "dream": {"w": np.arange(4, dtype=np.float32)},
    }
    _save(tmp_path, saved)
    params, model_state, step = _restore(tmp_path, GIVEN)
    assert step == 3
    np.testing.assert_array_equal(params["stem"]["w"], saved["stem"]["w"])
    np.testing.assert_array_equal(params["dream"]["w"], saved["dream"]["w"])
    np.testing.assert_array_equal(model_state["bn"]["mean"], np.arange(2.0))


def test_an_optional_subtree_missing_from_the_checkpoint_keeps_its_values(tmp_path):
    _save(tmp_path, {"stem": {"w": np.full((2, 3), 2.0, np.float32)}})
    params, _, _ = _restore(tmp_path, GIVEN)
    np.testing.assert_array_equal(params["stem"]["w"], np.full((2, 3), 2.0))
    np.testing.assert_array_equal(params["dream"]["w"], GIVEN["dream"]["w"])


def test_an_optional_subtree_of_another_shape_is_an_error(tmp_path):
    _save(
        tmp_path,
        {"stem": {"w": np.zeros((2, 3), np.float32)}, "dream": {"w": np.zeros(5, np.float32)}},
    )
    with pytest.raises(ValueError, match="does not match"):
        _restore(tmp_path, GIVEN)
