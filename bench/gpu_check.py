#!/usr/bin/env python3
"""The prepared GPU check (bench/gpu_check.sh runs it): each step under its own deadline, one report.

    python bench/gpu_check.py [--dry-run] [--only STEP,...] [--shared-data DIR]

Steps, in this order, with the seconds each may take on the GPU (DEADLINES):

    preflight   python, torch, CUDA, the card, and which of the packages the engine imports are present
    tests       the CUDA unit tests: pytest -m gpu tests/test_gpu.py (bf16 autocast, GPU-resident data,
                the out-of-memory message, resume after kill -9)
    throughput  bench/throughput.py --device cuda: SimCLR steps against a DataLoader + PIL loop (goal >= 3x),
                and the fraction of the bf16 peak an epoch of 50,000 images reaches
    table1      bench/quality.py --gpu (as bench/gpu_quality.sh): full CIFAR-10, ELR, symmetric 40 % / 80 % and
                asymmetric 40 % noise, test accuracy next to the paper's Table 1 (92.0 / 84.8 / 89.5)
    cifar10n    CIFAR-10N real human labels, `worst` then `aggre`, on the 45,000 dev rows: detection metrics
                (goal AUROC >= 0.97 on worst); `aggre` reuses the label-free pre-training of `worst`

A step that runs past its deadline is stopped (its process group killed) and reported as such; the
report is rewritten after every step, so it exists whatever happens. Step results are kept in
WORK/state.json, so a check split over several invocations (--only; e.g. where one command may run at
most ten minutes) still ends in one report. The CIFAR-10N folders are written in the background from
the start. --dry-run runs every step at toy size on the CPU.

Reads SHARED_DATA (or --shared-data): a copy of ../shared/data with cifar10_train_jpeg.npz,
cifar10_test_jpeg.npz, cifar10n_dev_labels.npz and to_folder.py. Writes bench/results/gpu_check_<card>.md
(dry run: WORK/results/gpu_check_cpu-dry-run.md), copied into $OUT when that is set.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("preflight", "tests", "throughput", "table1", "cifar10n")
# Seconds per step on the GPU: 705 in all, inside the check's 12 minutes with the start-up around them.
DEADLINES = {"preflight": 30, "tests": 100, "throughput": 100, "table1": 300, "cifar10n": 175}
# tests/conftest.py deselects the gpu tests where there is no nvidia-smi, unless this is set.
KEEP_GPU_TESTS = "CLEAN_KEEP_GPU_TESTS"
DRY_DEADLINE_S = 120  # per step on the CPU; the whole dry run takes well under a minute on an idle machine
PAPER_TABLE1 = "92.0 / 84.8 / 89.5 (symmetric 40 %, symmetric 80 %, asymmetric 40 %)"
AUROC_GOAL = 0.97
PACKAGES = ("numpy", "torch", "torchvision", "pandas", "sklearn", "PIL", "tqdm", "pytest")


@dataclass
class Size:
    """What each step trains: the GPU sizes, or toy ones for the dry run."""

    device: str
    throughput: list[str]
    table1: list[str]
    cifar10n_per_class: int | None  # None: all 45,000 dev rows
    cifar10n_fit: list[str]


GPU = Size(
    device="cuda",
    throughput=["--device", "cuda", "--steps", "20", "--rounds", "3", "--workers", "0,8"],
    # quality.py's GPU preset is sized for 540 s alone; here it has 300 s, data writing included.
    table1=["--gpu", "--pretrain-epochs", "15", "--epochs", "10", "--deadline-s", str(DEADLINES["table1"] - 15)],
    cifar10n_per_class=None,
    cifar10n_fit=["--device", "cuda", "--pretrain-epochs", "12", "--epochs", "12"],
)
DRY = Size(
    device="cpu",
    throughput=["--device", "cpu", "--steps", "1", "--rounds", "1", "--batch-size", "8", "--workers", "0"],
    table1=["--gpu", "--dry-run", "--n-per-class", "6", "--test-per-class", "3", "--image-size", "8",
            "--grid", "symmetric:0.4,asymmetric:0.4"],
    cifar10n_per_class=6,
    cifar10n_fit=["--device", "cpu", "--pretrain-epochs", "1", "--epochs", "1", "--image-size", "8",
                  "--batch-size", "16", "--set", "classify.warmup_epochs=1"],
)


@dataclass
class StepResult:
    name: str
    state: str  # passed, failed, timed out, not run
    seconds: float = 0.0
    summary: str = ""
    details: list[str] = field(default_factory=list)  # markdown lines for the report


# ============================================================================================ running


class Check:
    def __init__(self, args: argparse.Namespace) -> None:
        self.dry = args.dry_run
        self.size = DRY if self.dry else GPU
        self.work = Path(args.work)
        self.logs = self.work / "logs"
        self.results = Path(args.results) if args.results else (self.work / "results" if self.dry else ROOT / "bench" / "results")
        self.shared = Path(args.shared_data).resolve()
        self.python = sys.executable
        self.env = self._env()  # after self.dry
        self.state_file = self.work / "state.json"
        self.background: subprocess.Popen | None = None
        self.card = "cpu-dry-run" if self.dry else "unknown-card"  # set by the preflight step

    def _env(self) -> dict[str, str]:
        paths = [str(ROOT)]
        pylib = ROOT / "bench" / "data" / "pylib"  # pytest carried along where the machine's python lacks it
        if pylib.is_dir():
            paths.append(str(pylib))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        if self.dry:  # toy tensors gain nothing from a second thread, and busy-waiting OpenMP threads on a shared
            env["OMP_NUM_THREADS"] = "1"  # CPU slow every step by an order of magnitude
            env[KEEP_GPU_TESTS] = "1"  # the rehearsal collects the gpu tests (each skips itself without CUDA)
        return env

    def deadline(self, step: str) -> float:
        return DRY_DEADLINE_S if self.dry else DEADLINES[step]

    def command(self, name: str, argv: list[str], timeout: float) -> tuple[int | None, str]:
        """Run argv in its own process group, output to logs/<name>.log; (exit code or None at the deadline, tail)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        with open(log, "a", encoding="utf-8") as out:
            out.write(f"$ {' '.join(argv)}\n")
            out.flush()
            p = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
            try:
                code: int | None = p.wait(timeout=max(timeout, 1.0))
            except subprocess.TimeoutExpired:
                _stop_group(p)
                code = None
        return code, _tail(log)

    def to_folder(self, args: list[str], out: Path) -> None:
        """../shared/data/to_folder.py into a temporary sibling, renamed when complete (written once)."""
        if out.is_dir():
            return
        tmp = out.with_name(f".{out.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run([self.python, str(self.shared / "to_folder.py"), *args, "--out", str(tmp)], check=True,
                       stdout=subprocess.DEVNULL, env=self.env)
        tmp.rename(out)

    def start_background_data(self) -> None:
        """The CIFAR-10N folders, written by `gpu_check.py --write-cifar10n` while the other steps run."""
        self.logs.mkdir(parents=True, exist_ok=True)
        argv = [self.python, str(Path(__file__).resolve()), "--write-cifar10n", "--work", str(self.work),
                "--shared-data", str(self.shared), *(["--dry-run"] if self.dry else [])]
        with open(self.logs / "cifar10n-data.log", "w", encoding="utf-8") as log:
            self.background = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True)

    def write_cifar10n(self) -> None:
        per_class = [] if self.size.cifar10n_per_class is None else ["--per-class", str(self.size.cifar10n_per_class)]
        for human in ("worst", "aggre"):
            self.to_folder(["cifar10", "--split", "train", "--human", human, *per_class], self.work / f"c10n-{human}")

    # ------------------------------------------------------------------------------------ state + report

    def load_state(self) -> dict[str, StepResult]:
        """Results of earlier invocations of this check (a real check may be split over several)."""
        try:
            raw = json.loads(self.state_file.read_text())
            self.card = raw.get("card") or self.card
            return {k: StepResult(**v) for k, v in raw.get("steps", {}).items()}
        except (OSError, ValueError, TypeError):
            return {}

    def save(self, results: dict[str, StepResult]) -> Path:
        self.work.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps({"card": self.card, "steps": {k: asdict(v) for k, v in results.items()}},
                                              indent=2))
        self.results.mkdir(parents=True, exist_ok=True)
        path = self.results / f"gpu_check_{_file_safe(self.card)}.md"
        path.write_text(report(results, card=self.card, dry=self.dry), encoding="utf-8")
        out = os.environ.get("OUT")
        if out:
            for f in [path, *self.results.glob("gpu_quality*"), *self.results.glob("throughput_cuda.md"),
                      *self.logs.glob("*.log")]:
                if f.is_file():
                    shutil.copy2(f, Path(out) / f.name)
        return path


