"""The stages of a run, with resume; the table of stages (what each reads, writes, when it is done, its
seed streams) is engine.runs.stages.

    fit       = prepare -> pretrain -> warmup -> train -> predict -> split -> embed      (phase a + b1)
    finetune  = supcon -> head -> refresh                                               (phase b2, b3)

Every stage follows the table's one rule: a stage that is done (recorded in completed_stages, its files
present) or off in these settings is skipped; any other runs — an interrupted one continuing from its
epoch checkpoints — and records itself once its files are written. So `fit --resume` after a kill -9,
and a rerun with the same config, redo nothing that finished. Every random generator is seeded from
the run seed and the stream the table names (engine.runs.seeds).

Under torchrun (engine.train.distributed) every process runs these stages: rank 0 reads and writes the run
folder and takes every decision that depends on it (shared with `Dist.agree`); the others join once the
images are prepared (`follow`), train and predict with rank 0, and leave the mixture, the map and the
summary to it.
"""

from __future__ import annotations

import hashlib
import json
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from engine import config as config_mod
from engine.config import RunConfig
from engine.data.cache import PreparedData, cache_problem, is_prepared, load_prepared, prepare
from engine.data.intake import DatasetRecord, IntakeError, IntakeLimits, scan
from engine.errors import UserError
from engine.method.augment import BatchAugment
from engine.method.embed import umap_2d
from engine.method.evidence import evidence_columns
from engine.method.holdout import judge
from engine.method.losses import classification_loss
from engine.method.models import Network, build_network
from engine.method.neighbours import K as NEIGHBOURS_K
from engine.method.neighbours import nearest_neighbours
from engine.method.out_of_fold import out_of_fold_probs
from engine.method.relabel import RelabelEvidence, confident_relabels
from engine.method.selection import SplitResult, fit_gmm_split, normalise_losses, per_class_summary, suspicion
from engine.review import remembered
from engine.review.decisions import Decision, finetune_waits, load_decisions
from engine.review.export import corrected_labels
from engine.review.metrics import detection_metrics, load_truth
from engine.review.trusted import TrustedLabels, no_decisions, trusted_labels
from engine.runs import stages
from engine.runs.atomic import (
    DamagedFile,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_npy,
    atomic_write_npz,
    atomic_write_text,
    read_json,
)
from engine.runs.progress import SCORE_PASSES, TRAIN_PASSES, Planned, Progress, Span
from engine.runs.rundir import RunDir
from engine.runs.seeds import stream_seed
from engine.runs.stages import FINETUNE, FIT
from engine.train import weights
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
from engine.train.distributed import Dist, global_batch
from engine.train.finetune import FinetuneTargets, finetune_supcon, finetune_targets
from engine.train.loop import Rng
from engine.train.pretrain import pretrain_simclr
from engine.train.trainset import TrainSet, steps_per_epoch

FINETUNE_STAGES = stages.phase_stage_names(FINETUNE)


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

    @property
    def dist(self) -> Dist:
        return self.rt.dist

    def alone(self) -> Context:
        """This context for rank 0's work without the other processes (mixture, map, summary)."""
        return replace(self, rt=self.rt.alone())

    def seed(self, stream: str) -> int:
        """The seed of one of the run's named streams (engine.runs.stages declares them)."""
        return stream_seed(self.cfg.seed, stream)

    def rng(self, stream: str) -> Rng:
        return Rng.for_stream(self.cfg.seed, stream, self.rt.device)

    def trusted(self) -> TrustedLabels:
        """The labels to train and split with: the given ones, overruled by the run's review decisions
        (engine.review.trusted); read when a stage starts, so decisions a run starts with count in phase (a)."""
        if not self.run.decisions.exists():
            return no_decisions(self.prepared.labels)
        return trusted_labels(self.prepared.paths, self.prepared.labels, self.classes, load_decisions(self.run.decisions))

    def training_labels(self, trusted: TrustedLabels) -> tuple[TrainSet, torch.Tensor, torch.Tensor | None]:
        return training_images(self.data, trusted, self.rt.device)

    def new_network(self) -> Network:
        net = build_network(self.cfg.model, image_size=self.cfg.data.image_size, num_classes=len(self.classes),
                            device_type=self.rt.device.type).to(self.rt.device)
        if self.rt.channels_last:
            net = net.to(memory_format=torch.channels_last)
        return net


