"""Recognizer: margin heads against their formulas, metrics against hand-computed cases, training, resume."""

import math

import numpy as np
import pytest
import torch

from scoremix_ray.config import RecognizerConfig
from scoremix_ray.core.data.batches import InMemory
from scoremix_ray.core.evaluation.verification import (
    best_threshold,
    closed_set_accuracy,
    kfold_accuracies,
    rank1_accuracy,
    tar_at_far,
    verification_metrics,
)
from scoremix_ray.core.recognition.heads import MarginHead, arcface_target
from scoremix_ray.core.recognition.train import Recognizer, class_centres, embed, train_recognizer
from scoremix_ray.foundations.checkpoints import read_history

TINY_REC = RecognizerConfig(widths=(8, 16), blocks=(1, 1), embedding_dim=16, epochs=4, batch_size=32)


# --- margin heads ----------------------------------------------------------------------------------------


def test_arcface_logits_match_formula():
    head = MarginHead(4, 3, "arcface", s=30.0, m=0.5)
    emb, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    logits = head(emb, labels)
    cos = torch.nn.functional.normalize(emb) @ torch.nn.functional.normalize(head.weight).T
    theta = torch.arccos(cos.clamp(-1, 1))
    for i, y in enumerate(labels):
        for j in range(3):
            t = theta[i, j].item()
            if j != y:
                want = 30 * math.cos(t)
            elif t + 0.5 <= math.pi:
                want = 30 * math.cos(t + 0.5)
            else:  # past the threshold: cos(theta) - m sin(m), monotonic
                want = 30 * (math.cos(t) - 0.5 * math.sin(0.5))
            assert logits[i, j].item() == pytest.approx(want, abs=1e-4)


def test_arcface_fallback_keeps_target_logit_monotonic():
    cos = torch.linspace(-1, 1, 2001)
    phi = arcface_target(cos, 0.5)
    assert torch.all(phi[1:] >= phi[:-1] - 1e-6)  # never rewards a larger angle
    assert torch.all(phi <= cos + 1e-6)  # the margin only ever makes the target harder
    easy = arcface_target(cos, 0.5, easy_margin=True)
    assert torch.equal(easy[cos <= 0], cos[cos <= 0])


def test_cosface_subtracts_margin_from_target_only():
    head = MarginHead(4, 3, "cosface", s=10.0, m=0.35)
    emb, labels = torch.randn(5, 4), torch.tensor([0, 1, 2, 1, 0])
    cos = head.cosine(emb)
    want = 10 * (cos - 0.35 * torch.nn.functional.one_hot(labels, 3))
    assert torch.allclose(head(emb, labels), want, atol=1e-5)


# --- verification metrics --------------------------------------------------------------------------------


def test_perfect_separation():
    issame = np.arange(2000) % 2 == 0
    scores = np.where(issame, 0.9, 0.1) + np.random.default_rng(0).uniform(-0.05, 0.05, 2000)
    m = verification_metrics(scores, issame)
    assert m["verification_accuracy"] == 1.0 and m["verification_accuracy_std"] == 0.0
    assert m["roc_auc"] == 1.0 and m["tar_at_far_1e-1"] == 1.0 and m["tar_at_far_1e-3"] == 1.0
    assert 0.1 + 0.05 <= best_threshold(scores, issame) <= 0.9 - 0.05


def test_random_scores_are_chance():
    rng = np.random.default_rng(1)
    issame = rng.random(20000) < 0.5
    m = verification_metrics(rng.random(20000), issame)
    assert abs(m["roc_auc"] - 0.5) < 0.02
    assert abs(m["verification_accuracy"] - 0.5) < 0.03
    assert abs(m["tar_at_far_1e-1"] - 0.1) < 0.02  # on random scores TAR = FAR


def test_known_roc():
    # positives 0.2 0.6 0.7 0.9, negatives 0.1 0.3 0.4 0.8: AUC = (pos>neg pairs)/16 = (1+3+3+4)/16
    scores = np.array([0.2, 0.6, 0.7, 0.9, 0.1, 0.3, 0.4, 0.8])
    issame = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    m = verification_metrics(np.tile(scores, 2), np.tile(issame, 2), folds=2)
    assert m["roc_auc"] == pytest.approx(11 / 16)
    # ties count one half, as sklearn's trapezoids do (scores rounded to 1 decimal: many ties)
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    tied, same = np.round(rng.random(500), 1), rng.random(500) < 0.4
    assert verification_metrics(tied + 0.1 * same, same)["roc_auc"] == pytest.approx(
        roc_auc_score(same, tied + 0.1 * same)
    )
    # best accuracy is 6/8 (threshold between 0.4 and 0.6: 3 TP + 3 TN)
    assert m["verification_accuracy"] == pytest.approx(0.75)
    # 4 negatives: FAR 1e-1 needs 10 -> not measurable, and said so
    assert m["tar_at_far_1e-1"] is None and any("FAR 0.1" in n for n in m["notes"])
    assert tar_at_far(np.tile(scores, 3), np.tile(issame, 3), 0.34) == pytest.approx(0.75)  # above 0.4