# ============================================================================================ steps


def step_preflight(c: Check) -> StepResult:
    code = ("import importlib, json, platform, sys\n"
            "found = {}\n"
            f"for name in {PACKAGES!r}:\n"
            "    try:\n"
            "        m = importlib.import_module(name); found[name] = getattr(m, '__version__', 'present')\n"
            "    except Exception as e:\n"
            "        found[name] = 'MISSING (' + type(e).__name__ + ')'\n"
            "import torch\n"
            "cuda = torch.cuda.is_available()\n"
            "print(json.dumps({'python': platform.python_version(), 'packages': found, 'cuda': cuda,\n"
            "                  'cuda_version': torch.version.cuda, 'card': torch.cuda.get_device_name(0) if cuda else None,\n"
            "                  'memory_gb': round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,\n"
            "                  'cpus': len(__import__('os').sched_getaffinity(0))}))\n")
    rc, tail = c.command("preflight", [c.python, "-c", code], c.deadline("preflight"))
    info = _last_json(tail)
    if rc != 0 or info is None:
        return StepResult("preflight", _state(rc), summary="could not run python with torch", details=_fence(tail))
    missing = [k for k, v in info["packages"].items() if v.startswith("MISSING")]
    if info["card"] and not c.dry:
        c.card = info["card"]
    memory = f" ({info['memory_gb']} GB)" if info["memory_gb"] else ""
    lines = [f"- python {info['python']}, CUDA {info['cuda_version']}, card: {info['card'] or 'none'}{memory}, "
             f"{info['cpus']} CPUs",
             "- packages: " + ", ".join(f"{k} {v}" for k, v in info["packages"].items())]
    summary = f"{info['card'] or 'no GPU'}; " + (f"missing: {', '.join(missing)}" if missing else "all packages present")
    ok = not missing and (info["cuda"] or c.dry)
    return StepResult("preflight", "passed" if ok else "failed", summary=summary, details=lines)