def training_images(data: TrainSet, trusted: TrustedLabels,
                    device: torch.device) -> tuple[TrainSet, torch.Tensor, torch.Tensor | None]:
    """The images that train (discarded ones left out), every image's trusted label, and the rows mapping
    the first onto the second (None when nothing is left out; the loss's per-image state stays sized for
    every image, so a discard never changes what ELR's targets are indexed by)."""
    labels = torch.as_tensor(trusted.labels, device=device)
    if not trusted.discarded.any():
        return data, labels, None
    rows = torch.as_tensor(np.flatnonzero(trusted.trains), device=device)
    return data.subset(trusted.trains), labels, rows


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
    # The cache is checked against itself first: a damaged cache is a damaged run file (redo prepare),
    # never "other images"; only an intact cache is compared with the data's fingerprint.
    problem = cache_problem(run.data)
    if problem is not None and "prepare" in run.completed_stages():
        name, reason = problem
        raise DamagedFile(run.data / name, reason)
    current = problem is None and is_prepared(run.data, record, size)
    if problem is None and not current and run.checkpoints.exists():
        raise IntakeError(f"the images in {record.source} changed since this run started; start a new --run-dir")
    if current and stages.is_done(run, "prepare"):
        progress.stage_skipped("prepare", "decoded cache is up to date", done=True)
        return load_prepared(run.data)
    progress.stage_start("prepare", total=len(record.samples), unit="img")
    if current:  # a complete cache of exactly this data, from before stages were recorded: nothing to decode
        prepared = load_prepared(run.data)
        progress.advance(len(record.samples), images=len(record.samples))
    else:
        done = [0]

        def tick(n: int, total: int) -> None:
            progress.advance(n - done[0], images=n - done[0])
            done[0] = n

        prepared = prepare(record, run.data, image_size=size, progress=tick,
                           workers=cfg.data.prepare_workers)  # refuses < 2 classes itself
    # The review memory (engine.review.remembered): hash every image, start with its remembered decisions.
    remembered.start_run(run.path, Path(record.root), prepared.paths, [prepared.classes[i] for i in prepared.labels],
                         prepared.classes, use_memory=cfg.review.memory, note=progress.note)
    progress.stage_end()
    stages.mark_done(run, "prepare")
    return prepared


def _test_set(run: RunDir, test: Path | None, classes: tuple[str, ...], cfg: RunConfig, rt: Runtime) -> TrainSet | None:
    if test is None:
        return None
    # One class is a fine test set; a zipped one is extracted inside the run (a temp folder would be left
    # behind by every invocation, and the cache below keeps pointing at its files).
    record = scan(Path(test), check="header", limits=IntakeLimits(min_classes=1), extract_to=run.test_source)
    unknown = sorted(set(record.classes) - set(classes))
    if unknown:
        raise IntakeError(f"the test folder has classes the training data lacks: {', '.join(unknown)}")
    out = run.test_data
    prepared = load_prepared(out) if is_prepared(out, record, cfg.data.image_size) else prepare(
        record, out, image_size=cfg.data.image_size)
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[prepared.classes[j]] for j in prepared.labels], dtype=np.int64)
    return TrainSet.from_numpy(prepared.images, labels, rt.device)


def open_context(run: RunDir, cfg: RunConfig, record: DatasetRecord, *, truth: Path | None, test: Path | None,
                 progress: Progress, rt: Runtime | None = None, truth_optional: bool = False,
                 phase: str = FIT) -> Context:
    """Prepare (or reuse) the decoded cache and load everything the stages share.

    truth_optional: the truth file was found in the data folder, not asked for; an unusable one is
    then reported and ignored instead of failing the run.
    phase: FIT begins phase (a) here, before its first stage (prepare) runs.
    """
    rt = rt or make_runtime(cfg.device, cfg.precision)
    seed_everything(stream_seed(cfg.seed, stages.PHASE_SEEDS[FIT]))  # the network's initial weights
    if phase == FIT:
        _begin_phase(run, cfg, progress, FIT, n=len(record.samples))
    prepared = _prepare_stage(run, record, cfg, progress)
    if rt.dist.enabled:  # the images are decoded: the other processes join (`follow`)
        progress.note(f"training with {rt.dist.world_size} processes; each takes 1/{rt.dist.world_size} of every "
                      "global batch")
        rt.dist.open({"cfg": config_mod.to_dict(cfg), "phase": phase, "torch_rng": torch.get_rng_state()})
    data = TrainSet.from_numpy(prepared.images, prepared.labels, rt.device, memory_budget_gb=cfg.data.memory_budget_gb)
    return Context(run, cfg, rt, progress, prepared, data, Normalisation.of(prepared.images),
                   _truth(truth, prepared.paths, prepared.classes, progress, optional=truth_optional),
                   _test_set(run, test, prepared.classes, cfg, rt))


def follow(run: RunDir, dist: Dist) -> bool:
    """A process other than rank 0 under torchrun: wait until rank 0 has prepared the images (`open_context`),
    then run the same stages with it. It reads the decoded cache, and the checkpoints rank 0 wrote after a
    barrier; it writes nothing. False when rank 0 ended before the work began (a refused command)."""
    start = dist.join()
    if start is None:
        return False
    cfg = config_mod.from_dict(start["cfg"])
    rt = make_runtime(cfg.device, cfg.precision, dist)
    seed_everything(stream_seed(cfg.seed, stages.PHASE_SEEDS[FIT]))
    torch.set_rng_state(start["torch_rng"])  # rank 0's, whatever its preparations drew from it
    prepared = load_prepared(run.data)
    data = TrainSet.from_numpy(prepared.images, prepared.labels, rt.device, memory_budget_gb=cfg.data.memory_budget_gb)
    ctx = Context(run, cfg, rt, Progress.silent(), prepared, data, Normalisation.of(prepared.images), None, None)
    if start["phase"] == FIT:
        run_fit(ctx)
        if not dist.agree(lambda: False):  # rank 0 says whether `fit --finetune` goes on into phase (b)
            return True
    run_finetune(ctx)
    return True


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