def test_kfold_threshold_comes_from_the_other_folds():
    # fold 0's pairs are separable only at a threshold the other folds would never choose
    scores = np.concatenate([np.full(10, 0.2), np.tile([0.9, 0.1], 45)])
    issame = np.concatenate([np.ones(10, bool), np.tile([True, False], 45)])
    accs = kfold_accuracies(scores, issame, folds=10)
    assert (
        accs.mean() == pytest.approx(0.9) and accs[0] == 0 and (accs[1:] == 1).all()
    )  # fold 0 at the others' threshold


def test_rank1_and_closed_set():
    emb = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [0.8, 0.2]], np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = np.array([0, 0, 1, 1, 1])
    assert rank1_accuracy(emb, labels) == pytest.approx(4 / 5)  # the last one's nearest is class 0
    assert rank1_accuracy(emb, labels, chunk=2) == pytest.approx(4 / 5)  # chunked: the same answer
    rng = np.random.default_rng(0)
    big, big_labels = rng.normal(size=(301, 8)), rng.integers(0, 40, 301)
    full = big @ big.T
    np.fill_diagonal(full, -np.inf)
    mate = np.bincount(big_labels)[big_labels] >= 2
    expected = np.mean(big_labels[full.argmax(1)][mate] == big_labels[mate])
    assert rank1_accuracy(big, big_labels, chunk=64) == rank1_accuracy(big, big_labels) == pytest.approx(expected)
    centres = class_centres(emb, labels, 2)
    assert np.allclose(np.linalg.norm(centres, axis=1), 1)
    assert closed_set_accuracy(emb, labels, centres) == pytest.approx(4 / 5)


# --- training --------------------------------------------------------------------------------------------


def test_training_beats_chance(digits_split, tmp_path):
    from scoremix_ray.core.evaluation.recognizer import evaluate_split

    s = digits_split
    cfg = TINY_REC.model_copy(update={"epochs": 12})
    final = train_recognizer(InMemory(s.train.images, s.train.labels), s.train.num_classes, cfg, 0, tmp_path)
    net = Recognizer.load(final)
    m = evaluate_split(net, s)
    assert m["verification_accuracy"] > 0.65 and m["roc_auc"] > 0.7  # unseen digits; chance is 0.5
    emb = embed(net, s.test.images)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)


def test_resume_continues_exactly(digits_split, tmp_path):
    s = digits_split
    args = (InMemory(s.train.images, s.train.labels), s.train.num_classes, TINY_REC, 3)
    train_recognizer(*args, tmp_path / "straight")
    train_recognizer(*args, tmp_path / "resumed", stop_after_epochs=2)  # "interrupted" after epoch 2
    assert not (tmp_path / "resumed" / "final").exists()
    with open(tmp_path / "resumed" / "history.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 0.')  # a line cut short by the kill
    seen = []
    train_recognizer(*args, tmp_path / "resumed", monitor=lambda m, step: seen.append((step, m["loss"])))
    a = torch.load(tmp_path / "straight" / "final" / "model.pt")
    b = torch.load(tmp_path / "resumed" / "final" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the curve: the interrupted attempt's epochs handed to the monitor again, then the new ones; the file holds
    # each epoch once, as the uninterrupted run's
    curve = [(r["step"], r["loss"]) for r in read_history(tmp_path / "straight")]
    assert seen == curve and [r["step"] for r in read_history(tmp_path / "resumed")] == list(
        range(1, TINY_REC.epochs + 1)
    )


def test_augmented_recognizer_trains_the_baselines_steps():
    """recognizer.match: steps scales the augmented run's epochs so its optimizer steps come within one epoch of
    the baseline's; match: epochs keeps the epochs (more images: more steps)."""
    from scoremix_ray.config import load_config
    from scoremix_ray.pipeline import matched_epochs, optimizer_steps

    cfg = load_config(None, ["recognizer.epochs=30", "recognizer.batch_size=128"])
    base = optimizer_steps(cfg, 900)  # 7 steps an epoch
    aug = matched_epochs(cfg, 900, 500)
    assert base == 210 and aug.recognizer.epochs == 21 and optimizer_steps(aug, 1400) == 210
    more = matched_epochs(cfg, 900, 2000)  # 22 steps an epoch: 10 epochs = 220, within one epoch of 210
    assert abs(optimizer_steps(more, 2900) - base) <= 22 and more.recognizer.checkpoint_every <= more.recognizer.epochs
    same = load_config(None, ["recognizer.match=epochs"])
    assert matched_epochs(same, 900, 500).recognizer.epochs == same.recognizer.epochs