def step_tests(c: Check) -> StepResult:
    argv = [c.python, "-m", "pytest", "-m", "gpu", "tests/test_gpu.py", "-q", "-rs", "-p", "no:cacheprovider",
            "-o", "addopts="]  # no pytest-timeout needed: the step's deadline bounds it
    rc, tail = c.command("tests", argv, c.deadline("tests"))
    counts = re.findall(r"(\d+) (passed|failed|skipped|errors?)", tail)
    summary = ", ".join(f"{n} {w}" for n, w in counts) or "no pytest summary"
    skipped_all = bool(counts) and all(w == "skipped" for _, w in counts)
    state = _state(rc)
    if skipped_all and not c.dry:  # without CUDA every test skips itself: fine for the rehearsal only
        state, summary = "failed", summary + ": CUDA was not visible to the tests"
    return StepResult("tests", state, summary=summary, details=[] if state == "passed" and not skipped_all else _fence(tail))


def step_throughput(c: Check) -> StepResult:
    data = c.work / "cifar10-5k"
    c.to_folder(["cifar10", "--split", "train", "--per-class", "500" if not c.dry else "4"], data)
    out = c.work / "throughput.md" if c.dry else ROOT / "bench" / "results" / "throughput_cuda.md"
    argv = [c.python, "bench/throughput.py", *c.size.throughput, "--data", str(data), "--out", str(out)]
    rc, tail = c.command("throughput", argv, c.deadline("throughput"))
    if rc != 0 or not out.is_file():
        return StepResult("throughput", _state(rc), summary="no result", details=_fence(tail))
    text = out.read_text()
    speedup = re.search(r"best reference: \*\*([\d.]+)x\*\*", text)
    fraction = re.search(r"reaches \*\*([\d.]+%)\*\*", text)
    summary = (f"{speedup.group(1) if speedup else '?'}x the best DataLoader + PIL loop (goal 3x)"
               + (f"; {fraction.group(1)} of the bf16 peak" if fraction else ""))
    return StepResult("throughput", "passed", summary=summary, details=_body(text))


def step_table1(c: Check) -> StepResult:
    work = c.work / "quality"
    argv = [c.python, "bench/quality.py", *c.size.table1, "--shared-data", str(c.shared), "--quiet"]
    if c.dry:
        argv += ["--work", str(work), "--data-root", str(c.work / "quality-data")]
    rc, tail = c.command("table1", argv, c.deadline("table1"))
    md = (work / "results" if c.dry else ROOT / "bench" / "results") / "gpu_quality.md"
    if not md.is_file():
        return StepResult("table1", _state(rc), summary="no report", details=_fence(tail))
    text = md.read_text()
    accs = re.findall(r"^\| (\w+ \d+%) \| ([\d.]+|–) \|", text, flags=re.M)
    summary = ("test accuracy " + ", ".join(f"{k} {v}" for k, v in accs) + f" (paper {PAPER_TABLE1})") if accs else "no rows"
    state = "passed" if rc == 0 and accs and all(v != "–" for _, v in accs) else _state(rc) if rc != 0 else "failed"
    return StepResult("table1", state, summary=summary, details=_body(text) + ([] if rc == 0 else _fence(tail)))


