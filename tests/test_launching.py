"""Sweeps that scale: GPU/CPU slots, the local launcher, the sweeper's plan, the SLURM path.

The slot tests fake the hardware (a pure function of GPU list and cores). The launcher test
runs a toy Hydra task in real subprocesses; the end-to-end tests run `degrade sweep` on tiny
depth-8 nets as a user would, with the local launcher and with submitit's local executor.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.callbacks import Callbacks
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobStatus
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf

from degradation.config import CONF_DIR
from degradation.console import override
from degradation.errors import LauncherError
from degradation.launch.compose import compose_config, compose_tree, register, sweep_jobs
from degradation.launch.plan import fuse_runs, job_overrides, plan
from degradation.runs import CHECKPOINT, PREVIOUS_CHECKPOINT, SUMMARY_FILE, find_runs, run_dir
from degradation.storage import LOCK, read_json
from degradation.training.loop import train
from hydra_plugins.degrade_launcher.local_launcher import JobFailed, ParallelLauncher
from tests.conftest import degrade, tiny_overrides


def launcher_settings(config: DictConfig) -> dict[str, Any]:
    """`hydra.launcher` of a config composed with its `hydra` node: the local launcher's
    settings from conf/hydra/launcher/local.yaml, the one home of their defaults."""
    settings = OmegaConf.to_container(config.hydra.launcher, resolve=True)
    settings.pop("_target_")
    return settings


def local_launcher(*overrides: str) -> ParallelLauncher:
    """The local launcher as `degrade sweep OVERRIDES` configures it."""
    return ParallelLauncher(**launcher_settings(compose_tree(list(overrides), with_hydra=True)))


def test_launcher_counts_gpus_without_using_them(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    slots = local_launcher("hydra.launcher.runs_per_gpu=2").slots()
    assert [slot.gpus for slot in slots] == [(str(i),) for i in range(4)] * 2
    assert all(not slot.gpus for slot in local_launcher("device=cpu").slots())
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(LauncherError, match="device=cuda but"):
        local_launcher("device=cuda").slots()


def test_hydras_plugin_scan_finds_and_imports_our_plugins() -> None:
    # As in an installed (not editable) package: the scan walks hydra_plugins/ and executes
    # each public module before registering it in sys.modules.
    code = ("from hydra.core.plugins import Plugins; "
            "print(sorted(name for name in Plugins.instance().class_name_to_class "
            "if 'degrade_launcher' in name))")
    found = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True,
                           text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert found.returncode == 0, found.stderr
    for name in ("local_launcher.ParallelLauncher", "sweeper.DegradeSweeper",
                 "submitit_launchers.SlurmLauncher", "submitit_launchers.SlurmLocalLauncher"):
        assert f"hydra_plugins.degrade_launcher.{name}" in found.stdout


# --- the sweep plan: Hydra's expansion, one job per distinct unfinished run ----------------


def test_expansion_follows_hydras_basic_sweeper() -> None:
    jobs = sweep_jobs({"depth": "20,56"}, ["arch=plain,resnet", "seed=0"])
    assert jobs == [["depth=20", "arch=plain", "seed=0"], ["depth=20", "arch=resnet", "seed=0"],
                    ["depth=56", "arch=plain", "seed=0"], ["depth=56", "arch=resnet", "seed=0"]]


def test_plain_nets_under_several_options_are_one_run(tmp_path: Path) -> None:
    planned = plan(["arch=plain,resnet", "shortcut=A,B", "depth=8", f"output_dir={tmp_path}"],
                   sweep=True)
    assert [run.folder.parent.name for run in planned] == ["plain-8", "resnet-8-A", "resnet-8-B"]
    assert [run.action for run in planned] == ["start"] * 3


@pytest.mark.slow
def test_runs_that_differ_only_in_seed_share_fused_jobs(tmp_path: Path) -> None:
    planned = plan(["arch=plain,resnet", "seed=0,1,2", "depth=8,110", "trainer.fuse=2",
                    f"output_dir={tmp_path}"], sweep=True)
    jobs = fuse_runs(planned)
    described = [[f"{run.config.arch}-{run.config.depth}:{run.config.seed}" for run in job]
                 for job in jobs]
    # Chunks of at most trainer.fuse; depth 110 warms up per run, so it is never fused.
    assert sorted(described) == [["plain-110:0"], ["plain-110:1"], ["plain-110:2"],
                                 ["plain-8:0", "plain-8:1"], ["plain-8:2"],
                                 ["resnet-110:0"], ["resnet-110:1"], ["resnet-110:2"],
                                 ["resnet-8:0", "resnet-8:1"], ["resnet-8:2"]]
    assert described[0] == ["plain-8:0", "plain-8:1"]  # jobs in the order of their first run
    assert job_overrides(jobs[0])[-1] == "trainer.fuse_with=[1]"
    assert job_overrides(jobs[1]) == jobs[1][0].overrides
    fused = compose_config(job_overrides(jobs[0]))
    assert run_dir(fused) == jobs[0][0].folder  # the job's folder is its first run's own
    # Runs in other output folders are other runs, never fused with these.
    two_places = plan(["seed=0,1", "depth=8", "trainer.fuse=2",
                       f"output_dir={tmp_path / 'a'},{tmp_path / 'b'}"], sweep=True)
    assert [[run.config.output_dir for run in job] for job in fuse_runs(two_places)] == [
        [str(tmp_path / "a")] * 2, [str(tmp_path / "b")] * 2]
    unfused = plan(["seed=0,1", "depth=8", f"output_dir={tmp_path}"], sweep=True)
    assert [len(job) for job in fuse_runs(unfused)] == [1, 1]  # trainer.fuse=1: the default


# --- the local launcher, on a toy task in real subprocesses --------------------------------


def toy_task(cfg: DictConfig) -> str:
    """Seeds 0 and 1 wait for each other (so they must run at once); seed 1 then fails."""
    folder = Path(HydraConfig.get().runtime.output_dir)
    sweep_dir = Path(HydraConfig.get().sweep.dir)
    (sweep_dir / f"arrived-{cfg.seed}").touch()
    if cfg.seed in (0, 1):
        other = sweep_dir / f"arrived-{1 - cfg.seed}"
        deadline = time.time() + 120
        while not other.exists():
            if time.time() > deadline:
                raise TimeoutError("ran alone: the other job never started")
            time.sleep(0.05)
    seen = {"cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "threads": os.environ.get("OMP_NUM_THREADS"),
            "cores": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []}
    (folder / "seen.json").write_text(json.dumps(seen))
    print(f"toy output of seed {cfg.seed}")
    if cfg.seed == 1:
        raise RuntimeError("boom")
    return f"seed {cfg.seed} ok"


@pytest.mark.slow
def test_local_launcher_runs_jobs_at_once_pinned_and_isolated(tmp_path: Path) -> None:
    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        fixed = [f"output_dir={tmp_path}", "depth=8"]  # a sweeper repeats these in every job
        config = compose("config", overrides=fixed, return_hydra_config=True)
        loader = GlobalHydra.instance().config_loader()
        # Two fake GPUs: the jobs never touch CUDA, they only report what they were given.
        launcher = ParallelLauncher(**{**launcher_settings(config), "gpus": ["0", "1"],
                                     "poll_s": 0.05})
        launcher.setup(hydra_context=HydraContext(config_loader=loader,
                                                  callbacks=Callbacks(config)),
                       task_function=toy_task, config=config)
        returns = launcher.launch([[*fixed, f"seed={seed}"] for seed in range(3)],
                                  initial_job_idx=0)
    assert [ret.status for ret in returns] == [JobStatus.COMPLETED, JobStatus.FAILED,
                                               JobStatus.COMPLETED]
    assert returns[0].return_value == "seed 0 ok" and returns[2].return_value == "seed 2 ok"
    assert isinstance(returns[1]._return_value, JobFailed)
    assert str(returns[1]._return_value) == "RuntimeError: boom"
    folders = [Path(ret.working_dir) for ret in returns]
    assert all(folder.is_relative_to(tmp_path) for folder in folders)
    assert [folder.name.split("-")[1] for folder in folders] == ["0", "1", "2"]
    seen = [json.loads((folder / "seen.json").read_text()) for folder in folders]
    assert {seen[0]["cuda"], seen[1]["cuda"]} == {"0", "1"}  # one GPU each, at the same time
    assert seen[2]["cuda"] in ("0", "1")  # the slot freed first
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cores) >= 2:
        assert not set(seen[0]["cores"]) & set(seen[1]["cores"])
        assert seen[0]["threads"] == str(len(seen[0]["cores"]))
    # Each job's output is in its own log, traceback included; nothing of the others.
    logs = [(folder / "train.log").read_text() for folder in folders]
    assert "toy output of seed 0" in logs[0] and "seed 1" not in logs[0]
    assert "RuntimeError: boom" in logs[1] and "toy output of seed 1" in logs[1]
    assert "boom" not in logs[2]


# --- `degrade sweep` end to end ---------------------------------------------------------


def mtimes(root: Path) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in sorted(root.rglob(CHECKPOINT))}


@pytest.mark.slow
def test_sweep_skips_finished_resumes_unfinished_and_runs_in_parallel(
        cifar_root: Path, tmp_path: Path) -> None:
    finished = train(compose_config(tiny_overrides(cifar_root, tmp_path)))  # resnet-8-A
    plain = compose_config(tiny_overrides(cifar_root, tmp_path, arch="plain"))
    uninterrupted = train(plain).summary
    # Make the plain run look stopped after its first checkpoint (iteration 6 of 12).
    folder = run_dir(plain)
    (folder / SUMMARY_FILE).unlink()
    os.replace(folder / PREVIOUS_CHECKPOINT, folder / CHECKPOINT)
    before = mtimes(finished.run_dir)
    sweep = ["arch=plain,resnet", "shortcut=A,B", *tiny_overrides(cifar_root, tmp_path)[1:],
             "hydra.launcher.parallel_runs=2"]

    result = degrade("sweep", *sweep)
    assert result.returncode == 0, result.stderr
    assert "3 runs: 1 to start, 1 to resume, 0 to retrain, 1 finished (skipped)" in result.stdout
    console = result.stdout  # Hydra's log lines and the CLI's
    assert "Sweep of 4 jobs: 3 distinct runs, 1 finished (skipped), 2 to launch" in console
    started = [m.start() for m in re.finditer(r"\] started runs/", console)]
    ended = [m.start() for m in re.finditer(r"finished\] ", console)]
    assert len(started) == 2 and len(ended) == 2 and max(started) < min(ended)  # both at once
    assert "[2/2 finished] " in console and "test error" in console
    # Without a terminal, the runs' progress as plain lines, the last once all have ended.
    assert re.search(r"^plain-8 +seed 0 +done +12/12 ", console, re.MULTILINE)
    assert console.splitlines()[-2] == "sweep: 2/2 runs ended"
    assert mtimes(finished.run_dir) == before  # the finished run was not even launched
    resumed = read_json(folder / SUMMARY_FILE)
    assert "resumed from iteration 6" in (folder / "train.log").read_text()
    for key in ("iterations_done", "final_test_error", "final_train_error"):
        assert resumed[key] == uninterrupted[key], key  # exactly the uninterrupted result
    assert sorted(record.state for record in find_runs(tmp_path)) == ["done"] * 3

    before = mtimes(tmp_path)
    again = degrade("sweep", *sweep)
    assert again.returncode == 0, again.stderr
    assert "3 finished (skipped)" in again.stdout
    assert mtimes(tmp_path) == before


@pytest.mark.slow
def test_a_sweep_with_fuse_trains_seeds_together_each_in_its_own_folder(
        cifar_root: Path, tmp_path: Path) -> None:
    sweep = ["seed=0,1,2", "trainer.fuse=2", *tiny_overrides(cifar_root, tmp_path)]
    dry = degrade("sweep", "--dry-run", *sweep)
    assert "(one fused job with seeds [1])" in dry.stdout, dry.stdout
    result = degrade("sweep", *sweep)
    assert result.returncode == 0, result.stderr
    assert "3 runs in 2 jobs" in result.stdout
    summaries = {record.config.seed: record.summary for record in find_runs(tmp_path)}
    assert sorted(summaries) == [0, 1, 2]
    assert summaries[0]["fused_with"] == [1] and summaries[1]["fused_with"] == [0]
    assert "fused_with" not in summaries[2]  # the chunk of one trains alone
    assert all(summary["status"] == "done" for summary in summaries.values())
    again = degrade("sweep", *sweep)
    assert again.returncode == 0 and "3 finished (skipped)" in again.stdout


@pytest.mark.slow
def test_slurm_path_requeues_a_preempted_run_which_resumes(cifar_root: Path, tmp_path: Path
                                                            ) -> None:
    # submitit's local executor runs the same code as on SLURM: the job gets SIGUSR2 (what
    # SLURM sends before a time limit or on preemption), checkpoints, is requeued, resumes.
    overrides = tiny_overrides(cifar_root, tmp_path, **{
        "train.iterations": 24, "train.milestones": "[12,18]", "train.eval_every": 2,
        "train.batch_size": 8})
    sweep = subprocess.Popen(
        [sys.executable, "-m", "degradation", "sweep", *overrides, "hydra/launcher=slurm_local"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        folder = run_dir(compose_config(overrides))
        deadline = time.time() + 300
        while not (folder / CHECKPOINT).exists() or not (folder / LOCK).exists():
            if sweep.poll() is not None or time.time() > deadline:
                pytest.fail(f"no checkpoint appeared:\n{sweep.communicate()[0]}")
            time.sleep(0.05)
        pid = int((folder / LOCK).read_text().split()[1])
        os.kill(pid, signal.SIGUSR2)
        output, _ = sweep.communicate(timeout=300)
    finally:
        sweep.kill()
    assert sweep.returncode == 0, output
    assert "1/1 runs ended" in output
    log = (folder / "train.log").read_text()
    assert "stopped by SIGUSR2" in log and "requeueing the job" in log
    assert "Requeued job" in log and re.search(r"resumed from iteration \d+", log)
    summary = read_json(folder / SUMMARY_FILE)
    assert summary["status"] == "done" and summary["iterations_done"] == 24
    assert list(tmp_path.glob("submitit/*/*_submitted.pkl"))  # it went through submitit


# --- a sweep is planned once: the plan --dry-run prints is the plan the launcher gets -------

# Every process of a sweep (the command, each job's worker) notes what it does into COUNTS:
# each Hydra composition (its overrides), each validation of a configuration asked for (a run
# read back from its folder is not one), each data check made before training (a run's own
# loading of its data is not one), and the jobs the sweep hands its launcher.
COUNTING_HOOK = '''
import json, os, sys

COUNTS = {counts!r}


def _note(*entry):
    with open(COUNTS, "a") as file:
        file.write(json.dumps(entry) + "\\n")


def _inside(name):
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name == name:
            return True
        frame = frame.f_back
    return False


from hydra._internal.config_loader_impl import ConfigLoaderImpl
_compose = ConfigLoaderImpl.load_configuration
def load_configuration(self, config_name, overrides, *args, **kwargs):
    _note("composition", list(overrides))
    return _compose(self, config_name, overrides, *args, **kwargs)
ConfigLoaderImpl.load_configuration = load_configuration

import degradation.config
_validate = degradation.config.validate
def validate(config):
    if not _inside("_read_record"):  # a run's config.yaml read back
        _note("validation", config.seed)
    return _validate(config)
degradation.config.validate = validate

import degradation.data.cifar
_ensure = degradation.data.cifar.ensure_cifar10
def ensure_cifar10(root, *args, **kwargs):
    if not _inside("load_cifar10"):
        _note("data check", str(root))
    return _ensure(root, *args, **kwargs)
degradation.data.cifar.ensure_cifar10 = ensure_cifar10

import degradation.launch.session
_run_sweep = degradation.launch.session.run_sweep
def run_sweep(jobs, compose, launch_jobs, here):
    def launch(planned):
        _note("launched", [job.overrides for job in planned])
        return launch_jobs(planned)
    return _run_sweep(jobs, compose, launch, here)
degradation.launch.session.run_sweep = run_sweep
'''


def counted(counts: Path) -> dict[str, list[Any]]:
    """What the processes noted into `counts`, by kind."""
    noted: dict[str, list[Any]] = {}
    for line in counts.read_text().splitlines():
        kind, value = json.loads(line)
        noted.setdefault(kind, []).append(value)
    return noted


@pytest.mark.slow
@pytest.mark.trains
def test_a_sweep_is_planned_once_and_launched_as_its_dry_run_lists(cifar_root: Path,
                                                                    tmp_path: Path) -> None:
    sweep = ["seed=0,1,2", "trainer.fuse=2", *tiny_overrides(cifar_root, tmp_path / "out"),
             "hydra.launcher.parallel_runs=2"]
    dry_counts, counts = tmp_path / "dry.jsonl", tmp_path / "sweep.jsonl"
    dry = degrade("sweep", "--dry-run", *sweep, hook_dir=tmp_path / "dry-hook",
                  hook=COUNTING_HOOK.format(counts=str(dry_counts)))
    assert dry.returncode == 0, dry.stderr
    listed = re.findall(r"^  start +(\S+)  \[(.*)\]"
                        r"(?:  \(one fused job with seeds (\[.*\])\))?$", dry.stdout, re.MULTILINE)
    assert len(listed) == 3, dry.stdout
    assert not (tmp_path / "out").exists()  # a dry run writes nothing

    result = degrade("sweep", *sweep, hook=COUNTING_HOOK.format(counts=str(counts)),
                     hook_dir=tmp_path / "hook")
    assert result.returncode == 0, result.stderr
    noted = counted(counts)
    # The jobs launched are the jobs listed: each listed run that heads a job, with the seeds
    # fused into it named as their override would.
    fused_into_others = {seed for _, _, seeds in listed for seed in json.loads(seeds or "[]")}
    expected = [[*overrides.split(" "), *fused_with(seeds)]
                for folder, overrides, seeds in listed
                if int(Path(folder).name.split("-")[1]) not in fused_into_others]
    assert noted["launched"] == [expected]
    assert sorted(str(record.path) for record in find_runs(tmp_path / "out")) == sorted(
        folder for folder, _, _ in listed)
    for seed in (0, 1, 2):
        # One composition and one validation per run, in every process of the sweep
        # together (the job of seeds 0 and 1 trains both: its worker validates neither).
        assert sum(f"seed={seed}" in overrides for overrides in noted["composition"]) == 1
        assert noted["validation"].count(seed) == 1, noted["validation"]
    assert noted["data check"] == [str(cifar_root)]  # one data folder: checked once
    assert counted(dry_counts)["validation"] == [0, 1, 2]  # the dry run plans the same way


@pytest.mark.trains
def test_train_validates_its_run_once_and_checks_its_data_once(cifar_root: Path,
                                                                tmp_path: Path) -> None:
    counts = tmp_path / "train.jsonl"
    result = degrade("train", *tiny_overrides(cifar_root, tmp_path / "out"),
                     hook=COUNTING_HOOK.format(counts=str(counts)), hook_dir=tmp_path / "hook")
    assert result.returncode == 0, result.stderr
    noted = counted(counts)
    assert noted["validation"] == [0]  # by its plan: Hydra's job trains the plan's config
    assert noted["data check"] == [str(cifar_root)]
    # Composed once by its plan; Hydra's run mode then composes it for the folder the plan
    # named (Hydra 1.3: once to learn the mode, once for the job), validating nothing.
    (folder,) = [record.path for record in find_runs(tmp_path / "out")]
    named = [overrides.count(override("hydra.run.dir", str(folder)))
             for overrides in noted["composition"]]
    assert named.count(0) == 1 and set(named[1:]) == {1}, noted["composition"]


def fused_with(seeds: str) -> list[str]:
    """The override that names a job's fused seeds, from a dry run's `[1, 2]` (none: [])."""
    return [f"trainer.fuse_with=[{','.join(map(str, json.loads(seeds)))}]"] if seeds else []


def test_the_plugins_are_found_through_their_entry_point() -> None:
    from degradation.launch.compose import declared_plugins

    names = {plugin.__name__ for plugin in declared_plugins()}
    assert {"DegradeSweeper", "ParallelLauncher"} <= names
