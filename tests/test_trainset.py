"""engine.train.trainset: images held on the GPU, in memory or streamed from the cache file, always the same batches."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from engine import config as config_mod
from engine.config import PretrainConfig, RunConfig
from engine.data.cache import prepare
from engine.data.intake import scan
from engine.method.augment import BatchAugment
from engine.method.models import build_network
from engine.runs.progress import Progress
from engine.train import trainset
from engine.train.classify import Normalisation, predict
from engine.train.device import make_runtime
from engine.train.loop import Rng
from engine.train.pretrain import pretrain_simclr
from engine.train.trainset import TrainSet, choose_placement

CPU = torch.device("cpu")
TINY_BUDGET_GB = 1e-9  # a few bytes: any cache streams


def _cache(tmp_path, n: int = 24, size: int = 8, seed: int = 0):
    """A real images.npy (via prepare) of n random-pixel images in three classes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = tmp_path / "data"
    for i in range(n):
        folder = root / "abc"[i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return prepare(scan(root, check="header"), tmp_path / "cache", image_size=size, workers=1)


def _both(prepared):
    memory = TrainSet.from_numpy(prepared.images, prepared.labels, CPU)
    streamed = TrainSet.from_numpy(prepared.images, prepared.labels, CPU, memory_budget_gb=TINY_BUDGET_GB)
    assert (memory.placement, streamed.placement) == ("memory", "streamed")
    return memory, streamed


def test_streamed_batches_equal_the_in_memory_ones(tmp_path):
    prepared = _cache(tmp_path)
    memory, streamed = _both(prepared)
    assert len(streamed) == len(memory) == 24 and streamed.image_size == memory.image_size == 8
    assert torch.equal(streamed.labels, memory.labels) and streamed.device == CPU
    expected = torch.from_numpy(np.array(prepared.images)).permute(0, 3, 1, 2)
    for index in (torch.tensor([5, 0, 23, 7, 6]), torch.arange(3, 19), torch.tensor([4, 4, 1]),
                  torch.randperm(24, generator=torch.Generator().manual_seed(3))[:10], torch.tensor([], dtype=torch.long)):
        a, b = memory.batch(index), streamed.batch(index)
        assert a.dtype == b.dtype == torch.uint8 and a.shape == b.shape == (len(index), 3, 8, 8)
        assert b.is_contiguous() and torch.equal(a, b) and torch.equal(b, expected[index])


def test_subsets_of_a_streamed_set_read_the_right_rows(tmp_path):
    prepared = _cache(tmp_path)
    memory, streamed = _both(prepared)
    keep = np.zeros(24, bool)
    keep[[1, 2, 3, 10, 11, 20]] = True
    inner = np.array([True, False, True, True, False, True])
    for data in (memory, streamed):
        sub = data.subset(keep)
        assert len(sub) == 6 and sub.labels.tolist() == prepared.labels[keep].tolist()
        assert torch.equal(sub.batch(torch.tensor([3, 0, 5])), memory.batch(torch.tensor([10, 1, 20])))
        subsub = sub.subset(inner)  # rows 1, 3, 10, 20
        assert torch.equal(subsub.batch(torch.tensor([0, 1, 2, 3])), memory.batch(torch.tensor([1, 3, 10, 20])))
        assert subsub.placement == data.placement and subsub.store is data.store  # a view, no copy


def test_arrays_that_are_not_a_whole_cache_file_stream_too(tmp_path):
    prepared = _cache(tmp_path)
    images = np.asarray(prepared.images)
    part = prepared.images[4:]  # a memmap slice keeps its parent's file offset: it must not be read as a file
    in_ram = TrainSet.from_numpy(images.copy(), prepared.labels, CPU, memory_budget_gb=TINY_BUDGET_GB)
    sliced = TrainSet.from_numpy(part, prepared.labels[4:], CPU, memory_budget_gb=TINY_BUDGET_GB)
    index = torch.tensor([9, 0, 3])
    assert in_ram.placement == sliced.placement == "streamed"
    assert torch.equal(in_ram.batch(index), torch.from_numpy(images[[9, 0, 3]]).permute(0, 3, 1, 2))
    assert torch.equal(sliced.batch(index), torch.from_numpy(images[[13, 4, 7]]).permute(0, 3, 1, 2))


@pytest.fixture
def one_thread():
    """Tiny tensors gain nothing from a second thread, and on a shared machine busy-waiting OpenMP threads
    slow every step by an order of magnitude."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_streamed_and_in_memory_training_are_bit_identical(tmp_path, one_thread):
    prepared = _cache(tmp_path, n=32)
    memory, streamed = _both(prepared)
    rt = make_runtime("cpu", "fp32")
    norm = Normalisation.of(prepared.images)
    cfg = RunConfig()
    aug = BatchAugment(cfg.augment, out_size=8, mean=norm.mean, std=norm.std)
    pre = PretrainConfig(epochs=2, batch_size=8)
    results = []
    for name, data in (("memory", memory), ("streamed", streamed)):
        torch.manual_seed(0)
        net = build_network(replace(cfg.model, stem="standard"), image_size=8, num_classes=3, device_type="cpu")
        history = pretrain_simclr(net, data, pre, aug, rt, rng=Rng.for_stream(5, "pretrain", "cpu"), last_ckpt=tmp_path / f"{name}.last.pt",
                                  progress=Progress.silent())
        results.append((net.state_dict(), [h.loss for h in history], predict(net, data, norm, rt)))
    (w_mem, loss_mem, p_mem), (w_str, loss_str, p_str) = results
    assert loss_mem == loss_str and len(loss_mem) == 2
    assert w_mem.keys() == w_str.keys() and all(torch.equal(w_mem[k], w_str[k]) for k in w_mem)
    assert np.array_equal(p_mem.probs, p_str.probs) and np.array_equal(p_mem.features, p_str.features)


def test_placement_follows_the_budget(monkeypatch):
    gib = 2**30
    assert choose_placement(gib, CPU, 2.0) == "memory" and choose_placement(3 * gib, CPU, 2.0) == "streamed"
    monkeypatch.setattr(trainset, "free_host_bytes", lambda: 10 * gib)  # auto: half of the free memory
    assert choose_placement(5 * gib, CPU) == "memory" and choose_placement(5 * gib + 1, CPU) == "streamed"
    # CUDA: on the GPU within half its free memory (or the explicit budget, never more than is free),
    # else host memory under the same rules, else streamed.
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8 * gib, 16 * gib))
    cuda = torch.device("cuda")
    assert choose_placement(4 * gib, cuda) == "gpu" and choose_placement(4 * gib + 1, cuda) == "memory"
    assert choose_placement(5 * gib, cuda) == "memory" and choose_placement(6 * gib, cuda, 7.0) == "gpu"
    assert choose_placement(9 * gib, cuda, 20.0) == "memory"  # more than the GPU has free
    assert choose_placement(12 * gib, cuda) == "streamed" and choose_placement(3 * gib, cuda, 2.0) == "streamed"
    with pytest.raises(ValueError, match="memory_budget_gb must be >= 0"):
        choose_placement(1, CPU, -1.0)


def test_free_host_memory_is_measured():
    free = trainset.free_host_bytes()
    assert 0 < free < 2**50


def test_bad_rows_and_a_truncated_cache_are_clear_errors(tmp_path):
    prepared = _cache(tmp_path)
    streamed = TrainSet.from_numpy(prepared.images, prepared.labels, CPU, memory_budget_gb=TINY_BUDGET_GB)
    with pytest.raises(IndexError, match=r"out of range \[0, 24\)"):
        streamed.batch(torch.tensor([0, 24]))
    npy = tmp_path / "cache" / "images.npy"
    whole = npy.stat().st_size
    with open(npy, "r+b") as f:
        f.truncate(whole - 8 * 8 * 3 * 2)  # the last two images are gone
    with pytest.raises(OSError, match="ended early"):
        streamed.batch(torch.tensor([23]))
    assert streamed.batch(torch.tensor([0])).shape == (1, 3, 8, 8)


def test_a_whole_cache_loads_into_memory_in_chunks(tmp_path, monkeypatch):
    prepared = _cache(tmp_path, n=30)
    monkeypatch.setattr(trainset, "_LOAD_CHUNK_BYTES", 8 * 8 * 3 * 7)  # 7 images a chunk: 5 chunks, the last short
    data = TrainSet.from_numpy(prepared.images, prepared.labels, CPU)
    assert data.placement == "memory"
    assert torch.equal(data.store.images, torch.from_numpy(np.array(prepared.images)).permute(0, 3, 1, 2))


def test_memory_budget_and_prepare_workers_are_config_keys(tmp_path):
    cfg = config_mod.with_overrides(RunConfig(), {"data.memory_budget_gb": 2, "data.prepare_workers": 3})
    assert (cfg.data.memory_budget_gb, cfg.data.prepare_workers) == (2.0, 3)
    assert (RunConfig().data.memory_budget_gb, RunConfig().data.prepare_workers) == (0.0, 0)  # auto
    config_mod.save(cfg, tmp_path / "config.json")
    assert config_mod.load(tmp_path / "config.json") == cfg
    with pytest.raises(ValueError, match="data.memory_budget_gb must be >= 0"):
        config_mod.with_overrides(RunConfig(), {"data.memory_budget_gb": -0.5})
    with pytest.raises(ValueError, match="data.prepare_workers must be >= 0"):
        config_mod.with_overrides(RunConfig(), {"data.prepare_workers": -1})


@pytest.mark.slow
def test_a_fit_streamed_with_parallel_prepare_equals_the_default_fit(tmp_path, one_thread):
    from engine.cli import main

    _cache(tmp_path, n=30, size=16)  # writes tmp_path/data
    tiny = ["--device", "cpu", "--pretrain-epochs", "1", "--epochs", "1", "--batch-size", "8", "--image-size", "16",
            "--set", "classify.warmup_epochs=1", "--set", "embed.enabled=false", "--quiet"]
    default, tuned = tmp_path / "default", tmp_path / "tuned"
    assert main(["fit", str(tmp_path / "data"), "--run-dir", str(default), *tiny]) == 0
    assert main(["fit", str(tmp_path / "data"), "--run-dir", str(tuned), *tiny, "--set",
                 f"data.memory_budget_gb={TINY_BUDGET_GB}", "--set", "data.prepare_workers=2"]) == 0
    assert config_mod.load(tuned / "config.json").data.memory_budget_gb == TINY_BUDGET_GB
    assert (default / "data" / "images.npy").read_bytes() == (tuned / "data" / "images.npy").read_bytes()
    a, b = np.load(default / "predictions.npz"), np.load(tuned / "predictions.npz")
    assert sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)
    assert (default / "samples.csv").read_text() == (tuned / "samples.csv").read_text()
