"""Attribute metrics against sklearn; the gain-vs-imbalance chart."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from jaxface.evaluation.attributes import (
    attribute_metrics,
    confusion_counts,
    format_metrics_table,
    imbalance_level,
    metrics_from_counts,
    plot_gain_vs_imbalance,
)


def _data(seed, n=500, a=6):
    rng = np.random.default_rng(seed)
    rates = np.linspace(0.03, 0.6, a)
    labels = np.where(rng.random((n, a)) < rates, 1, -1)  # CelebA's {-1, 1}
    flip = rng.random((n, a)) < 0.25
    preds = np.where(flip, -labels, labels)
    return preds, labels


@pytest.mark.parametrize("seed", [0, 1])
def test_balanced_accuracy_matches_sklearn(seed):
    preds, labels = _data(seed)
    m = attribute_metrics(preds, labels, names=[f"a{i}" for i in range(6)])
    for j in range(6):
        assert m["balanced_accuracy"][j] == pytest.approx(
            balanced_accuracy_score(labels[:, j], preds[:, j]), abs=1e-12
        )
        assert m["accuracy"][j] == pytest.approx(accuracy_score(labels[:, j], preds[:, j]))
        rate = (labels[:, j] > 0).mean()
        assert m["imbalance"][j] == pytest.approx(abs(rate - 0.5) * 100)
    assert m["mean_balanced_accuracy"] == pytest.approx(np.mean(m["balanced_accuracy"]))
    assert m["mean_accuracy"] == pytest.approx(np.mean(m["accuracy"]))
    assert m["names"][2] == "a2"


def test_streaming_counts_equal_one_shot_and_mask():
    preds, labels = _data(2)
    step = jax.jit(confusion_counts)
    total = sum(
        np.asarray(step(jnp.asarray(preds[i : i + 100]), jnp.asarray(labels[i : i + 100])))
        for i in range(0, 500, 100)
    )
    one = metrics_from_counts(total)
    ref = attribute_metrics(preds, labels)
    np.testing.assert_allclose(one["balanced_accuracy"], ref["balanced_accuracy"])
    # A [N] mask counts only the selected examples (e.g. padding in the last batch).
    where = np.arange(500) < 321
    masked = attribute_metrics(preds, labels, where=where)
    np.testing.assert_allclose(
        masked["balanced_accuracy"],
        attribute_metrics(preds[:321], labels[:321])["balanced_accuracy"],
    )
    # Bool and {0, 1} inputs mean the same as {-1, 1}.
    same = attribute_metrics(preds > 0, (labels > 0).astype(int))
    np.testing.assert_allclose(same["balanced_accuracy"], ref["balanced_accuracy"])


def test_single_class_attribute_follows_sklearn():
    labels = np.array([[1], [1], [1], [1]])
    preds = np.array([[1], [-1], [1], [1]])
    with pytest.warns(UserWarning):
        sk = balanced_accuracy_score(labels[:, 0], preds[:, 0])
    m = attribute_metrics(preds, labels)
    assert m["balanced_accuracy"][0] == pytest.approx(sk) == pytest.approx(0.75)
    assert m["imbalance"][0] == 50.0


def test_imbalance_from_training_rate_and_errors():
    preds, labels = _data(3)
    m = attribute_metrics(preds, labels, positive_rate=np.full(6, 0.2))
    np.testing.assert_allclose(m["imbalance"], 30.0)
    np.testing.assert_allclose(imbalance_level([0.0, 0.5, 0.9]), [50.0, 0.0, 40.0])
    with pytest.raises(ValueError, match="positive_rate"):
        attribute_metrics(preds, labels, positive_rate=np.ones(5))
    with pytest.raises(ValueError, match="names"):
        attribute_metrics(preds, labels, names=["x"])


def test_chart_and_table(tmp_path):
    preds, labels = _data(4)
    ours = attribute_metrics(preds, labels)
    base = attribute_metrics(
        np.where(np.random.default_rng(0).random(preds.shape) < 0.1, -preds, preds), labels
    )
    path = plot_gain_vs_imbalance(
        ours["balanced_accuracy"],
        base["balanced_accuracy"],
        ours["imbalance"],
        tmp_path / "sub" / "gain.png",
        names=[f"attr{i}" for i in range(6)],
    )
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with pytest.raises(ValueError, match="PNG"):
        plot_gain_vs_imbalance(
            ours["balanced_accuracy"],
            base["balanced_accuracy"],
            ours["imbalance"],
            tmp_path / "gain.pdf",
        )
    table = format_metrics_table(ours, base, method_name="LMLE", baseline_name="BCE")
    lines = table.splitlines()
    assert len(lines) == 2 + 6 + 1 and "LMLE bal.acc" in lines[0]
    assert lines[-1].startswith("| **mean**")
    # Most imbalanced first.
    assert lines[2].split("|")[1].strip() == "0"