# ============================================================================================ stages


def _begin_phase(run: RunDir, cfg: RunConfig, progress: Progress, phase: str, *, n: int) -> None:
    """Show every stage of `phase` with its state, and plan the work left (for the run's ETA)."""
    names = list(stages.phase_stage_names(phase))
    if phase == FIT and cfg.finetune_after_fit and not finetune_waits(cfg.finetune.require_decisions, run.decisions):
        names += stages.phase_stage_names(FINETUNE)  # `fit --finetune`: the run goes on into phase (b)
    states = {name: stages.state_of(run, cfg, name) for name in stages.phase_stage_names(phase)}
    plan = [planned_work(cfg, name, n) for name in names
            if states.get(name, stages.state_of(run, cfg, name)) == "waiting"]
    progress.begin_phase(phase, states, plan)


def planned_work(cfg: RunConfig, name: str, n: int) -> Planned:
    """The work of one stage in image passes (engine.runs.progress explains the count)."""

    def training(epochs: int, batch_size: int, views: int = 1) -> float:
        if n < 2 or epochs == 0:
            return 0.0
        b = min(batch_size, n)
        return float(epochs * steps_per_epoch(n, b, drop_last=True) * b * views) * TRAIN_PASSES

    p, c, f = cfg.pretrain, cfg.classify, cfg.finetune
    work = {
        "prepare": (0.0, None),  # decoding, not a network pass
        "pretrain": (training(p.epochs, p.batch_size, views=2), TRAIN_PASSES),
        "warmup": (n * SCORE_PASSES, None),  # one pass for the features; the head's steps cost next to nothing
        "train": (training(c.epochs, c.batch_size) + min(cfg.split.average_last, c.epochs) * n * SCORE_PASSES,
                  TRAIN_PASSES),
        "predict": (n * SCORE_PASSES, SCORE_PASSES),
        "split": (0.0, None),
        "embed": (0.0, None),
        "supcon": (training(f.epochs, f.batch_size, views=2), TRAIN_PASSES),
        "head": (n * SCORE_PASSES + training(f.full_epochs, c.batch_size), None),
        "refresh": (n * SCORE_PASSES, SCORE_PASSES),
    }[name]
    return Planned(name, *work)


def _runs(ctx: Context, name: str) -> bool:
    """False (after saying why) when the stage does not run: off in these settings, or done (the table's rule).
    Rank 0 decides, for every process."""
    return ctx.dist.agree(lambda: _runs_here(ctx, name))


def _done(ctx: Context, name: str) -> bool:
    return ctx.dist.agree(lambda: stages.is_done(ctx.run, name))


def _runs_here(ctx: Context, name: str) -> bool:
    off = stages.stage(name).off(ctx.cfg)
    if off:
        ctx.progress.stage_skipped(name, off)
        return False
    if stages.is_done(ctx.run, name):
        ctx.progress.stage_skipped(name, "already done", done=True)
        return False
    return True


def _augment(ctx: Context) -> BatchAugment:
    return BatchAugment(ctx.cfg.augment, out_size=ctx.cfg.data.image_size, mean=ctx.norm.mean, std=ctx.norm.std)


def _final_ckpt(ctx: Context, stage: str, net: Network, **extra: object) -> None:
    """Write the stage's checkpoint, record the stage done, then drop its resume points (in this order: a
    kill between any two steps leaves either a stage to finish from its last epoch, or a done stage).
    Every process goes on with rank 0's network; rank 0 alone writes."""
    ctx.dist.sync_from_main(net)
    if not ctx.dist.is_main:
        return
    save_checkpoint(ctx.run.checkpoint(stage), {"net": net.state_dict(), "stage": stage,
                                                "config": config_mod.to_dict(ctx.cfg), **extra})
    stages.mark_done(ctx.run, stage)
    for p in stages.stage(stage).resume(ctx.run):
        p.unlink(missing_ok=True)


def _read_checkpoint(ctx: Context, stage: str) -> dict:
    ctx.dist.barrier()  # rank 0 has written it (every process reads it)
    return load_checkpoint(ctx.run.checkpoint(stage), ctx.rt.device)


def _load_net(ctx: Context, net: Network, stage: str) -> Network:
    net.load_state_dict(_read_checkpoint(ctx, stage)["net"])
    return net


# ============================================================================================ phase a


