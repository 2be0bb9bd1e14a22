"""On a CUDA GPU: bf16 autocast, the images resident on the GPU (or in host memory, or streamed), the
out-of-memory message, and resume after a kill. Every test here skips itself without CUDA; bench/gpu_check.sh
runs them (`pytest -m gpu`) the first time a GPU machine is at hand."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.config import PretrainConfig, RunConfig
from engine.data.cache import prepare
from engine.data.intake import scan
from engine.method.augment import BatchAugment
from engine.method.models import build_network
from engine.runs.progress import Progress
from engine.train.checkpoint import load_checkpoint
from engine.train.classify import Normalisation
from engine.train.device import autocast, make_runtime
from engine.train.pretrain import pretrain_simclr
from engine.train.trainset import TrainSet

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.device("cuda")


def _folder(root: Path, n: int, size: int = 32) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        (root / "abc"[i % 3]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / "abc"[i % 3] / f"{i:05d}.png")
    return root


def _pretrain_parts(prepared, rt):
    cfg = RunConfig()
    norm = Normalisation.of(prepared.images)
    aug = BatchAugment(cfg.augment, out_size=prepared.image_size, mean=norm.mean, std=norm.std)
    net = build_network(replace(cfg.model, stem="small"), image_size=prepared.image_size, num_classes=3,
                        device_type="cuda").to(CUDA).to(memory_format=torch.channels_last)
    return net, aug


def test_bf16_autocast_trains_the_contrastive_stage(tmp_path):
    rt = make_runtime("cuda")
    assert rt.amp_dtype == torch.bfloat16 and rt.classifier_amp_dtype == torch.bfloat16 and rt.channels_last
    prepared = prepare(scan(_folder(tmp_path / "data", 96), check="header"), tmp_path / "cache", image_size=32)
    net, aug = _pretrain_parts(prepared, rt)
    data = TrainSet.from_numpy(prepared.images, prepared.labels, CUDA)
    x = aug(data.batch(torch.arange(8)))
    with autocast(rt):
        assert net.project(x).dtype == torch.bfloat16
    before = {k: v.clone() for k, v in net.state_dict().items()}
    history = pretrain_simclr(net, data, PretrainConfig(epochs=2, batch_size=32), aug, rt, seed=1,
                              last_ckpt=tmp_path / "pretrain.last.pt", progress=Progress.silent())
    assert len(history) == 2 and all(np.isfinite(h.loss) for h in history)
    changed = [k for k, v in net.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert len(changed) > 10 and all(p.device.type == "cuda" for p in net.parameters())


def test_images_on_the_gpu_in_host_memory_or_streamed_give_the_same_batches(tmp_path, monkeypatch):
    prepared = prepare(scan(_folder(tmp_path / "data", 60), check="header"), tmp_path / "cache", image_size=32)
    on_gpu = TrainSet.from_numpy(prepared.images, prepared.labels, CUDA)
    streamed = TrainSet.from_numpy(prepared.images, prepared.labels, CUDA, memory_budget_gb=1e-9)
    real = torch.cuda.mem_get_info
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000, real(device)[1]))  # "no room"
    in_host = TrainSet.from_numpy(prepared.images, prepared.labels, CUDA)
    monkeypatch.undo()
    assert (on_gpu.placement, in_host.placement, streamed.placement) == ("gpu", "memory", "streamed")
    expected = torch.from_numpy(np.array(prepared.images)).permute(0, 3, 1, 2)
    keep = np.arange(60) % 4 != 1
    for index in (torch.tensor([59, 0, 31, 7]), torch.arange(10, 50), torch.randperm(60)[:17]):
        batches = [d.batch(index) for d in (on_gpu, in_host, streamed)]
        assert all(b.device.type == "cuda" and b.dtype == torch.uint8 and b.is_contiguous() for b in batches)
        assert all(torch.equal(b.cpu(), expected[index]) for b in batches)
        subs = [d.subset(keep).batch(index[index < 45]) for d in (on_gpu, in_host, streamed)]
        assert all(torch.equal(s.cpu(), expected[np.flatnonzero(keep)][index[index < 45]]) for s in subs)
    assert on_gpu.labels.device.type == "cuda" and torch.equal(on_gpu.labels.cpu(), torch.from_numpy(prepared.labels))


def test_out_of_memory_ends_the_run_with_the_batch_size_to_try(tmp_path, capsys):
    from engine.cli import main

    data = _folder(tmp_path / "data", 2048)
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(min(1.0, 2 * 2**30 / total))  # 2 GiB: far too little for batch 2048
    try:
        code = main(["fit", str(data), "--run-dir", str(tmp_path / "run"), "--device", "cuda", "--batch-size", "2048",
                     "--pretrain-epochs", "1", "--epochs", "1", "--set", "embed.enabled=false", "--quiet"])
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    err = capsys.readouterr().err
    assert code == 3, err[-2000:]
    assert "GPU out of memory during pre-training with batch size 2048" in err and "--batch-size 1024" in err
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "failed" and "--batch-size 1024" in status["error"]


def test_a_killed_gpu_run_resumes_and_its_checkpoints_load_on_a_cpu(tmp_path):
    data = _folder(tmp_path / "data", 3000)
    run = tmp_path / "run"
    args = ["--device", "cuda", "--pretrain-epochs", "20", "--epochs", "2", "--batch-size", "64", "--seed", "2",
            "--set", "embed.enabled=false", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-m", "engine", "fit", str(data), "--run-dir", str(run), *args], cwd=ROOT,
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run / "checkpoints" / "pretrain.last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.02)
    assert last.exists(), "pre-training never wrote an epoch checkpoint"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not (run / "checkpoints" / "pretrain.pt").exists()  # really interrupted mid-stage
    resumed = subprocess.run([sys.executable, "-m", "engine", "fit", str(data), "--run-dir", str(run), "--resume",
                              *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines() if x.strip().endswith("}")]
    pre = [e["epoch"] for e in events if e.get("kind") == "epoch" and e["stage"] == "pretrain"]
    # Each epoch trained once and logged once (an event a kill lost is logged by the resumed stage).
    assert pre == list(range(1, 21))
    state = load_checkpoint(run / "checkpoints" / "train.pt", "cpu")
    assert all(v.device.type == "cpu" for v in state["net"].values())
    assert json.loads((run / "config.json").read_text())["model"]["stem"] == "small"  # resolved, saved for a CPU
