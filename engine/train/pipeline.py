"""The stage graph of a run, with resume.

    fit       = prepare -> pretrain -> warmup -> train -> predict -> split -> embed      (phase a + b1)
    finetune  = supcon -> head -> refresh                                               (phase b2, b3)

The training stages end by writing their checkpoint atomically and are skipped when it exists; an
interrupted one resumes from its `<stage>.last.pt` epoch checkpoint. So `fit --resume` after a
kill -9, and re-running a finished run with the same config, redo no training. The cheap stages
after it (split, embed) are recomputed from the saved predictions.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from engine import config as config_mod
from engine.config import RunConfig
from engine.data.cache import PreparedData, is_prepared, load_prepared, prepare
from engine.data.intake import DatasetRecord, IntakeError, IntakeLimits, scan
from engine.errors import UserError
from engine.method.augment import BatchAugment
from engine.method.embed import umap_2d
from engine.method.losses import classification_loss
from engine.method.models import Network, build_network
from engine.method.selection import SplitResult, fit_gmm_split, normalise_losses, per_class_summary, suspicion
from engine.review.decisions import Decision, load_decisions
from engine.review.export import corrected_labels
from engine.review.metrics import detection_metrics, load_truth
from engine.runs.atomic import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_npy,
    atomic_write_npz,
    atomic_write_text,
    read_json,
)
from engine.runs.progress import Progress
from engine.runs.rundir import RunDir
from engine.train.checkpoint import load_checkpoint, save_checkpoint
from engine.train.classify import (
    Normalisation,
    Predictions,
    accuracy,
    encode,
    per_sample_ce,
    predict,
    train_classifier,
    warmup_head,
)
from engine.train.device import Runtime, make_runtime, seed_everything
from engine.train.finetune import finetune_supcon, finetune_targets
from engine.train.pretrain import pretrain_simclr
from engine.train.trainset import TrainSet

FINETUNE_STAGES = ("supcon", "head", "refresh")


@dataclass
class Context:
    run: RunDir
    cfg: RunConfig
    rt: Runtime
    progress: Progress
    prepared: PreparedData
    data: TrainSet
    norm: Normalisation
    truth: np.ndarray | None
    test: TrainSet | None

    @property
    def classes(self) -> tuple[str, ...]:
        return self.prepared.classes

    def new_network(self) -> Network:
        net = build_network(self.cfg.model, image_size=self.cfg.data.image_size, num_classes=len(self.classes),
                            device_type=self.rt.device.type).to(self.rt.device)
        if self.rt.channels_last:
            net = net.to(memory_format=torch.channels_last)
        return net


# ============================================================================================ sources


def write_source(run: RunDir, record: DatasetRecord, *, data: Path, truth: Path | None, test: Path | None) -> None:
    atomic_write_json(run.source, {
        "data": str(Path(data).resolve()),
        "root": str(Path(record.root).resolve()),
        "kind": record.kind,
        "truth": str(Path(truth).resolve()) if truth else None,
        "test": str(Path(test).resolve()) if test else None,
        "classes": list(record.classes),
    })


def _prepare_stage(run: RunDir, record: DatasetRecord, cfg: RunConfig, progress: Progress) -> PreparedData:
    size = cfg.data.image_size
    if is_prepared(run.data, record, size):
        progress.stage_skipped("prepare", "decoded cache is up to date")
        return load_prepared(run.data)
    if (run.data / "images.npy").exists() and run.checkpoints.exists():
        raise IntakeError(f"the images in {record.source} changed since this run started; start a new --run-dir")
    progress.stage_start("prepare", total=len(record.samples), unit="img")
    done = [0]

    def tick(n: int, total: int) -> None:
        progress.advance(n - done[0], images=n - done[0])
        done[0] = n

    prepared = prepare(record, run.data, image_size=size, progress=tick, workers=cfg.data.prepare_workers)  # refuses < 2 classes itself
    progress.stage_end()
    return prepared


def _test_set(run: RunDir, test: Path | None, classes: tuple[str, ...], cfg: RunConfig, rt: Runtime) -> TrainSet | None:
    if test is None:
        return None
    # One class is a fine test set; a zipped one is extracted inside the run (a temp folder would be left
    # behind by every invocation, and the cache below keeps pointing at its files).
    record = scan(Path(test), check="header", limits=IntakeLimits(min_classes=1), extract_to=run.path / "test_source")
    unknown = sorted(set(record.classes) - set(classes))
    if unknown:
        raise IntakeError(f"the test folder has classes the training data lacks: {', '.join(unknown)}")
    out = run.path / "test_data"
    prepared = load_prepared(out) if is_prepared(out, record, cfg.data.image_size) else prepare(
        record, out, image_size=cfg.data.image_size)
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[prepared.classes[j]] for j in prepared.labels], dtype=np.int64)
    return TrainSet.from_numpy(prepared.images, labels, rt.device)


def open_context(run: RunDir, cfg: RunConfig, record: DatasetRecord, *, truth: Path | None, test: Path | None,
                 progress: Progress, rt: Runtime | None = None, truth_optional: bool = False) -> Context:
    """Prepare (or reuse) the decoded cache and load everything the stages share.

    truth_optional: the truth file was found in the data folder, not asked for; an unusable one is
    then reported and ignored instead of failing the run.
    """
    rt = rt or make_runtime(cfg.device, cfg.precision)
    seed_everything(cfg.seed)
    prepared = _prepare_stage(run, record, cfg, progress)
    data = TrainSet.from_numpy(prepared.images, prepared.labels, rt.device, memory_budget_gb=cfg.data.memory_budget_gb)
    return Context(run, cfg, rt, progress, prepared, data, Normalisation.of(prepared.images),
                   _truth(truth, prepared.paths, prepared.classes, progress, optional=truth_optional),
                   _test_set(run, test, prepared.classes, cfg, rt))


def _truth(path: Path | None, paths: tuple[str, ...], classes: tuple[str, ...], progress: Progress, *,
           optional: bool) -> np.ndarray | None:
    if path is None:
        return None
    try:
        return load_truth(path, paths, classes)
    except UserError as e:
        if not optional:
            raise
        progress.note(f"ignoring {path}: {e}")
        return None


# ============================================================================================ phase a


def _augment(ctx: Context) -> BatchAugment:
    return BatchAugment(ctx.cfg.augment, out_size=ctx.cfg.data.image_size, mean=ctx.norm.mean, std=ctx.norm.std)


def _final_ckpt(ctx: Context, stage: str, net: Network, **extra: object) -> None:
    save_checkpoint(ctx.run.checkpoint(stage), {"net": net.state_dict(), "stage": stage,
                                                "config": config_mod.to_dict(ctx.cfg), **extra})
    ctx.run.checkpoint(stage, last=True).unlink(missing_ok=True)
    ctx.run.mark_stage_done(stage)


def _load_net(ctx: Context, net: Network, stage: str) -> Network:
    net.load_state_dict(load_checkpoint(ctx.run.checkpoint(stage), ctx.rt.device)["net"])
    return net


def stage_pretrain(ctx: Context, net: Network) -> None:
    p = ctx.cfg.pretrain
    if not p.enabled or p.epochs == 0:
        ctx.progress.stage_skipped("pretrain", "pre-training is off (--no-pretrain)")
        return
    if ctx.run.checkpoint("pretrain").exists():
        ctx.progress.stage_skipped("pretrain", "already done")
        _load_net(ctx, net, "pretrain")
        return
    pretrain_simclr(net, ctx.data, p, _augment(ctx), ctx.rt, seed=ctx.cfg.seed,
                    last_ckpt=ctx.run.checkpoint("pretrain", last=True), progress=ctx.progress)
    _final_ckpt(ctx, "pretrain", net)


def stage_warmup(ctx: Context, net: Network, loss_fn: torch.nn.Module) -> None:
    c = ctx.cfg.classify
    if not ctx.cfg.pretrain.enabled or ctx.cfg.pretrain.epochs == 0 or c.warmup_epochs == 0:
        ctx.progress.stage_skipped("warmup", "no pre-trained encoder to warm up on")
        return
    if ctx.run.checkpoint("warmup").exists():
        ctx.progress.stage_skipped("warmup", "already done")
        state = load_checkpoint(ctx.run.checkpoint("warmup"), ctx.rt.device)
        net.load_state_dict(state["net"])
        loss_fn.load_state_dict(state["loss"])
        return
    features = encode(net, ctx.data, ctx.norm, ctx.rt)
    warmup_head(net, features, ctx.data.labels, loss_fn, c, ctx.rt, epochs=c.warmup_epochs, seed=ctx.cfg.seed + 1,
                last_ckpt=ctx.run.checkpoint("warmup", last=True), progress=ctx.progress)
    _final_ckpt(ctx, "warmup", net, loss=loss_fn.state_dict())


def _loss_history_path(ctx: Context) -> Path:
    return ctx.run.checkpoints / "train_losses.npz"


def stage_train(ctx: Context, net: Network, loss_fn: torch.nn.Module) -> None:
    c = ctx.cfg.classify
    if ctx.run.checkpoint("train").exists():
        ctx.progress.stage_skipped("train", "already done")
        _load_net(ctx, net, "train")
        return
    k = ctx.cfg.split.average_last
    hist_path = _loss_history_path(ctx)

    def end_of_epoch(epoch: int) -> dict[str, float]:
        out: dict[str, float] = {}
        if epoch >= c.epochs - k:  # per-sample losses of the last k epochs feed the mixture
            probs = predict(net, ctx.data, ctx.norm, ctx.rt, with_features=False).probs
            rows = _read_history(hist_path, epoch)
            rows.append(per_sample_ce(probs, ctx.prepared.labels))
            atomic_write_npz(hist_path, losses=np.stack(rows), upto=np.array(epoch + 1))
            out["train_acc_given"] = float((probs.argmax(1) == ctx.prepared.labels).mean())
        if ctx.test is not None:
            out["test_acc"] = accuracy(net, ctx.test, ctx.norm, ctx.rt)
        return out

    train_classifier(net, ctx.data, ctx.data.labels, loss_fn, c, ctx.norm, ctx.rt, epochs=c.epochs,
                     seed=ctx.cfg.seed + 2, last_ckpt=ctx.run.checkpoint("train", last=True), progress=ctx.progress,
                     end_of_epoch=end_of_epoch)
    _final_ckpt(ctx, "train", net)


def _read_history(path: Path, before_epoch: int) -> list[np.ndarray]:
    if not path.exists():
        return []
    z = np.load(path)
    keep = z["losses"][: max(0, len(z["losses"]) - (int(z["upto"]) - before_epoch))]
    return list(keep)


def stage_predict(ctx: Context, net: Network) -> Predictions:
    path = ctx.run.predictions
    if path.exists() and "predict" in ctx.run.completed_stages():
        z = np.load(path)
        ctx.progress.stage_skipped("predict", "already done")
        return Predictions(z["probs"], z["features"])
    ctx.progress.stage_start("predict", total=1, unit="pass")
    preds = predict(net, ctx.data, ctx.norm, ctx.rt)
    losses = per_sample_ce(preds.probs, ctx.prepared.labels)
    hist = _loss_history_path(ctx)
    history = np.load(hist)["losses"] if hist.exists() else losses[None]
    atomic_write_npz(path, probs=preds.probs, features=preds.features, losses=history)
    ctx.progress.advance(1, images=len(ctx.data))
    ctx.progress.stage_end()
    ctx.run.mark_stage_done("predict")
    return preds


def stage_split(ctx: Context, preds: Predictions, losses: np.ndarray, *, phase: str) -> SplitResult:
    """Fit the mixture, write samples.csv, split.json and (with a truth file) metrics.json."""
    ctx.progress.stage_start("split", total=1, unit="fit")
    s = ctx.cfg.split
    result = fit_gmm_split(normalise_losses(losses), threshold=s.threshold, seed=ctx.cfg.seed, max_iter=s.max_iter,
                           tol=s.tol, reg_covar=s.reg_covar, covariance=s.covariance)
    write_samples(ctx, preds, losses[-1] if losses.ndim == 2 else losses, result)
    atomic_write_json(ctx.run.split, {
        "means": list(result.means), "stds": list(result.stds), "weights": list(result.weights),
        "threshold": result.threshold, "loss_threshold": result.loss_threshold,
        "n_flagged": int(result.flagged.sum()), "n": len(result.flagged), "degenerate": result.degenerate,
        "per_class": per_class_summary(result.flagged, ctx.prepared.labels, ctx.classes), "phase": phase,
    })
    write_metrics(ctx, phase)
    ctx.progress.advance(1)
    ctx.progress.stage_end()
    ctx.run.mark_stage_done("split")
    return result


def write_samples(ctx: Context, preds: Predictions, loss: np.ndarray, split: SplitResult) -> None:
    classes = np.array(ctx.classes, dtype=object)
    given = ctx.prepared.labels
    probs = preds.probs
    top = np.argsort(-probs, axis=1, kind="stable")[:, :3]
    pseudo = top[:, 0]
    rows = np.arange(len(given))
    df = pd.DataFrame({
        "index": rows,
        "id": list(ctx.prepared.ids),
        "path": list(ctx.prepared.paths),
        "given_label": classes[given],
        "predicted_label": classes[pseudo],
        "confidence": probs[rows, pseudo].round(6),
        "loss": np.round(loss, 6),
        "loss_norm": np.round(split.loss_norm, 6),
        "clean_prob": np.round(split.clean_prob, 10),  # 1e-4 tie-break steps must survive the CSV
        "flagged": split.flagged.astype(int),
        "suggested_label": classes[pseudo],
        "suggested_prob": probs[rows, pseudo].round(6),
        "given_prob": probs[rows, given].round(6),
        "suspicion": np.round(suspicion(split.clean_prob, probs, given), 6),
    })
    for k in range(min(3, probs.shape[1])):
        df[f"top{k + 1}_label"] = classes[top[:, k]]
        df[f"top{k + 1}_prob"] = probs[rows, top[:, k]].round(6)
    if ctx.truth is not None:
        df["true_label"] = ctx.truth
    atomic_write_text(ctx.run.samples, df.to_csv(index=False, lineterminator="\n"))


def write_metrics(ctx: Context, phase: str) -> dict | None:
    if ctx.truth is None:
        return None
    s = pd.read_csv(ctx.run.samples, dtype={"path": str, "given_label": str, "predicted_label": str}, keep_default_na=False)
    corrected = corrected_labels(ctx.run.path)
    label = corrected["label"].where(corrected["status"] != "discarded", None)
    m = detection_metrics(given=s["given_label"].to_numpy(object), true=ctx.truth, flagged=s["flagged"].to_numpy(),
                          clean_prob=s["clean_prob"].to_numpy(float), predicted=s["predicted_label"].to_numpy(object),
                          corrected=label.to_numpy(object))
    m = {"phase": phase, **m}
    atomic_write_json(ctx.run.metrics, m)
    return m


def stage_embed(ctx: Context, features: np.ndarray) -> None:
    if not ctx.cfg.embed.enabled:
        ctx.run.umap.unlink(missing_ok=True)  # a stale map from an earlier phase would mislead
        ctx.progress.stage_skipped("embed", "embedding map turned off (embed.enabled=false)")
        return
    ctx.progress.stage_start("embed", total=1, unit="map")
    try:
        coords = umap_2d(features, ctx.cfg.embed, seed=ctx.cfg.seed)
        atomic_write_npy(ctx.run.umap, coords.astype(np.float32))
    except Exception as e:  # the map is evidence, not a result: a failure must not fail the run
        ctx.run.umap.unlink(missing_ok=True)  # ... nor leave an older phase's map looking current
        ctx.progress.note(f"embedding map skipped: {type(e).__name__}: {e}")
    ctx.progress.advance(1, images=len(features))
    ctx.progress.stage_end()
    ctx.run.mark_stage_done("embed")


def run_fit(ctx: Context) -> dict:
    """Phase (a) and the split: every stage, skipping those already done."""
    t0 = time.perf_counter()
    if "refresh" in ctx.run.completed_stages():
        # Phase (b) has replaced the predictions; phase (a) is finished and must not be re-derived from them.
        ctx.progress.stage_skipped("fit", "phase (a) is finished and the run is fine-tuned")
        return _summary_from_disk(ctx, "finetune", time.perf_counter() - t0)
    net = ctx.new_network()
    loss_fn = classification_loss(ctx.cfg.classify, num_samples=len(ctx.data), num_classes=len(ctx.classes))
    loss_fn = loss_fn.to(ctx.rt.device)
    stage_pretrain(ctx, net)
    stage_warmup(ctx, net, loss_fn)
    stage_train(ctx, net, loss_fn)
    preds = stage_predict(ctx, net)
    losses = np.load(ctx.run.predictions)["losses"]
    stage_split(ctx, preds, losses, phase="fit")
    stage_embed(ctx, preds.features)
    return _summary_from_disk(ctx, "fit", time.perf_counter() - t0)


def _summary_from_disk(ctx: Context, phase: str, seconds: float) -> dict:
    """Headline numbers of the run as written (samples.csv, metrics.json), plus test accuracy."""
    split = read_json(ctx.run.split, {}) or {}
    out: dict = {"kind": "summary", "phase": phase, "images": len(ctx.data), "classes": len(ctx.classes),
                 "flagged": int(split.get("n_flagged", 0)), "seconds": round(seconds, 1),
                 "stem": ctx.cfg.model.stem, "device": str(ctx.rt.device)}
    if ctx.truth is not None:
        metrics = read_json(ctx.run.metrics, {}) or {}
        out.update({k: metrics.get(k) for k in ("precision", "recall", "f1", "auroc", "corrected_accuracy",
                                                   "pseudo_label_accuracy", "given_label_accuracy")})
    if ctx.test is not None:
        net = _load_net(ctx, ctx.new_network(), "head" if phase == "finetune" else "train")
        out["test_acc"] = round(accuracy(net, ctx.test, ctx.norm, ctx.rt), 4)
    ctx.run.append_event(**out)
    return out


# ============================================================================================ phase b


def finetune_fingerprint(decisions: dict[str, Decision], cfg: RunConfig) -> str:
    """Identifies what phase (b) depends on: the review decisions and the settings."""
    settings = config_mod.to_dict(replace(cfg, finetune_after_fit=False))  # how it was invoked does not matter
    blob = json.dumps([sorted((p, d.action, d.label) for p, d in decisions.items()), settings])
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def snapshot_phase_a(run: RunDir) -> None:
    """Keep phase (a)'s outputs the first time phase (b) runs, for before/after and re-runs."""
    pairs = [(run.samples, run.samples_before), (run.predictions, run.path / "predictions_phase_a.npz"),
             (run.metrics, run.path / "metrics_phase_a.json")]
    for src, dst in pairs:
        if src.exists() and not dst.exists():
            atomic_write_bytes(dst, src.read_bytes())  # a kill mid-copy must not leave half a snapshot