def stage_pretrain(ctx: Context, net: Network) -> None:
    if not _runs(ctx, "pretrain"):
        if _done(ctx, "pretrain"):
            _load_net(ctx, net, "pretrain")
        return
    pretrain_simclr(net, ctx.data, ctx.cfg.pretrain, _augment(ctx), ctx.rt, rng=ctx.rng("pretrain"),
                    last_ckpt=ctx.run.checkpoint("pretrain", last=True), progress=ctx.progress)
    _final_ckpt(ctx, "pretrain", net)


def stage_warmup(ctx: Context, net: Network, loss_fn: torch.nn.Module) -> None:
    c = ctx.cfg.classify
    if not _runs(ctx, "warmup"):
        if _done(ctx, "warmup") and not stages.stage("warmup").off(ctx.cfg):
            state = _read_checkpoint(ctx, "warmup")
            net.load_state_dict(state["net"])
            loss_fn.load_state_dict(state["loss"])
        return
    features = encode(net, ctx.data, ctx.norm, ctx.rt)
    _, labels, rows = ctx.training_labels(ctx.dist.agree(ctx.trusted))  # rank 0 reads the decisions
    warmup_head(net, features, labels, loss_fn, c, ctx.rt, epochs=c.warmup_epochs, rng=ctx.rng("warmup"),
                last_ckpt=ctx.run.checkpoint("warmup", last=True), progress=ctx.progress, rows=rows)
    _final_ckpt(ctx, "warmup", net, loss=loss_fn.state_dict())


def stage_train(ctx: Context, net: Network, loss_fn: torch.nn.Module) -> None:
    c = ctx.cfg.classify
    if not _runs(ctx, "train"):
        _load_net(ctx, net, "train")
        return
    k = ctx.cfg.split.average_last
    hist_path = ctx.run.loss_history

    def end_of_epoch(epoch: int, epoch_probs: Callable[[], np.ndarray]) -> dict[str, float]:
        out: dict[str, float] = {}
        if epoch >= c.epochs - k:  # per-sample losses of the last k epochs feed the mixture
            # The epoch's own pass covers the images that train; with some discarded, every image is predicted.
            probs = epoch_probs() if rows is None else predict(net, ctx.data, ctx.norm, ctx.rt, with_features=False).probs
            if ctx.dist.is_main:
                history = _read_history(hist_path, epoch)
                history.append(per_sample_ce(probs, ctx.prepared.labels))
                atomic_write_npz(hist_path, losses=np.stack(history), upto=np.array(epoch + 1))
            out["train_acc_given"] = float((probs.argmax(1) == ctx.prepared.labels).mean())
        if ctx.test is not None:  # rank 0's alone: the other processes hold no test set
            out["test_acc"] = accuracy(net, ctx.test, ctx.norm, ctx.rt.alone())
        return out

    data, labels, rows = ctx.training_labels(ctx.dist.agree(ctx.trusted))  # rank 0 reads the decisions
    train_classifier(net, data, labels, loss_fn, c, ctx.norm, ctx.rt, epochs=c.epochs,
                     rng=ctx.rng("train"), last_ckpt=ctx.run.checkpoint("train", last=True), progress=ctx.progress,
                     end_of_epoch=end_of_epoch, rows=rows)
    _final_ckpt(ctx, "train", net)


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of a run's .npz; DamagedFile (the worker names the file and the repair) when it cannot
    be read."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {name: z[name] for name in z.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise DamagedFile(path, f"not a readable .npz archive ({type(e).__name__})") from None


def _read_history(path: Path, before_epoch: int) -> list[np.ndarray]:
    if not path.exists():
        return []
    z = load_npz(path)
    keep = z["losses"][: max(0, len(z["losses"]) - (int(z["upto"]) - before_epoch))]
    return list(keep)


def stage_predict(ctx: Context, net: Network) -> None:
    if not _runs(ctx, "predict"):
        return
    ctx.progress.stage_start("predict", total=1, unit="pass")
    preds = predict(net, ctx.data, ctx.norm, ctx.rt)
    if not ctx.dist.is_main:
        return
    losses = per_sample_ce(preds.probs, ctx.prepared.labels)
    hist = ctx.run.loss_history
    history = load_npz(hist)["losses"] if hist.exists() else losses[None]
    atomic_write_npz(ctx.run.predictions, probs=preds.probs, features=preds.features, losses=history)
    ctx.progress.advance(1, images=len(ctx.data))
    ctx.progress.stage_end()
    stages.mark_done(ctx.run, "predict")


def _saved_predictions(ctx: Context) -> tuple[Predictions, np.ndarray]:
    z = load_npz(ctx.run.predictions)
    return Predictions(z["probs"], z["features"]), z["losses"]


def stage_split(ctx: Context) -> None:
    if not _runs(ctx, "split"):
        return
    preds, losses = _saved_predictions(ctx)
    ctx.progress.stage_start("split", total=1, unit="fit")
    split_and_write(ctx, preds, losses, phase=FIT, seed=ctx.seed("split/mixture"))
    ctx.progress.advance(1)
    ctx.progress.stage_end()
    stages.mark_done(ctx.run, "split")


