"""Mixup with dynamic bootstrapping in the classifier stage: the refits, determinism, resume, and a whole fit."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from engine.config import ClassifyConfig, ModelConfig
from engine.method.losses import MixupBootLoss, classification_loss
from engine.method.models import build_network
from engine.runs.progress import Progress
from engine.train.classify import Normalisation, train_classifier
from engine.train.device import make_runtime
from engine.train.loop import Rng
from engine.train.trainset import TrainSet

CFG = ClassifyConfig(loss="mixup-boot", batch_size=8, boot_warmup=0.0, lr=0.05)


class Killed(Exception):
    pass


class KillAfter(Progress):
    """Progress that stops the process (an exception) once `epochs` epochs were saved and logged."""

    def __init__(self, epochs: int) -> None:
        super().__init__(None, show=False)
        self.left = epochs

    def epoch(self, *args, **kwargs) -> None:
        super().epoch(*args, **kwargs)
        self.left -= 1
        if self.left == 0:
            raise Killed


def _tiny() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 8)
    images = (rng.integers(0, 60, (24, 16, 16, 3)) + 60 * labels[:, None, None, None]).astype(np.uint8)
    return images, labels


def _train(tmp: Path, epochs: int, progress: Progress, hook=None) -> tuple[torch.nn.Module, MixupBootLoss]:
    torch.manual_seed(0)
    images, labels = _tiny()
    rt = make_runtime("cpu", "fp32")
    net = build_network(ModelConfig(stem="standard"), image_size=16, num_classes=3, device_type="cpu")
    data = TrainSet.from_numpy(images, labels, rt.device)
    loss = classification_loss(CFG, num_samples=24, num_classes=3, labels=labels)
    assert isinstance(loss, MixupBootLoss)
    train_classifier(net, data, data.labels, loss, CFG, Normalisation.of(images), rt, epochs=epochs,
                     rng=Rng.for_stream(1, "train", rt.device), last_ckpt=tmp / "train.last.pt", progress=progress,
                     end_of_epoch=hook)
    return net, loss


def test_refits_after_every_epoch_but_the_last_and_shares_the_predictions(tmp_path: Path, monkeypatch) -> None:
    from engine.train import classify

    calls: list[int] = []
    real_predict = classify.predict
    monkeypatch.setattr(classify, "predict", lambda *a, **k: calls.append(1) or real_predict(*a, **k))
    seen: list[tuple[int, tuple[int, ...]]] = []

    def hook(epoch: int, probs) -> dict[str, float]:
        seen.append((epoch, probs().shape))
        probs()  # a second call does not predict again
        return {}

    _, loss = _train(tmp_path, 3, Progress(None, show=False), hook)
    assert loss.refits == 2  # after epochs 1 and 2; the last epoch's fit would serve no epoch
    assert seen == [(0, (24, 3)), (1, (24, 3)), (2, (24, 3))]
    assert len(calls) == 3  # one evaluation pass per epoch, shared by the mixture and the hook
    assert 0.0 < float(loss.noisy_prob.max()) < 1.0


def test_training_is_deterministic_and_resumes_to_the_same_result(tmp_path: Path) -> None:
    straight_net, straight_loss = _train(tmp_path / "a", 3, Progress(None, show=False))
    again_net, _ = _train(tmp_path / "b", 3, Progress(None, show=False))
    for p, q in zip(straight_net.state_dict().values(), again_net.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)

    with pytest.raises(Killed):
        _train(tmp_path / "c", 3, KillAfter(2))  # killed after epoch 2 was saved: one refit done
    resumed_net, resumed_loss = _train(tmp_path / "c", 3, Progress(None, show=False))
    assert resumed_loss.refits == straight_loss.refits == 2
    torch.testing.assert_close(resumed_loss.noisy_prob, straight_loss.noisy_prob, rtol=0, atol=0)
    for p, q in zip(straight_net.state_dict().values(), resumed_net.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


@pytest.mark.slow
def test_fit_with_mixup_boot_writes_samples(tmp_path: Path) -> None:
    from conftest import write_pattern_folder

    from engine.cli import main as cli_main

    data = write_pattern_folder(tmp_path / "data")
    run = tmp_path / "run"
    code = cli_main(["fit", str(data), "--run-dir", str(run), "--device", "cpu", "--pretrain-epochs", "1",
                     "--epochs", "3", "--batch-size", "8", "--image-size", "16", "--seed", "3", "--quiet",
                     "--loss", "mixup-boot", "--set",
                     "classify.boot_target=soft"])
    assert code == 0
    samples = pd.read_csv(run / "samples.csv")
    assert len(samples) == 36 and samples["clean_prob"].between(0, 1).all()
    cfg = json.loads((run / "config.json").read_text())["classify"]
    assert (cfg["loss"], cfg["boot_target"]) == ("mixup-boot", "soft")
    events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines() if x.strip()]
    train = [e for e in events if e.get("kind") == "epoch" and e.get("stage") == "train"]
    assert [("bmm_noisy_share" in e) for e in train] == [True, True, False]
    assert (run / "metrics.json").exists()  # the folder's truth.csv


def test_the_config_refuses_settings_no_fit_can_use() -> None:
    from engine import config as C

    base = C.RunConfig()
    for key, value, message in [("classify.loss", "mixup", "one of"), ("classify.mixup_alpha", 0.0, "mixup_alpha"),
                                ("classify.boot_warmup", 1.0, "boot_warmup"),
                                ("classify.boot_target", "medium", "boot_target"),
                                ("classify.boot_reg", -1.0, "boot_reg"),
                                ("classify.bmm_percentiles", [90, 10], "bmm_percentiles")]:
        with pytest.raises(C.ConfigError, match=message):
            C.with_overrides(base, {key: value})
    ok = C.with_overrides(base, {"classify.loss": "mixup-boot", "classify.boot_target": "soft"})
    assert ok.classify == replace(base.classify, loss="mixup-boot", boot_target="soft")



@pytest.mark.parametrize(("share", "epochs", "warmup"), [(1 / 3, 12, 4), (1 / 3, 30, 10), (1 / 3, 3, 1), (0.0, 5, 1),
                                                         (0.5, 4, 2)])
def test_the_warm_up_is_a_share_of_the_epochs(share: float, epochs: int, warmup: int) -> None:
    from engine.train.classify import boot_warmup_epochs

    assert boot_warmup_epochs(replace(CFG, boot_warmup=share), epochs) == warmup