def reset_finetune(run: RunDir, fingerprint: str) -> bool:
    """Decide how phase (b) starts. Returns True when it is already done with exactly these decisions
    and settings (nothing to do). Otherwise it resumes an interrupted phase (b) with the same
    fingerprint, or clears its checkpoints and starts afresh from phase (a)."""
    meta = read_json(run.checkpoints / "finetune.json", {}) or {}
    if meta.get("fingerprint") == fingerprint:
        return "refresh" in run.completed_stages()
    for stage in (*FINETUNE_STAGES, "head_full"):
        run.checkpoint(stage).unlink(missing_ok=True)
        run.checkpoint(stage, last=True).unlink(missing_ok=True)
    run.unmark_stages(list(FINETUNE_STAGES))
    atomic_write_json(run.checkpoints / "finetune.json", {"fingerprint": fingerprint})
    return False


def run_finetune(ctx: Context) -> dict:
    """Phase (b): weighted SupCon on pseudo-labels and decisions, a fresh head, refreshed flags."""
    t0 = time.perf_counter()
    run, cfg = ctx.run, ctx.cfg
    if not run.checkpoint("train").exists() or "split" not in run.completed_stages():
        raise UserError(f"{run.path} has no finished phase (a); run (or resume) `python -m engine fit` first")
    snapshot_phase_a(run)
    decisions = load_decisions(run.decisions)
    phase_a = np.load(run.path / "predictions_phase_a.npz")
    # Targets first: a decision the run cannot use fails here, before any phase (b) state is touched.
    targets = finetune_targets(phase_a["probs"], ctx.prepared.paths, ctx.classes, decisions, cfg.split,
                               min_weight=cfg.finetune.min_weight, seed=cfg.seed)
    if reset_finetune(run, finetune_fingerprint(decisions, cfg)):
        ctx.progress.stage_skipped("finetune", "already fine-tuned with these decisions and settings")
        return _summary_from_disk(ctx, "finetune", time.perf_counter() - t0)
    # Phase (b) must not depend on what ran before it in this process (`fit --finetune` vs `finetune`).
    seed_everything(cfg.seed + 1000)
    ctx.progress.note(f"fine-tuning with {targets.n_decided} reviewed and {targets.n_discarded} discarded images")
    net = _load_net(ctx, ctx.new_network(), "train")
    if run.checkpoint("supcon").exists():
        ctx.progress.stage_skipped("supcon", "already done")
        _load_net(ctx, net, "supcon")
    elif cfg.finetune.epochs > 0:
        finetune_supcon(net, ctx.data, targets, cfg.finetune, _augment(ctx), ctx.rt, seed=cfg.seed,
                        last_ckpt=run.checkpoint("supcon", last=True), progress=ctx.progress)
        _final_ckpt(ctx, "supcon", net)
    else:
        ctx.progress.stage_skipped("supcon", "finetune.epochs is 0")
    net.new_classifier(len(ctx.classes))
    net.to(ctx.rt.device)
    stage_head(ctx, net, targets)
    preds = predict(net, ctx.data, ctx.norm, ctx.rt)
    losses = per_sample_ce(preds.probs, ctx.prepared.labels)
    atomic_write_npz(run.predictions, probs=preds.probs, features=preds.features, losses=losses[None])
    stage_split(ctx, preds, losses[None], phase="finetune")
    stage_embed(ctx, preds.features)
    run.mark_stage_done("refresh")
    return _summary_from_disk(ctx, "finetune", time.perf_counter() - t0)