def split_and_write(ctx: Context, preds: Predictions, losses: np.ndarray, *, phase: str, seed: int) -> SplitResult:
    """Fit the mixture, write samples.csv, split.json and (with a truth file) metrics.json."""
    s = ctx.cfg.split
    trusted = ctx.trusted()
    result = fit_gmm_split(normalise_losses(losses, s.scale), threshold=s.threshold, seed=seed, max_iter=s.max_iter,
                           tol=s.tol, reg_covar=s.reg_covar, covariance=s.covariance, fit_on=trusted.undecided)
    result = trust_decisions(result, trusted)
    # One neighbour search serves the review cards (K nearest), the relabel bar and the outlier score (their k).
    k = max(NEIGHBOURS_K, ctx.cfg.relabel.neighbours, ctx.cfg.evidence.outlier_neighbors)
    neighbours = nearest_neighbours(preds.features, k)
    evidence = evidence_columns(ctx.prepared.images, preds.features, ctx.prepared.labels, neighbours,
                                ctx.cfg.evidence)
    # Copies filed under different labels are a certain label error: into the review queue, whatever the loss says.
    result = replace(result, flagged=result.flagged | (evidence["duplicate_conflict"] > 0))
    # Neighbours vote, and the competence head trains, with the trusted labels: a fixed label is evidence.
    relabel = confident_relabels(preds.probs, trusted.labels, result.flagged, result.clean_prob,
                                 preds.features, neighbours, ctx.cfg.relabel, seed=seed)
    # The review order takes the given label's probability from a head that never saw that label.
    oof = out_of_fold_probs(preds.features, trusted.labels, len(ctx.classes), trains=trusted.trains, seed=seed)
    write_samples(ctx, preds, losses[-1] if losses.ndim == 2 else losses, result, relabel, evidence,
                  order_probs=preds.probs if oof is None else oof)
    atomic_write_npy(ctx.run.neighbours, neighbours[:, :NEIGHBOURS_K])  # the review cards' nearest images
    atomic_write_json(ctx.run.split, {
        "competence": relabel.competence, "min_competence": ctx.cfg.relabel.min_competence,
        "n_auto_relabel": int(relabel.auto.sum()),
        "means": list(result.means), "stds": list(result.stds), "weights": list(result.weights),
        "threshold": result.threshold, "loss_threshold": result.loss_threshold, "scale": ctx.cfg.split.scale,
        "n_flagged": int(result.flagged.sum()), "n": len(result.flagged), "degenerate": result.degenerate,
        "per_class": per_class_summary(result.flagged, ctx.prepared.labels, ctx.classes), "phase": phase,
    })
    write_metrics(ctx, phase, trusted)
    return result


def trust_decisions(result: SplitResult, trusted: TrustedLabels) -> SplitResult:
    """A reviewed image (kept or relabeled) is clean: clean probability 1, not flagged, whatever its loss."""
    if not trusted.decided.any():
        return result
    clean_prob = np.where(trusted.decided, 1.0, result.clean_prob)
    return replace(result, clean_prob=clean_prob, flagged=result.flagged & ~trusted.decided)


def write_samples(ctx: Context, preds: Predictions, loss: np.ndarray, split: SplitResult,
                  relabel: RelabelEvidence, evidence: dict[str, np.ndarray], *,
                  order_probs: np.ndarray | None = None) -> None:
    """samples.csv. order_probs: the probabilities the review order (suspicion) takes the given label's
    from (engine.method.out_of_fold); default the classifier's own."""
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
        "suspicion": np.round(suspicion(split.clean_prob, probs if order_probs is None else order_probs, given), 6),
        "neighbour_agreement": np.round(relabel.agreement, 4),  # share of neighbours labelled as suggested
        "auto_relabel": relabel.auto.astype(int),  # the suggestion cleared the bar (export --auto-relabel confident)
    })
    for k in range(min(3, probs.shape[1])):
        df[f"top{k + 1}_label"] = classes[top[:, k]]
        df[f"top{k + 1}_prob"] = probs[rows, top[:, k]].round(6)
    df = df.assign(**evidence)  # duplicate_group, duplicate_conflict, outlier_score
    if ctx.truth is not None:
        df["true_label"] = ctx.truth
    atomic_write_text(ctx.run.samples, df.to_csv(index=False, lineterminator="\n"))


def write_metrics(ctx: Context, phase: str, trusted: TrustedLabels) -> dict | None:
    if ctx.truth is None:
        return None
    s = pd.read_csv(ctx.run.samples, dtype={"path": str, "given_label": str, "predicted_label": str}, keep_default_na=False)
    corrected = corrected_labels(ctx.run.path)
    label = corrected["label"].where(corrected["status"] != "discarded", None)
    m = detection_metrics(given=s["given_label"].to_numpy(object), true=ctx.truth, flagged=s["flagged"].to_numpy(),
                          clean_prob=s["clean_prob"].to_numpy(float), predicted=s["predicted_label"].to_numpy(object),
                          corrected=label.to_numpy(object), reviewed=~trusted.undecided)
    m = {"phase": phase, **m}
    atomic_write_json(ctx.run.metrics, m)
    return m


