"""Review decisions are trusted everywhere a run trains or splits (engine.review.trusted): the classifier
stage, the mixture, the SupCon weights and the metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.config import ClassifyConfig, SplitConfig
from engine.errors import UserError
from engine.method.losses import classification_loss
from engine.method.models import build_network
from engine.method.selection import fit_gmm_split
from engine.review.decisions import Decision
from engine.review.metrics import detection_metrics
from engine.review.trusted import no_decisions, trusted_labels
from engine.runs.progress import Progress
from engine.train.classify import warmup_head
from engine.train.device import make_runtime
from engine.train.finetune import finetune_targets
from engine.train.loop import Rng
from engine.train.pipeline import training_images, trust_decisions
from engine.train.trainset import TrainSet

PATHS = ("a.png", "b.png", "c.png", "d.png", "e.png")
CLASSES = ("cat", "dog")
GIVEN = np.array([0, 0, 1, 1, 0])


def decisions(**actions: tuple[str, str | None]) -> dict[str, Decision]:
    return {f"{k}.png": Decision(f"{k}.png", a, label, "2026-01-01T00:00:00Z") for k, (a, label) in actions.items()}


def test_keep_trains_on_the_given_label_relabel_on_its_label_discard_not_at_all_skip_is_nothing():
    d = decisions(a=("keep", "dog"), b=("relabel", "dog"), c=("discard", None), d=("skip", None))
    t = trusted_labels(PATHS, GIVEN, CLASSES, d)
    assert t.labels.tolist() == [0, 1, 1, 1, 0]  # keep: the given cat, whatever the decision stored
    assert t.decided.tolist() == [True, True, False, False, False]
    assert t.discarded.tolist() == [False, False, True, False, False]
    assert t.undecided.tolist() == [False, False, False, True, True]  # the skip fits the mixture like any image
    assert t.trains.tolist() == [True, True, False, True, True]
    assert t.action.tolist() == ["keep", "relabel", "discard", "", ""]


def test_a_decision_naming_an_unknown_class_is_refused_with_its_path():
    with pytest.raises(UserError, match=r"b\.png uses label 'horse', which is not a class of this run"):
        trusted_labels(PATHS, GIVEN, CLASSES, decisions(b=("relabel", "horse")))


def test_no_decisions_is_the_given_labels():
    t = no_decisions(GIVEN)
    assert t.labels.tolist() == GIVEN.tolist() and t.trains.all() and t.undecided.all()


def test_the_mixture_is_fitted_on_the_undecided_images_and_posteriors_cover_all():
    rng = np.random.default_rng(0)
    clean, noisy = rng.normal(0.1, 0.03, 300), rng.normal(0.8, 0.05, 100)
    fixed = np.full(200, 0.95)  # relabeled images: a high loss against the old label, decided by a person
    x = np.clip(np.concatenate([clean, noisy, fixed]), 0, 1)
    fit_on = np.r_[np.ones(400, bool), np.zeros(200, bool)]
    with_all = fit_gmm_split(x, seed=0)
    only = fit_gmm_split(x, seed=0, fit_on=fit_on)
    assert len(only.clean_prob) == 600
    # Left in, the decided images inflate the noisy component's weight; left out, it is the undecided share.
    assert with_all.weights[1] == pytest.approx(0.5, abs=0.03)
    assert only.weights[1] == pytest.approx(0.25, abs=0.03)
    assert only.flagged[:300].sum() == 0 and only.flagged[300:400].all()


def test_a_decided_image_is_clean_and_never_flagged():
    x = np.r_[np.linspace(0, 0.2, 20), np.linspace(0.8, 1.0, 10)]
    split = fit_gmm_split(x, seed=0)
    assert split.flagged[20:].all()
    d = decisions(a=("relabel", "dog"))
    paths = tuple(f"{k}.png" for k in ["a"] + [f"x{i}" for i in range(29)])
    paths = paths[1:21] + ("a.png",) + paths[21:]  # the decided image is a high-loss one (row 20)
    t = trusted_labels(paths, np.zeros(30, int), CLASSES, d)
    out = trust_decisions(split, t)
    assert out.clean_prob[20] == 1.0 and not out.flagged[20]
    assert out.flagged[21:].all() and out.clean_prob[:20].tolist() == split.clean_prob[:20].tolist()


def test_training_images_leave_discards_out_and_map_rows_to_every_images_state():
    images = np.zeros((5, 8, 8, 3), np.uint8)
    data = TrainSet.from_numpy(images, GIVEN, torch.device("cpu"))
    t = trusted_labels(PATHS, GIVEN, CLASSES, decisions(b=("relabel", "dog"), d=("discard", None)))
    sub, labels, rows = training_images(data, t, torch.device("cpu"))
    assert len(sub) == 4 and rows.tolist() == [0, 1, 2, 4] and labels.tolist() == [0, 1, 1, 1, 0]
    same, _, none = training_images(data, no_decisions(GIVEN), torch.device("cpu"))
    assert same is data and none is None


def test_the_warmup_head_trains_only_on_its_rows_with_elr_sized_for_every_image(tmp_path):
    rt = make_runtime("cpu", "fp32")
    torch.manual_seed(0)
    net = build_network(build_cfg(), image_size=16, num_classes=2, device_type="cpu")
    features = torch.randn(6, net.encoder.feature_dim)
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    cfg = ClassifyConfig(batch_size=2, loss="elr")
    loss_fn = classification_loss(cfg, num_samples=6, num_classes=2)
    seen: list[list[int]] = []
    forward = loss_fn.forward

    def spy(logits, target, index):
        seen.append(index.tolist())
        return forward(logits, target, index)

    loss_fn.forward = spy
    warmup_head(net, features, labels, loss_fn, cfg, rt, epochs=2, rng=Rng.for_stream(0, "warmup", rt.device),
                last_ckpt=tmp_path / "w.pt", progress=Progress(None, show=False), rows=torch.tensor([0, 2, 3, 5]))
    used = sorted({i for batch in seen for i in batch})
    assert used == [0, 2, 3, 5] and all(len(b) == 2 for b in seen)


def test_metrics_score_the_model_on_the_images_nobody_decided():
    given = np.array(["cat", "cat", "dog", "dog"], dtype=object)
    true = np.array(["dog", "cat", "dog", "cat"], dtype=object)  # rows 0 and 3 are wrong
    flagged = np.array([0, 0, 0, 1])  # row 0 was relabeled by a person: trusted, so not flagged
    clean_prob = np.array([1.0, 0.9, 0.8, 0.1])
    corrected = np.array(["dog", "cat", "dog", "cat"], dtype=object)
    m = detection_metrics(given=given, true=true, flagged=flagged, clean_prob=clean_prob, predicted=corrected,
                          corrected=corrected, reviewed=np.array([True, False, False, False]))
    assert m["n_reviewed"] == 1 and m["n_flagged"] == 1
    assert (m["precision"], m["recall"], m["f1"], m["auroc"]) == (1.0, 1.0, 1.0, 1.0)
    assert m["corrected_accuracy"] == 1.0 and m["given_label_accuracy"] == 0.5  # over every image
    plain = detection_metrics(given=given, true=true, flagged=flagged, clean_prob=clean_prob, predicted=corrected,
                              corrected=corrected)
    assert plain["recall"] == 0.5 and plain["n_reviewed"] == 0


def test_supcon_weights_come_from_a_mixture_on_the_undecided_images():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet([1, 1], size=40).astype(np.float32)
    paths = tuple(f"{i}.png" for i in range(40))
    given = probs.argmax(1)
    d = {p: Decision(p, "keep", None, "t") for p in paths[:10]}
    t = finetune_targets(probs, paths, CLASSES, d, SplitConfig(), given=given, min_weight=0.01, seed=0)
    assert (t.weights[:10] == 1.0).all() and t.n_decided == 10
    alone = finetune_targets(probs[10:], paths[10:], CLASSES, {}, SplitConfig(), given=given[10:], min_weight=0.01,
                             seed=0)
    assert np.allclose(t.weights[10:], alone.weights, atol=0.005)  # the losses are normalised over all 40


def build_cfg():
    from engine.config import ModelConfig

    return ModelConfig(stem="small")


def test_mixup_boot_refits_on_the_images_that_train_and_leaves_the_discarded_at_zero():
    cfg = ClassifyConfig(loss="mixup-boot")
    loss_fn = classification_loss(cfg, num_samples=6, num_classes=2, labels=np.array([0, 1, 0, 1, 0, 1]))
    rng = np.random.default_rng(0)
    losses = np.r_[rng.uniform(0.0, 0.3, 30), rng.uniform(2.0, 3.0, 10)]
    big = classification_loss(cfg, num_samples=42, num_classes=2, labels=np.zeros(42, int))
    big.refit(losses, rows=np.arange(40))
    w = big.noisy_prob.numpy()
    assert w.shape == (42,) and (w[40:] == 0).all() and w[30:40].min() > 0.5 > w[:30].max()
    with pytest.raises(ValueError, match="refit needs 4 losses"):
        loss_fn.refit(np.zeros(6), rows=np.array([0, 2, 3, 5]))
