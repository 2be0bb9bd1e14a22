"""The stages of a run, in one table: what each reads and writes, when it is done, its seed streams.

    phase (a), `fit`:      prepare -> pretrain -> warmup -> train -> predict -> split -> embed
    phase (b), `finetune`: supcon -> head -> refresh

One rule decides whether a stage is done (`is_done`): its name is in status.json's
`completed_stages` and every file it leaves behind (`writes`) exists. A stage records itself there
only after it wrote those files atomically, so a kill -9 at any moment leaves it done or not done,
never half done. A stage that is done is skipped; one that is not runs, and an interrupted one
continues from its resume points (`resume`: epoch checkpoints written after every epoch, in the order
the stage writes them). A stage the settings turn off (`off`) is skipped and records nothing.

Inputs that change outside the run make stages not done, explicitly, when a phase starts (engine.train
.pipeline): other images under the same DATA (prepare, refused once training has started), another
truth file (split), other review decisions or settings for phase (b) (all of phase (b): its fingerprint).

Paths are RunDir's (the one place that names a run's files); this module imports no torch, so the app
and status readers can use the table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.config import RunConfig
from engine.data.cache import CACHE_FILES
from engine.runs.rundir import RunDir

FIT, FINETUNE = "fit", "finetune"  # phase (a) and phase (b): the commands that run them
PHASES = (FIT, FINETUNE)

Files = Callable[[RunDir], tuple[Path, ...]]
OffWhen = Callable[[RunConfig], str | None]


def _none(run: RunDir) -> tuple[Path, ...]:
    return ()


def _always(cfg: RunConfig) -> str | None:
    return None


@dataclass(frozen=True)
class Stage:
    name: str
    phase: str
    title: str  # what it does, for people
    reads: Files  # the run's files it reads (other stages' outputs)
    writes: Files  # the files it leaves behind; `is_done` requires every one of them
    resume: Files = _none  # epoch checkpoints an interrupted run continues from, in the order written
    keeps: Files = _none  # other files it writes where they apply (a truth file's metrics), not needed for done
    seeds: tuple[str, ...] = ()  # the seed streams it draws from (engine.runs.seeds)
    off: OffWhen = _always  # why the settings turn it off, or None when it runs
    inputs: str = ""  # what it reads from outside the run folder, for people

    def __repr__(self) -> str:
        return f"Stage({self.name!r})"


def _no_pretraining(cfg: RunConfig) -> str | None:
    return "pre-training is off (--no-pretrain)" if not cfg.pretrain.enabled or cfg.pretrain.epochs == 0 else None


def _no_warmup(cfg: RunConfig) -> str | None:
    if (_no_pretraining(cfg) and not cfg.model.weights) or cfg.classify.warmup_epochs == 0:
        return "no pre-trained encoder to warm up on"
    return None


def _no_map(cfg: RunConfig) -> str | None:
    return "embedding map turned off (embed.enabled=false)" if not cfg.embed.enabled else None


def _no_supcon(cfg: RunConfig) -> str | None:
    return "finetune.epochs is 0" if cfg.finetune.epochs == 0 else None


def _epochs(stage: str) -> tuple[Files, Files]:
    """A training stage: its final checkpoint, and its per-epoch resume point."""
    return (lambda r: (r.checkpoint(stage),)), (lambda r: (r.checkpoint(stage, last=True),))


def _rng(stream: str) -> tuple[str, str]:
    """The two generators of an epoch loop (engine.train.loop.Rng): batch order and augmentation."""
    return f"{stream}/order", f"{stream}/augment"


# The head trains in two parts, each with its own resume point: the fresh head alone on frozen features
# (`head.last.pt`), then encoder + head (`head_full.last.pt`); an interrupted head continues in the last
# part that has one.
HEAD_PARTS = ("head", "head_full")

STAGES: tuple[Stage, ...] = (
    Stage("prepare", FIT, "decode every image once into the uint8 cache; hash the images, start with their "
          "remembered decisions", _none, writes=lambda r: tuple(r.data / name for name in CACHE_FILES),
          keeps=lambda r: (r.hashes, r.decisions), inputs="DATA, the workspace memory"),
    Stage("pretrain", FIT, "(a1) SimCLR pre-training of the encoder", lambda r: (r.data,),
          *_epochs("pretrain"), seeds=_rng("pretrain"), off=_no_pretraining),
    Stage("warmup", FIT, "(a2) the classifier head alone on the frozen encoder",
          lambda r: (r.data, r.checkpoint("pretrain")), *_epochs("warmup"), seeds=_rng("warmup"), off=_no_warmup),
    Stage("train", FIT, "(a2) encoder + head with the noise-robust loss, from the last of warmup/pretrain",
          lambda r: (r.data, r.checkpoint("warmup"), r.checkpoint("pretrain")),
          *_epochs("train"), keeps=lambda r: (r.loss_history,), seeds=_rng("train")),
    Stage("predict", FIT, "(a3) probabilities, features and losses of every image",
          lambda r: (r.data, r.checkpoint("train"), r.loss_history), writes=lambda r: (r.predictions,)),
    Stage("split", FIT, "(b1) the two-component mixture: clean probabilities and flags; each image's nearest images",
          lambda r: (r.predictions,),
          writes=lambda r: (r.samples, r.split, r.neighbours), keeps=lambda r: (r.metrics,), seeds=("split/mixture",),
          inputs="the truth file"),
    Stage("embed", FIT, "the UMAP map of the features", lambda r: (r.predictions,),
          writes=lambda r: (r.umap,), seeds=("embed/umap",), off=_no_map),
    Stage("supcon", FINETUNE, "(b2) weighted SupCon on pseudo-labels and decisions",
          lambda r: (r.checkpoint("train"), r.predictions_before, r.decisions), *_epochs("supcon"),
          seeds=("supcon/weights", "supcon/check", *_rng("supcon")), off=_no_supcon),
    Stage("head", FINETUNE, "(b3) a fresh head: alone on frozen features, then with the encoder",
          lambda r: (r.checkpoint("supcon"), r.checkpoint("train"), r.predictions_before, r.decisions),
          writes=lambda r: (r.checkpoint("head"),),
          resume=lambda r: tuple(r.checkpoint(part, last=True) for part in HEAD_PARTS),
          seeds=(*_rng("head/warmup"), *_rng("head/full"))),
    Stage("refresh", FINETUNE, "new predictions, flags, suggestions, map and metrics",
          lambda r: (r.checkpoint("head"),), writes=lambda r: (r.predictions, r.samples, r.split),
          keeps=lambda r: (r.metrics, r.umap, r.neighbours), seeds=("refresh/mixture", "refresh/umap"), inputs="the truth file"),
)
BY_NAME = {s.name: s for s in STAGES}
# The global generators of each phase (torch, numpy, random): a new network's initial weights, the fresh
# head of phase (b). Seeded when the phase starts, so phase (b) does not depend on what ran before it.
PHASE_SEEDS = {FIT: "fit/init", FINETUNE: "finetune/init"}


def stage(name: str) -> Stage:
    return BY_NAME[name]


def phase_stages(phase: str) -> tuple[Stage, ...]:
    return tuple(s for s in STAGES if s.phase == phase)


def phase_stage_names(phase: str) -> tuple[str, ...]:
    return tuple(s.name for s in phase_stages(phase))


def all_seed_streams() -> tuple[str, ...]:
    """Every seed stream a run draws from, each once."""
    return (*PHASE_SEEDS.values(), *(stream for s in STAGES for stream in s.seeds))


# ----------------------------------------------------------------------------- the one rule


def is_done(run: RunDir, name: str) -> bool:
    """Done: recorded in completed_stages (after its outputs were written) and every output still there."""
    return name in run.completed_stages() and all(p.exists() for p in stage(name).writes(run))


def mark_done(run: RunDir, name: str) -> None:
    """Record a finished stage; call it only once every file of `writes` is in place."""
    missing = [p for p in stage(name).writes(run) if not p.exists()]
    if missing:
        raise RuntimeError(f"stage {name} is not done: {', '.join(str(p) for p in missing)} missing")
    run.mark_stage_done(name)


def invalidate(run: RunDir, names: tuple[str, ...] | list[str]) -> None:
    """Make stages not done (their inputs changed) and forget their resume points; their outputs stay
    (the app keeps showing them) until the stages run again and replace them."""
    run.unmark_stages(list(names))
    for name in names:
        for p in stage(name).resume(run):
            p.unlink(missing_ok=True)


def state_of(run: RunDir, cfg: RunConfig, name: str) -> str:
    """"skipped" (off in these settings), "done" or "waiting": a stage's state before its phase runs."""
    if stage(name).off(cfg):
        return "skipped"
    return "done" if is_done(run, name) else "waiting"


# ----------------------------------------------------------------------------- for people


def markdown_table() -> str:
    """The table as the README shows it (a test keeps the README equal to this)."""
    run = RunDir(Path("RUN"))

    def files(paths: tuple[Path, ...], inputs: str = "") -> str:
        names = [f"`{p.relative_to(run.path).as_posix()}{'/' if not p.suffix else ''}`" for p in paths]
        return ", ".join(names + ([inputs] if inputs else [])) or "–"

    rows = ["| phase | stage | what it does | reads | writes (all there + recorded = done) | also writes "
            "| resumes from | seed streams |", "|---|---|---|---|---|---|---|---|"]
    for s in STAGES:
        phase = "(a) fit" if s.phase == FIT else "(b) finetune"
        seeds = ", ".join(f"`{x}`" for x in s.seeds) or "–"
        rows.append(f"| {phase} | {s.name} | {s.title} | {files(s.reads(run), s.inputs)} | {files(s.writes(run))} "
                    f"| {files(s.keeps(run))} "
                    f"| {files(s.resume(run))} | {seeds} |")
    return "\n".join(rows)