def stage_embed(ctx: Context) -> None:
    if stages.stage("embed").off(ctx.cfg):
        ctx.run.umap.unlink(missing_ok=True)  # a stale map from an earlier phase would mislead
    if not _runs(ctx, "embed"):
        return
    ctx.progress.stage_start("embed", total=1, unit="map")
    made = embed_map(ctx, _saved_predictions(ctx)[0].features, seed=ctx.seed("embed/umap"))
    ctx.progress.advance(1, images=ctx.prepared.images.shape[0])
    ctx.progress.stage_end()
    if made:  # a map that failed leaves the stage to a rerun
        stages.mark_done(ctx.run, "embed")


def embed_map(ctx: Context, features: np.ndarray, *, seed: int) -> bool:
    """Write umap.npy; False (with a note) when UMAP fails: the map is evidence, not a result."""
    try:
        coords = umap_2d(features, ctx.cfg.embed, seed=seed)
        atomic_write_npy(ctx.run.umap, coords.astype(np.float32))
        return True
    except Exception as e:  # a failure must not fail the run ...
        ctx.run.umap.unlink(missing_ok=True)  # ... nor leave an older phase's map looking current
        ctx.progress.note(f"embedding map skipped: {type(e).__name__}: {e}")
        return False


def run_fit(ctx: Context) -> dict:
    """Phase (a) and the split: every stage, skipping those done."""
    t0 = time.perf_counter()
    net = ctx.new_network()
    if ctx.dist.is_main and weights.needed(ctx.run, ctx.cfg):  # `fit --weights`: the encoder starts from the user's file
        ctx.progress.note(weights.load_into(net, ctx.cfg.model))
    ctx.dist.sync_from_main(net)  # every process starts from rank 0's weights
    loss_fn = classification_loss(ctx.cfg.classify, num_samples=len(ctx.data), num_classes=len(ctx.classes),
                                  labels=ctx.prepared.labels)
    loss_fn = loss_fn.to(ctx.rt.device)
    stage_pretrain(ctx, net)
    stage_warmup(ctx, net, loss_fn)
    stage_train(ctx, net, loss_fn)
    stage_predict(ctx, net)
    if not ctx.dist.is_main:
        return {}
    ctx = ctx.alone()  # the rest reads and writes the run folder: rank 0's work, without the others
    stage_split(ctx)
    stage_embed(ctx)
    fine_tuned = stages.is_done(ctx.run, "refresh")  # then samples.csv & co. are phase (b)'s
    return _summary_from_disk(ctx, FINETUNE if fine_tuned else FIT, time.perf_counter() - t0)


def _summary_from_disk(ctx: Context, phase: str, seconds: float) -> dict:
    """Headline numbers of the run as written (samples.csv, metrics.json), plus test accuracy."""
    split = read_json(ctx.run.split, {}) or {}
    out: dict = {"kind": "summary", "phase": phase, "images": len(ctx.data), "classes": len(ctx.classes),
                 "flagged": int(split.get("n_flagged", 0)), "seconds": round(seconds, 1),
                 "stem": ctx.cfg.model.stem, "device": str(ctx.rt.device),
                 "competence": split.get("competence"), "min_competence": split.get("min_competence")}
    if ctx.truth is not None:
        metrics = read_json(ctx.run.metrics, {}) or {}
        out.update({k: metrics.get(k) for k in ("precision", "recall", "f1", "auroc", "corrected_accuracy",
                                                   "pseudo_label_accuracy", "given_label_accuracy")})
    if ctx.test is not None:
        fine_tuned = phase == FINETUNE and finetune_kept(ctx.run)
        net = _load_net(ctx, ctx.new_network(), "head" if fine_tuned else "train")
        out["test_acc"] = round(accuracy(net, ctx.test, ctx.norm, ctx.rt), 4)
    ctx.run.append_event(**out)
    return out


# ============================================================================================ phase b


def finetune_fingerprint(decisions: dict[str, Decision], cfg: RunConfig) -> str:
    """Identifies what phase (b) depends on: the review decisions and the settings."""
    settings = config_mod.to_dict(replace(cfg, finetune_after_fit=False))  # how it was invoked does not matter
    settings.pop("review")  # the review loop's settings (memory, re-ranking) do not change what phase (b) trains
    blob = json.dumps([sorted((p, d.action, d.label) for p, d in decisions.items()), settings])
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def snapshot_phase_a(run: RunDir) -> None:
    """Keep phase (a)'s outputs the first time phase (b) runs, for before/after and re-runs."""
    pairs = [(run.samples, run.samples_before), (run.predictions, run.predictions_before),
             (run.metrics, run.metrics_before)]
    for src, dst in pairs:
        if src.exists() and not dst.exists():
            atomic_write_bytes(dst, src.read_bytes())  # a kill mid-copy must not leave half a snapshot


