"""The generator and mixed-class diagnostics on cases whose answer is known."""

import numpy as np
import pytest

from scoremix_ray.core.evaluation.diagnostics import (
    frechet_distance,
    generator_diagnostics,
    halves,
    mixed_diagnostics,
    precision_recall,
    readiness,
    readiness_line,
)


def _clusters(n_classes=6, per_class=40, dim=16, spread=0.15, seed=0):
    """Unit-ish embeddings around one random direction per class: (emb, labels, centres)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(n_classes), per_class)
    emb = centres[labels] + spread * rng.normal(size=(len(labels), dim))
    return emb, labels, centres


def test_frechet_distance_formula():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4000, 3))
    assert frechet_distance(x, x) == pytest.approx(0, abs=1e-6)  # identical sets: the floor, 0
    # two Gaussians with known moments: |mu|^2 + tr(C1 + C2 - 2 sqrt(C1 C2)) = 3^2 + 3 * (1 + 4 - 2 * 2) = 12
    y = 2 * rng.normal(size=(4000, 3)) + np.array([3.0, 0, 0])
    assert frechet_distance(x, y) == pytest.approx(12, rel=0.05)


def test_precision_recall_identical_and_disjoint():
    emb, _, _ = _clusters()
    assert precision_recall(emb, emb) == {"precision": 1.0, "recall": 1.0}
    far = emb + 100.0  # disjoint: neither manifold holds a sample of the other
    assert precision_recall(emb, far) == {"precision": 0.0, "recall": 0.0}
    # generated samples all on one class (mode collapse): precise, but they cover only a sixth of the real set
    emb2, labels, _ = _clusters(seed=0)
    pr = precision_recall(emb2, emb2[labels == 0])
    assert pr["precision"] == 1.0 and pr["recall"] < 0.3


def test_generator_diagnostics_reference_and_a_broken_generator():
    emb, labels, _ = _clusters(per_class=40)
    a, b = halves(labels, 0)
    assert not set(a) & set(b) and len(a) + len(b) == len(labels)
    # a generator that reproduces the real distribution scores like held-out real images
    gen, gen_labels = emb.copy(), labels.copy()  # the same images
    good = generator_diagnostics(emb, labels, gen, gen_labels, seed=0)
    assert good["identity_accuracy"] == good["identity_accuracy_real"] == 1.0
    for key in ("precision", "recall"):  # (its first rows per class against held-out half B, as half A is)
        assert abs(good[key] - good[key + "_real"]) < 0.1
    assert good["fd"] < 2 * good["fd_real"]
    # one whose samples ignore the class label: identity accuracy near chance (1/6)
    rng = np.random.default_rng(3)
    shuffled = rng.permutation(gen_labels)
    bad = generator_diagnostics(emb, labels, gen, shuffled, seed=0)
    assert bad["identity_accuracy"] < 0.4 and bad["identity_accuracy_real"] == 1.0
    # one whose samples sit off the real distribution: FD far above the real floor, few samples on the manifold
    off = generator_diagnostics(emb, labels, gen + 1.0, gen_labels, seed=0)
    assert off["fd"] > 10 * off["fd_real"] and off["precision"] < 0.1


def test_mixed_class_of_one_parents_images_is_that_parent():
    emb, labels, centres = _clusters(n_classes=6, per_class=30, spread=0.1)
    parents = np.array([[0, 1], [2, 3], [4, 5]])
    # tuple 0 "mixed" from parent 0's own images; tuples 1 and 2 from points between their parents
    rng = np.random.default_rng(2)
    rows = [emb[labels == 0][:20]]
    for p, q in parents[1:]:
        mid = (centres[p] + centres[q]) / 2
        rows.append(mid / np.linalg.norm(mid) + 0.05 * rng.normal(size=(20, emb.shape[1])))
    mixed = np.concatenate(rows)
    tuple_of_row = np.repeat([0, 1, 2], 20)
    out = mixed_diagnostics(mixed, tuple_of_row, parents, centres, threshold=0.8, seed=0)
    per = out["per_tuple"]
    assert per["assigned_to_parent"][0] == 1.0 and max(per["cos_to_parent"][0]) > 0.95  # detected as parent 0
    # a true mix sits between its parents: closer to each than they are to each other
    assert min(per["cos_to_parent"][1]) > per["cos_between_parents"][1]
    assert out["tar"] > 0.9 and out["far"] < 0.1  # one identity per tuple, different ones across tuples
    assert out["tuples"] == 3 and out["pairs"]["genuine"] > 0 and out["pairs"]["impostor"] > 0


def test_classes_with_one_real_image_are_left_out():
    emb, labels, _ = _clusters(n_classes=4, per_class=10)
    keep = np.flatnonzero(labels != 3)
    one = np.concatenate([keep, np.flatnonzero(labels == 3)[:1]])  # class 3 has a single real image
    out = generator_diagnostics(emb[one], labels[one], emb, labels, seed=0)
    assert out["rows"]["real_a"] + out["rows"]["real_b"] == len(keep) and out["identity_accuracy"] == 1.0


def test_readiness_rule():
    """Precision and recall each as a share of their real reference; the lower share decides: >= 0.7 ready,
    >= 0.4 marginal, else not ready (the glyphs generator of the README: precision 0.086 of 0.86 -> not ready)."""
    ref = {"precision_real": 0.9, "recall_real": 0.9, "identity_accuracy": 0.5, "identity_accuracy_real": 1.0}
    assert readiness({**ref, "precision": 0.63, "recall": 0.9}) == "ready"  # exactly 0.7 of the reference
    assert readiness({**ref, "precision": 0.62, "recall": 0.9}) == "marginal"
    assert readiness({**ref, "precision": 0.9, "recall": 0.3}) == "not ready"  # recall alone can fail it
    glyphs = {**ref, "precision": 0.086, "precision_real": 0.86, "recall": 0.9}
    line = readiness_line(glyphs)
    assert (
        line.startswith("generator not ready (mixed classes are likely noise")
        and "precision 0.086 (real 0.860)" in line
    )