def step_cifar10n(c: Check) -> StepResult:
    started = time.monotonic()
    deadline = c.deadline("cifar10n")
    left = lambda: deadline - (time.monotonic() - started)  # noqa: E731
    if c.background is None:
        c.start_background_data()
    assert c.background is not None
    try:
        c.background.wait(timeout=max(left(), 1.0))
    except subprocess.TimeoutExpired:
        _stop_group(c.background)
        return StepResult("cifar10n", "timed out", summary="the CIFAR-10N folders were not written in time",
                          details=_fence(_tail(c.logs / "cifar10n-data.log")))
    if c.background.returncode != 0:
        return StepResult("cifar10n", "failed", summary="writing the CIFAR-10N folders failed",
                          details=_fence(_tail(c.logs / "cifar10n-data.log")))
    rows, details, states = [], [], []
    worst_auroc = None
    for human in ("worst", "aggre"):
        run = c.work / "runs" / f"c10n-{human}"
        shutil.rmtree(run, ignore_errors=True)
        shared = c.work / "runs" / "c10n-worst" / "checkpoints" / "pretrain.pt"
        if human == "aggre" and shared.is_file():  # SimCLR never sees labels: one pre-training for both
            if str(ROOT) not in sys.path:  # run as `python bench/gpu_check.py`
                sys.path.insert(0, str(ROOT))
            from engine.runs import owner
            from engine.runs.rundir import RunDir

            owner.claim(RunDir(run))  # a run folder CLeaN made, seeded with the shared pre-training
            (run / "checkpoints").mkdir(parents=True)
            shutil.copy2(shared, run / "checkpoints" / "pretrain.pt")
            RunDir(run).mark_stage_done("pretrain")  # the one "done" rule: recorded, and its file in place
        argv = [c.python, "-m", "engine", "fit", str(c.work / f"c10n-{human}"), "--run-dir", str(run),
                *c.size.cifar10n_fit, "--set", "embed.enabled=false", "--quiet"]
        t0 = time.monotonic()
        rc, tail = c.command(f"cifar10n-{human}", argv, left())
        seconds = time.monotonic() - t0
        metrics = _read_json(run / "metrics.json")
        states.append(_state(rc) if rc != 0 else "passed")
        if not metrics:
            rows.append(f"| {human} | – | – | – | – | – | – | {seconds:.0f} | {_state(rc)} |")
            details += _fence(tail)
            continue
        rows.append(f"| {human} | {metrics['n']:,} | {metrics['n_mislabeled'] / max(metrics['n'], 1):.1%} | "
                    f"{metrics['precision']} | {metrics['recall']} | {metrics['f1']} | **{metrics['auroc']}** | "
                    f"{seconds:.0f} | {'reused the worst run’s pre-training' if human == 'aggre' else ''} |")
        if human == "worst":
            worst_auroc = metrics["auroc"]
    table = ["| labels | images | wrong | precision | recall | F1 | AUROC | wall s | note |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|", *rows]
    fit = " ".join(c.size.cifar10n_fit)
    lines = [f"`python -m engine fit c10n-<labels> {fit} --set embed.enabled=false` (truth.csv of to_folder.py "
             "--human found in the folder)", "", *table, *details]
    summary = f"worst AUROC {worst_auroc} (goal >= {AUROC_GOAL})" if worst_auroc is not None else "no worst result"
    state = "passed" if all(s == "passed" for s in states) else next(s for s in states if s != "passed")
    return StepResult("cifar10n", state, summary=summary, details=lines)


RUNNERS = {"preflight": step_preflight, "tests": step_tests, "throughput": step_throughput, "table1": step_table1,
           "cifar10n": step_cifar10n}


# ============================================================================================ report