def reset_finetune(run: RunDir, fingerprint: str) -> bool:
    """Decide how phase (b) starts. Returns True when it is already done with exactly these decisions
    and settings (nothing to do). Otherwise it resumes an interrupted phase (b) with the same
    fingerprint, or makes all of phase (b) not done (its inputs changed) and starts it afresh."""
    meta = read_json(run.finetune_meta, {}) or {}
    if meta.get("fingerprint") == fingerprint:
        return stages.is_done(run, "refresh")
    stages.invalidate(run, FINETUNE_STAGES)
    atomic_write_json(run.finetune_meta, {"fingerprint": fingerprint})
    return False


def phase_a_finished(run: RunDir, cfg: RunConfig) -> bool:
    """Every stage phase (b) builds on is done (or off); the map is not one of them."""
    return all(stages.is_done(run, name) or stages.stage(name).off(cfg)
               for name in ("pretrain", "warmup", "train", "predict", "split"))


def truth_changed(run: RunDir, truth: Path | None, kept: Path | None) -> None:
    """Another truth file than the run knew: phase (a)'s split (which writes the metrics) must run again —
    unless phase (b) has started replacing phase (a)'s outputs (then `finetune` writes the metrics)."""
    if truth != kept and not run.predictions_before.exists():
        stages.invalidate(run, ["split"])


def run_finetune(ctx: Context) -> dict:
    """Phase (b): weighted SupCon on pseudo-labels and decisions, a fresh head, refreshed flags."""
    t0 = time.perf_counter()
    targets = ctx.dist.agree(lambda: _begin_finetune(ctx))  # rank 0 reads the decisions, for every process
    if targets is None:
        return _summary_from_disk(ctx.alone(), FINETUNE, time.perf_counter() - t0) if ctx.dist.is_main else {}
    # Phase (b) must not depend on what ran before it in this process (`fit --finetune` vs `finetune`).
    seed_everything(ctx.seed(stages.PHASE_SEEDS[FINETUNE]))
    ctx.progress.note(f"fine-tuning with {targets.n_decided} reviewed and {targets.n_discarded} discarded images"
                      + (f"; {targets.n_check} of the reviewed held out to check it" if targets.n_check else ""))
    net = _load_net(ctx, ctx.new_network(), "train")
    stage_supcon(ctx, net, targets)
    net.new_classifier(len(ctx.classes))
    net.to(ctx.rt.device)
    ctx.dist.sync_from_main(net)  # the same new head in every process
    stage_head(ctx, net, targets)
    stage_refresh(ctx, net, targets)
    return _summary_from_disk(ctx.alone(), FINETUNE, time.perf_counter() - t0) if ctx.dist.is_main else {}


def _begin_finetune(ctx: Context) -> FinetuneTargets | None:
    """Rank 0's start of phase (b): its training targets, or None when it is already done."""
    run, cfg = ctx.run, ctx.cfg
    if not phase_a_finished(run, cfg):
        raise UserError(f"{run.path} has no finished phase (a); run (or resume) `python -m engine fit` first")
    snapshot_phase_a(run)
    decisions = load_decisions(run.decisions)
    phase_a = load_npz(run.predictions_before)
    # Targets first: a decision the run cannot use fails here, before any phase (b) state is touched.
    targets = finetune_targets(phase_a["probs"], ctx.prepared.paths, ctx.classes, decisions, cfg.split,
                               given=ctx.prepared.labels, min_weight=cfg.finetune.min_weight,
                               seed=ctx.seed("supcon/weights"), check_share=cfg.finetune.check_share,
                               check_seed=ctx.seed("supcon/check"))
    done = reset_finetune(run, finetune_fingerprint(decisions, cfg))
    _begin_phase(run, cfg, ctx.progress, FINETUNE, n=len(ctx.data))
    if done:
        ctx.progress.stage_skipped("finetune", "already fine-tuned with these decisions and settings", done=True)
        return None
    return targets


def stage_supcon(ctx: Context, net: Network, targets: FinetuneTargets) -> None:
    if not _runs(ctx, "supcon"):
        if _done(ctx, "supcon"):
            _load_net(ctx, net, "supcon")
        return
    finetune_supcon(net, ctx.data, targets, ctx.cfg.finetune, _augment(ctx), ctx.rt, rng=ctx.rng("supcon"),
                    last_ckpt=ctx.run.checkpoint("supcon", last=True), progress=ctx.progress)
    _final_ckpt(ctx, "supcon", net)