def stage_head(ctx: Context, net: Network, targets) -> None:
    """(b3) a fresh classifier head on the fine-tuned encoder, trained on the targets: the head alone on
    frozen features first, then encoder + head for `full_epochs` (discarded images left out)."""
    run, f = ctx.run, ctx.cfg.finetune
    if run.checkpoint("head").exists():
        ctx.progress.stage_skipped("head", "already done")
        _load_net(ctx, net, "head")
        return
    trusted = targets.keep & (targets.weights >= f.head_min_weight)
    kept = np.flatnonzero(trusted)
    if len(kept) < 2:
        raise UserError(f"only {len(kept)} image(s) left to train the new head on (discarded, or pseudo-label "
                        f"weight below finetune.head_min_weight={f.head_min_weight}); it needs at least two")
    labels = torch.as_tensor(targets.labels[kept], device=ctx.rt.device)
    loss_fn = classification_loss(ctx.cfg.classify, num_samples=len(kept), num_classes=len(ctx.classes))
    loss_fn = loss_fn.to(ctx.rt.device)
    if not run.checkpoint("head_full", last=True).exists():  # else the warm-up is done and full training resumes
        features = encode(net, ctx.data, ctx.norm, ctx.rt).index_select(0, torch.as_tensor(kept, device=ctx.rt.device))
        warmup_head(net, features, labels, loss_fn, ctx.cfg.classify, ctx.rt, epochs=f.head_epochs,
                    seed=ctx.cfg.seed + 3, last_ckpt=run.checkpoint("head", last=True), progress=ctx.progress,
                    stage="head", lr=f.head_lr)
    if f.full_epochs > 0:
        sub = ctx.data.subset(trusted)
        full_cfg = replace(ctx.cfg.classify, lr=f.full_lr)
        train_classifier(net, sub, labels, loss_fn, full_cfg, ctx.norm, ctx.rt, epochs=f.full_epochs,
                         seed=ctx.cfg.seed + 4, last_ckpt=run.checkpoint("head_full", last=True),
                         progress=ctx.progress, stage="head")
    _final_ckpt(ctx, "head", net)
    run.checkpoint("head_full", last=True).unlink(missing_ok=True)
