"""Device choice and the out-of-memory message (no GPU needed to check the message)."""

from __future__ import annotations

import pytest
import torch

from engine.train.device import GpuOutOfMemory, make_runtime, oom_guard, resolve_device


def test_gpu_out_of_memory_becomes_one_actionable_sentence() -> None:
    with pytest.raises(GpuOutOfMemory, match=r"during pre-training with batch size 512.*--batch-size 256"):
        with oom_guard(512, "pre-training"):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_other_errors_pass_through_the_guard() -> None:
    with pytest.raises(ZeroDivisionError):
        with oom_guard(8, "training"):
            raise ZeroDivisionError


def test_cuda_asked_without_a_gpu_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA GPU is visible"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


@pytest.mark.parametrize(("precision", "native", "contrastive", "classifier"), [
    ("auto", True, torch.bfloat16, None), ("auto", False, None, None),
    ("fp32", True, None, None), ("bf16", False, torch.bfloat16, torch.bfloat16)])
def test_cpu_precision(monkeypatch: pytest.MonkeyPatch, precision: str, native: bool, contrastive, classifier) -> None:
    monkeypatch.setattr("engine.train.device.cpu_has_native_bf16", lambda: native)
    rt = make_runtime("cpu", precision)
    assert (rt.amp_dtype, rt.classifier_amp_dtype) == (contrastive, classifier) and rt.device.type == "cpu"