def report(results: dict[str, StepResult], *, card: str, dry: bool) -> str:
    lines = ["# GPU check" + (" (CPU DRY RUN: toy sizes, the numbers mean nothing)" if dry else f": {card}"), "",
             f"- written: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
             "- command: `" + ("bash bench/gpu_check.sh --dry-run" if dry else "SHARED_DATA=bench/data/shared bash "
                               "bench/gpu_check.sh") + "` (bench/gpu_check.py; steps may be split with --only)",
             f"- deadlines (s): {', '.join(f'{k} {DRY_DEADLINE_S if dry else v}' for k, v in DEADLINES.items())}", "",
             "| step | result | seconds | summary |", "|---|---|---:|---|"]
    for name in STEPS:
        r = results.get(name, StepResult(name, "not run"))
        lines.append(f"| {name} | {r.state} | {r.seconds:.0f} | {r.summary} |")
    for name in STEPS:
        r = results.get(name)
        if r and r.details:
            lines += ["", f"## {name}", "", *r.details]
    return "\n".join(lines) + "\n"


# ============================================================================================ helpers


def _stop_group(p: subprocess.Popen) -> None:
    """SIGTERM the step's process group (the engine checkpoints and exits), SIGKILL what is left after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _state(rc: int | None) -> str:
    return "timed out" if rc is None else "passed" if rc == 0 else f"failed (exit {rc})"


def _tail(log: Path, lines: int = 25) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _fence(text: str) -> list[str]:
    return ["", "```", *text.splitlines(), "```"] if text.strip() else []


def _body(md: str) -> list[str]:
    """A benchmark's markdown report without its title line."""
    lines = md.splitlines()
    return lines[1:] if lines and lines[0].startswith("# ") else lines


def _last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _file_safe(card: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", card.lower()).strip("-") or "unknown"


# ============================================================================================ main


def default_shared() -> str:
    for candidate in (os.environ.get("SHARED_DATA"), ROOT / "bench" / "data" / "shared", ROOT.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "to_folder.py").is_file():
            return str(candidate)
    return str(os.environ.get("SHARED_DATA") or ROOT / "bench" / "data" / "shared")


def build_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="every step at toy size on the CPU")
    p.add_argument("--only", default=",".join(STEPS), help=f"comma list of steps ({', '.join(STEPS)})")
    p.add_argument("--shared-data", default=None, help="copy of ../shared/data (default: $SHARED_DATA, "
                   "bench/data/shared, ../shared/data)")
    p.add_argument("--work", default=None, help="git-ignored work folder (default bench/work/gpu_check, or "
                   "bench/work/gpu_check_dry for the dry run)")
    p.add_argument("--results", default=None, help="report folder (default bench/results; dry run: WORK/results)")
    p.add_argument("--write-cifar10n", action="store_true", help=argparse.SUPPRESS)  # the background data writer
    args = p.parse_args(argv)
    args.shared_data = args.shared_data or default_shared()
    args.work = args.work or str(ROOT / "bench" / "work" / ("gpu_check_dry" if args.dry_run else "gpu_check"))
    return args


def main(argv: list[str] | None = None) -> int:
    args = build_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in STEPS]
    if unknown:
        print(f"error: unknown step(s) {', '.join(unknown)}: use {', '.join(STEPS)}", file=sys.stderr)
        return 2
    c = Check(args)
    if not (c.shared / "to_folder.py").is_file():
        print(f"error: {c.shared}/to_folder.py not found: copy ../shared/data there first (bench/gpu_check.sh's "
              "header says how) or pass --shared-data", file=sys.stderr)
        return 2
    if args.write_cifar10n:
        c.write_cifar10n()
        return 0
    if not c.dry:  # the dry run starts afresh every time; a real check may be split over invocations
        results = c.load_state()
    else:
        shutil.rmtree(c.work, ignore_errors=True)
        results = {}
    if "cifar10n" in only:
        c.start_background_data()
    path = c.save(results)
    try:
        for name in STEPS:
            if name not in only:
                continue
            print(f"== {name} (deadline {c.deadline(name)} s)", flush=True)
            t0 = time.monotonic()
            try:
                result = RUNNERS[name](c)
            except Exception as e:  # one broken step must not cost the report
                result = StepResult(name, "failed", summary=f"{type(e).__name__}: {e}")
            result.seconds = time.monotonic() - t0
            results[name] = result
            path = c.save(results)
            print(f"   {result.state}: {result.summary} ({result.seconds:.0f} s)", flush=True)
    finally:
        if c.background is not None and c.background.poll() is None:
            _stop_group(c.background)
    print(f"wrote {path}")
    return 0 if all(results[s].state == "passed" for s in only if s in results) else 1


if __name__ == "__main__":
    sys.exit(main())