def stage_head(ctx: Context, net: Network, targets: FinetuneTargets) -> None:
    """(b3) a fresh classifier head on the fine-tuned encoder, trained on the targets: the head alone on
    frozen features first, then encoder + head for `full_epochs` (discarded images left out). One stage,
    one count, two resume points (engine.runs.stages.HEAD_PARTS)."""
    run, f = ctx.run, ctx.cfg.finetune
    if not _runs(ctx, "head"):
        _load_net(ctx, net, "head")
        return
    warmup_resume, full_resume = stages.stage("head").resume(run)
    trusted = targets.keep & (targets.weights >= f.head_min_weight)
    kept = np.flatnonzero(trusted)
    if len(kept) < 2:
        raise UserError(f"only {len(kept)} image(s) left to train the new head on (discarded, or pseudo-label "
                        f"weight below finetune.head_min_weight={f.head_min_weight}); it needs at least two")
    labels = torch.as_tensor(targets.labels[kept], device=ctx.rt.device)
    loss_fn = classification_loss(ctx.cfg.classify, num_samples=len(kept), num_classes=len(ctx.classes),
                                  labels=targets.labels[kept])
    loss_fn = loss_fn.to(ctx.rt.device)
    per_epoch = steps_per_epoch(len(kept), global_batch(ctx.cfg.classify.batch_size, len(kept), ctx.dist),
                                drop_last=True)
    warmup_steps, full_steps = f.head_epochs * per_epoch, f.full_epochs * per_epoch
    if not ctx.dist.agree(full_resume.exists):  # else the warm-up is done and full training resumes
        features = encode(net, ctx.data, ctx.norm, ctx.rt).index_select(0, torch.as_tensor(kept, device=ctx.rt.device))
        warmup_head(net, features, labels, loss_fn, ctx.cfg.classify, ctx.rt, epochs=f.head_epochs,
                    rng=ctx.rng("head/warmup"), last_ckpt=warmup_resume, progress=ctx.progress, stage="head",
                    lr=f.head_lr, span=Span(after=full_steps))
    if f.full_epochs > 0:
        sub = ctx.data.subset(trusted)
        full_cfg = replace(ctx.cfg.classify, lr=f.full_lr)
        train_classifier(net, sub, labels, loss_fn, full_cfg, ctx.norm, ctx.rt, epochs=f.full_epochs,
                         rng=ctx.rng("head/full"), last_ckpt=full_resume, progress=ctx.progress, stage="head",
                         span=Span(before=warmup_steps))
    _final_ckpt(ctx, "head", net)


def stage_refresh(ctx: Context, net: Network, targets: FinetuneTargets) -> None:
    """New predictions, mixture, samples.csv, metrics and map from the fine-tuned network — or, when it
    does not beat phase (a) on the held-out decisions (engine.method.holdout), from phase (a)'s."""
    if not _runs(ctx, "refresh"):
        return
    run = ctx.run
    ctx.progress.stage_start("refresh", total=3, unit="step")
    preds = predict(net, ctx.data, ctx.norm, ctx.rt)
    if not ctx.dist.is_main:
        return
    ctx = ctx.alone()  # the mixture, samples.csv and the map: rank 0's alone
    phase_a = load_npz(run.predictions_before)
    f = ctx.cfg.finetune
    held_out = targets.check if targets.check is not None else np.zeros(len(targets.labels), bool)
    check = judge(phase_a["probs"], preds.probs, targets.labels, held_out, p_max=f.check_p,
                  enabled=f.check_share > 0)
    atomic_write_json(run.finetune_meta, {**(read_json(run.finetune_meta, {}) or {}), "check": check.to_dict()})
    run.append_event(kind="finetune_check", **check.to_dict())
    ctx.progress.note(check.sentence())
    if check.kept:
        losses = per_sample_ce(preds.probs, ctx.prepared.labels)[None]
    else:  # what review alone gives: phase (a)'s model, re-split with every decision
        preds, losses = Predictions(phase_a["probs"], phase_a["features"]), phase_a["losses"]
    atomic_write_npz(run.predictions, probs=preds.probs, features=preds.features, losses=losses)
    ctx.progress.advance(1, images=len(ctx.data))
    split_and_write(ctx, preds, losses, phase=FINETUNE, seed=ctx.seed("refresh/mixture"))
    ctx.progress.advance(1)
    if stages.stage("embed").off(ctx.cfg):
        run.umap.unlink(missing_ok=True)  # an older map would not match these features
    elif check.kept:
        embed_map(ctx, preds.features, seed=ctx.seed("refresh/umap"))
    else:  # phase (a)'s own map again (same features, same seed): an earlier kept fine-tune may have replaced it
        embed_map(ctx, preds.features, seed=ctx.seed("embed/umap"))
    ctx.progress.advance(1)
    ctx.progress.stage_end()
    stages.mark_done(run, "refresh")


def finetune_kept(run: RunDir) -> bool:
    """Whether the run's results are the fine-tuned network's (False: phase (a)'s, after a fine-tune that
    did not pass its check). True for runs fine-tuned before the check existed."""
    check = (read_json(run.finetune_meta, {}) or {}).get("check")
    return bool(check.get("kept", True)) if isinstance(check, dict) else True
