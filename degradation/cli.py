"""`degrade`: the command line. A thin front door; Hydra owns configuration and sweeps.

    degrade train depth=56 arch=plain          # one run of the paper's recipe
    degrade sweep depth=20,56 arch=plain,resnet
    degrade plot outputs/                      # Figure 6 from every run under outputs/

Over 400 lines because every command's options and their help texts are declared here, as
Typer needs them; each command only parses, calls the module that does the work, and prints.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer

from degradation.completion import complete_override, use_bash_script
from degradation.console import warnings_to_stderr
from degradation.errors import BAD_INPUT_EXIT, FAILED_EXIT
from degradation.help_text import Command, Group, overrides_help
from degradation.package import config_default, presets

use_bash_script()  # bash completion that knows `=` splits bash's words


app = typer.Typer(
    cls=Group,
    no_args_is_help=True,
    help="Reproduce the CIFAR-10 degradation study of He et al. 2016 (plain vs residual "
    "nets, Sec. 4.2). Configuration keys are given as Hydra overrides, e.g. "
    "`degrade train depth=56 arch=plain`; presets with `experiment=NAME` "
    f"({', '.join(presets())}).",
    context_settings={"help_option_names": ["-h", "--help"]},
)

INFO_CHOICES = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")

RUNS_PATH = typer.Argument(Path(config_default("output_dir")), help="Folder to search for runs.")
OUT = typer.Option(None, "--out", help="Where to write (default PATH/figures).")
RECURSIVE = typer.Option(False, "--recursive", help="Also read the output trees nested inside "
                         "PATH (folders holding their own runs/, e.g. a backup copy); a run "
                         "found in several folders is still counted once.")
OVERRIDES = typer.Argument(None, help=overrides_help(), show_default=False,
                           autocompletion=complete_override)
CFG = typer.Option(None, "--cfg", "-c", help="Print the config instead of running: job, hydra "
                   "or all (Hydra's --cfg).", rich_help_panel="Hydra")
RESOLVE = typer.Option(False, "--resolve", help="With --cfg: resolve interpolations.",
                       rich_help_panel="Hydra")
PACKAGE = typer.Option(None, "--package", "-p", help="With --cfg: only this part of the config "
                       "(e.g. train).", rich_help_panel="Hydra")
INFO = typer.Option(False, "--info", "-i", help="Print Hydra's information and exit; a "
                    f"topic may follow: {', '.join(INFO_CHOICES)} (default all).",
                    rich_help_panel="Hydra")
CONFIG_DIR = typer.Option(None, "--config-dir", exists=True, file_okay=False,
                          help="Your own presets: DIR/NAME.yaml is experiment=NAME (as "
                          "experiments/); DIR is on Hydra's search path too (DIR/hydra/"
                          "launcher/NAME.yaml).", rich_help_panel="Hydra")


def _print_version(value: bool) -> None:
    if value:
        from degradation.package import code_version, version

        typer.echo(f"degrade {version()} (commit {code_version() or 'unknown'})")
        raise typer.Exit()


@app.callback()
def _options(
    _version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                  help="Print the version and the code's git commit and exit."),
) -> None:
    """Reproduce the CIFAR-10 degradation study of He et al. 2016."""


def fail(message: str, code: int = BAD_INPUT_EXIT) -> None:
    """Print a one-line error and exit non-zero (no traceback for bad input)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@app.command()
def train(
    overrides: list[str] = OVERRIDES,
    force: bool = typer.Option(False, "--force", help="Retrain a finished run (the old folder "
                               "is kept beside it as <folder>.replaced-<time>)."),
    show_config: bool = typer.Option(False, "--show-config",
                                     help="Print the resolved configuration and exit."),
    cfg: str | None = CFG,
    resolve: bool = RESOLVE,
    package: str | None = PACKAGE,
    info: bool = INFO,
    config_dir: Path | None = CONFIG_DIR,
) -> None:
    """Train one run. Resumes it if interrupted; leaves it alone if finished.

    The run's folder is outputs/runs/<arch>-<depth>[-<shortcut>]/seed-<seed>-<hash>/ with
    config.yaml, TensorBoard events, metrics.csv, checkpoint.pt, summary.json and train.log.
    """
    from degradation.config import ConfigError
    from degradation.launch import plan
    from degradation.runs import SUMMARY_FILE
    from degradation.storage import RunLock
    from degradation.training.device import resolve_device

    overrides = overrides or []
    if _inspect(overrides, False, cfg, resolve, package, info, config_dir):
        return
    if show_config:  # as `--cfg job`: showing a configuration needs no data and no folder
        _show_config(overrides, config_dir)
        return
    planned = _plan(overrides, sweep=False, force=force, fetch=True, config_dir=config_dir)[0]
    if planned.action == "running":
        lock = RunLock(planned.folder)
        fail(str(lock.refusal(lock.holder() or "unknown")), code=FAILED_EXIT)
    try:
        resolve_device(planned.config.device)  # checked here only: sweeps may run elsewhere
    except ConfigError as error:
        fail(str(error))
    if planned.action == "skip" and not planned.config.trainer.fuse_with:
        # (With fuse_with the runs fused with it may be unfinished: training skips each
        # finished one and says so.)
        typer.echo(plan.skipped_line(planned) + "; --force retrains it")
        return
    warning = _cpu_estimate([planned])
    if warning:
        typer.echo(warning, err=True)
    if force:  # the runs fused with it (trainer.fuse_with) are retrained too
        for folder in plan.member_folders(planned.config):
            if (folder / SUMMARY_FILE).exists():
                typer.echo(f"previous run kept in {plan.set_aside(folder)}")
    plan.launch(overrides, sweep=False, config_dir=config_dir)


@app.command()
def sweep(
    overrides: list[str] = OVERRIDES,
    force: bool = typer.Option(False, "--force", help="Retrain finished runs too (old folders "
                               "are kept as <folder>.replaced-<time>)."),
    dry_run: bool = typer.Option(False, "--dry-run",
                                 help="List the runs and what would happen to each; start none."),
    cfg: str | None = CFG,
    resolve: bool = RESOLVE,
    package: str | None = PACKAGE,
    info: bool = INFO,
    config_dir: Path | None = CONFIG_DIR,
) -> None:
    """Run a grid of runs (Hydra multirun): `depth=20,56 arch=plain,resnet` is 4 runs.

    Any Hydra sweep syntax works, quoted as a shell needs it: `seed='range(5)'`,
    `experiment=fig6`. Finished runs are skipped, interrupted ones resumed; a failing run
    does not stop the others.
    """
    from degradation.launch import plan
    from degradation.launch.sweeps import recorded
    from degradation.runs import ERROR_FILE, last_line, read_run, runs_count

    overrides = overrides or []
    if _inspect(overrides, True, cfg, resolve, package, info, config_dir):
        return
    planned = _plan(overrides, sweep=True, force=force, fetch=not dry_run,
                    config_dir=config_dir)
    counts = {action: sum(p.action == action for p in planned)
              for action in ("start", "resume", "skip", "retrain", "running")}
    typer.echo(f"{runs_count(len(planned))}: {counts['start']} to start, "
               f"{counts['resume']} to resume, "
               f"{counts['retrain']} to retrain, {counts['skip']} finished (skipped)"
               + (f", {counts['running']} being trained elsewhere" if counts["running"] else ""))
    warning = _cpu_estimate(plan.to_launch(planned))
    if warning:
        typer.echo(warning, err=True)
    if dry_run:
        todo = plan.to_launch(planned)
        fused_with = {job[0].folder: [run.config.seed for run in job[1:]]
                      for job in plan.fuse_runs(todo) if len(job) > 1}
        for run in planned:
            seeds = fused_with.get(run.folder)
            typer.echo(f"  {run.action:8} {run.folder}  [{' '.join(run.overrides)}]"
                       + (f"  (one fused job with seeds {seeds})" if seeds else ""))
        return
    for run in planned:
        if run.action == "retrain":
            plan.set_aside(run.folder)
    if counts["start"] + counts["resume"] + counts["retrain"] == 0:
        return
    with recorded([(run.config, run.folder) for run in planned]):  # for `degrade status`
        plan.launch(overrides, sweep=True, config_dir=config_dir)
    _write_study(planned)
    records = [read_run(run.folder) for run in planned]
    states = [record.state if record else "failed" for record in records]
    done = sum(state in ("done", "diverged") for state in states)
    others = [run for run, state in zip(planned, states, strict=True) if state == "running"]
    typer.echo(f"sweep finished: {done}/{len(planned)} runs ended "
               f"({states.count('diverged')} diverged)"
               + (f", {len(others)} being trained by another process" if others else ""))
    for run in others:  # every job of this sweep has ended: the lock is another process's
        typer.echo(f"  {run.folder}: {plan.LEFT_TO_OTHER}")
    failed = [run for run, state in zip(planned, states, strict=True)
              if state not in ("done", "diverged", "running")]
    for run in failed:
        # error.txt as far as it reads: a binary file or a folder in its place is no reason
        # to end in a traceback
        reason = last_line(run.folder / ERROR_FILE) or "did not finish"
        typer.echo(f"  failed: {run.folder}: {reason}", err=True)
    if failed:
        raise typer.Exit(FAILED_EXIT)


@app.command()
def status(
    targets: list[str] = typer.Argument(None, help="PATH (folder to search for runs, default "
                                        "outputs) and/or the sweep's overrides KEY=VALUE: "
                                        "then its runs not yet started are listed too.",
                                        show_default=False),
    watch: bool = typer.Option(False, "--watch", help="Refresh until no run can change: the "
                               "sweep under way has ended and no run trains (Ctrl-C stops "
                               "watching, not the runs)."),
    every: float = typer.Option(5.0, "--every", min=0.1, help="Seconds between refreshes."),
    times: int | None = typer.Option(None, "--times", min=1,
                                     help="With --watch: stop after this many refreshes."),
    recursive: bool = RECURSIVE,
) -> None:
    """One line per run under PATH: network, seed, state, iteration, last errors, lr, img/s, ETA.

    States: done, diverged, running (a live process holds the run's lock), failed (with the
    last line of its error.txt), interrupted (resumes from its checkpoint), pending,
    inconsistent (its folder, config.yaml and summary.json disagree; the reason follows,
    and the other commands leave it out), and, for the runs the overrides (under PATH) or a
    sweep under way under PATH ask for whose folder holds no run yet, not started. `degrade
    status experiment=fig6 --watch` follows a sweep started elsewhere (e.g. on a cluster).
    """
    from degradation.analysis.status import status_command

    overrides = [target for target in targets or [] if "=" in target]
    paths = [Path(target) for target in targets or [] if "=" not in target]
    if len(paths) > 1:
        fail(f"status takes one PATH, not {len(paths)}: {' '.join(map(str, paths))}")
    # One _analysis for the whole command: a warning (a damaged file, a copied run) is
    # printed once, not at every refresh.
    text = _analysis(status_command, paths[0] if paths else None, overrides, recursive,
                     watch, every, times, stream=typer.get_text_stream("stdout"))
    if text is not None:
        typer.echo(text)


@app.command()
def plot(
    path: Path = RUNS_PATH,
    out: Path | None = OUT,
    linear: bool = typer.Option(False, "--linear", help="Full linear error axis instead of the "
                                "paper's 0-20% range."),
    recursive: bool = RECURSIVE,
) -> None:
    """Figure 6 from every run under PATH: error (%) vs iterations, training dashed, test bold.

    One panel per family (plain; resnet; resnet-110 vs 1202 when present), one colour per
    depth, a band over seeds; plus a shortcut A/B/C comparison when the runs have several.
    Writes PNG and PDF to PATH/figures/ and prints their paths.
    """
    from degradation.analysis.board import study_command
    from degradation.analysis.figures import plot_command

    with warnings_to_stderr():  # both read the runs: each warning once
        for written in _figures(plot_command, path, out, linear, recursive):
            typer.echo(written)
        study = _analysis(study_command, path)
    if study is not None:
        typer.echo(f"{study} (TensorBoard: tensorboard --logdir {path})")


@app.command()
def table(
    path: Path = RUNS_PATH,
    out: Path | None = OUT,
    recursive: bool = RECURSIVE,
) -> None:
    """Table 6: final and best test error per network (mean +- std over seeds), beside the paper.

    Prints Markdown and writes table6.md and table6.csv beside the figures.
    """
    from degradation.analysis.results import table_command

    text, written = _figures(table_command, path, out, recursive)
    typer.echo(text)
    for file in written:
        typer.echo(file)


@app.command()
def export(
    path: Path = RUNS_PATH,
    out: Path | None = typer.Option(None, "--out", help="File to write (default "
                                    "PATH/figures/points.csv, or .parquet with --format "
                                    "parquet)."),
    fmt: str | None = typer.Option(None, "--format", help="csv or parquet (needs pyarrow); "
                                   "default: parquet for a .parquet file, else csv."),
    recursive: bool = RECURSIVE,
    runs_from: Path | None = typer.Option(None, "--from", hidden=True,
                                          help="The former form, `export FILE --from PATH`."),
) -> None:
    """Every logged point of every run under PATH as one table: a row per run and iteration,
    with the run's configuration as columns (arch, depth, shortcut, seed, train.*, data.*,
    ...) and one column per metric (error/train, error/test, loss/train, loss/test, lr), as
    each run's metrics.csv holds them."""
    from degradation.analysis.export import export_command, format_refusal
    from degradation.analysis.results import figures_dir

    if runs_from is not None:  # `export FILE --from PATH`, as scripts written for it say
        path, out = runs_from, path
    fmt = fmt or ("parquet" if out is not None and out.suffix == ".parquet" else "csv")
    refusal = format_refusal(fmt)
    if refusal:
        fail(refusal)
    out = out if out is not None else figures_dir(path, None) / f"points.{fmt}"
    _check_writable(out.parent)
    typer.echo(_analysis(export_command, path, out, fmt, recursive))


@app.command()
def responses(
    path: Path = RUNS_PATH,
    out: Path | None = OUT,
    data_root: Path | None = typer.Option(None, "--data-root", help="CIFAR-10 folder, if not the "
                                          "one each run was trained on."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    recursive: bool = RECURSIVE,
) -> None:
    """Figure 7: standard deviation of every 3x3 conv's response (after BN, before ReLU/add).

    Runs each finished run's final checkpoint once over its evaluation set (cached as
    responses.json in the run folder), then plots per-layer and sorted curves.
    """
    from degradation.analysis.responses import responses_command

    for written in _figures(responses_command, path, out, data_root, device, recursive):
        typer.echo(written)


@app.command()
def evaluate(
    path: Path = RUNS_PATH,
    split: str = typer.Option("train", "--split", help="train (the images each run trained "
                              "on), test, or val (the held-out part, data.val_split > 0)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    data_root: Path | None = typer.Option(None, "--data-root", help="CIFAR-10 folder, if not the "
                                          "one each run was trained on."),
    recursive: bool = RECURSIVE,
) -> None:
    """The final weights of each finished run on a whole split, in eval mode, without
    augmentation: the clean training error that claim 1 is judged on where it exists.

    Writes evaluation.json into each run's folder (keyed by the checkpoint's SHA-256 and the
    split, so nothing is evaluated twice) and prints one row per run.
    """
    from degradation.analysis.evaluate import SPLITS, evaluate_command
    from degradation.config import ConfigError
    from degradation.training.device import resolve_device

    if split not in SPLITS:
        fail(f"--split {split!r} is not a split (allowed: {', '.join(SPLITS)})")
    try:
        resolve_device(device)
    except (ConfigError, RuntimeError) as error:
        fail(f"--device {device!r} is not a device (allowed: auto, cpu, cuda)"
             if isinstance(error, RuntimeError) else str(error))
    if not path.exists():
        fail(f"{path} does not exist")
    rows = _analysis(evaluate_command, path, split, device, recursive, data_root)
    for row in rows:
        typer.echo(row.text())
    if not any(row.entry for row in rows):
        fail(f"no finished run under {path} could be evaluated on {split}", code=FAILED_EXIT)


@app.command()
def claims(
    path: Path = RUNS_PATH,
    out: Path | None = OUT,
    recursive: bool = RECURSIVE,
) -> None:
    """The claims of Sec. 4.2, each with our numbers and a verdict: reproduced, not
    reproduced, inconclusive (within the seeds' noise: a 95% Welch interval of each difference),
    or not enough runs (naming the missing runs and the command that makes them).

    Prints Markdown and writes claims.md and claims.csv beside the figures.
    """
    from degradation.analysis.claims import claims_command

    text, written = _figures(claims_command, path, out, recursive)
    typer.echo(text)
    for file in written:
        typer.echo(file)


@app.command()
def gradients(
    path: Path = RUNS_PATH,
    out: Path | None = OUT,
    recursive: bool = RECURSIVE,
) -> None:
    """Per-layer gradient norms (grad_norms.csv) in network order at a few iterations, plain
    and ResNet at each depth: the evidence on vanishing gradients (claim 8).

    Writes gradients.png and .pdf; runs trained before gradient logging have none.
    """
    from degradation.analysis.figures import gradients_command

    written = _figures(gradients_command, path, out, recursive)
    if not written:
        typer.echo(f"no gradient logs (grad_norms.csv) in the finished runs under {path}: "
                   "runs trained before gradient logging have none; nothing to draw")
    for file in written:
        typer.echo(file)


@app.command()
def report(
    path: Path = RUNS_PATH,
    out: Path | None = OUT,
    recursive: bool = RECURSIVE,
) -> None:
    """One HTML page with the figures, the tables and every run's config, code version, time."""
    from degradation.analysis.report import report_command

    typer.echo(_figures(report_command, path, out, recursive))


@app.command()
def bench(
    overrides: list[str] = OVERRIDES,
    arch: list[str] = typer.Option(["resnet"], "--arch", help="Repeat for several."),
    depth: list[int] = typer.Option([20, 56], "--depth", help="Repeat for several."),
    batch_size: int | None = typer.Option(None, help="Default: train.batch_size (128)."),
    device: str | None = typer.Option(None, help="auto, cpu or cuda (default: device)."),
    steps: int = typer.Option(20, help="Timed training steps per repeat."),
    warmup_steps: int = typer.Option(3, help="Untimed steps first (compilation, caches)."),
    repeats: int = typer.Option(3, help="Timed repeats; the median is reported."),
    workers: int | None = typer.Option(None, help="The conventional DataLoader's workers."),
    images: int = typer.Option(50_000, help="Synthetic training images of CIFAR shape."),
    eval_steps: int = typer.Option(2, help="Timed evaluation batches."),
    runs: int = typer.Option(1, help="Also time this many runs at once: fused into one model "
                             "(trainer.fuse) against as many processes side by side."),
    record: bool = typer.Option(False, "--record", help="Append the rows to BENCHMARKS.md."),
    benchmarks_file: Path = typer.Option(Path("BENCHMARKS.md"), help="Where --record writes."),
) -> None:
    """Training and evaluation throughput: our pipeline vs the conventional one, same model.

    The conventional pipeline is PIL images, torchvision RandomCrop/Flip/Normalize through a
    DataLoader with workers, eager fp32, in a process of its own. Reports steady-state
    images/s after warm-up, the speed-up (median of back-to-back pairs), warm-up time,
    evaluation images/s and peak memory; `--runs K` also times K runs fused against K
    processes side by side.
    """
    from degradation.bench import bench_command

    if record:  # refused now, not after minutes of timing
        _check_writable(benchmarks_file.parent)
        if benchmarks_file.is_dir():
            fail(f"--benchmarks-file {benchmarks_file} is a folder; give a Markdown file")
    typer.echo(_analysis(bench_command, arch, depth, batch_size, device, steps, warmup_steps,
                         record, benchmarks_file, repeats=repeats, workers=workers,
                         images=images, eval_steps=eval_steps, overrides=overrides or [],
                         runs=runs,
                         progress=lambda line: typer.echo(line, err=True)))


@app.command("generate-data")
def generate_data(
    root: Path = typer.Argument(..., help="Folder to write cifar-10-batches-py/ into."),
    train_per_batch: int = typer.Option(500, min=1, help="Images in each of the 5 batches."),
    test_size: int = typer.Option(500, min=1, help="Images in the test batch."),
    seed: int = typer.Option(0),
) -> None:
    """Write a small synthetic data set in CIFAR-10's official format (offline demos)."""
    from degradation.data.cifar import BATCH_DIR, DataError, write_cifar10

    _check_writable(root / BATCH_DIR)
    try:
        written = write_cifar10(root, train_per_batch, test_size, seed)
    except DataError as error:  # a folder that holds data already: never overwritten
        fail(str(error))
    typer.echo(f"wrote {written}")


@app.command()
def check(device: str = typer.Option("auto", help="auto (CUDA when present), cpu or cuda."),
          ) -> None:
    """Is this machine ready? Runs every path a user's runs take on DEVICE, on tiny data.

    In a temporary folder, a few minutes: one run with the defaults, fused seeds, a sweep of
    two runs at once, resumes (a fused run's checkpoint alone; on CUDA also CPU to CUDA and
    back, and fewer GPUs visible), Ctrl-C then resume, responses, bench, and DDP over two
    processes. Prints passed/failed/skipped per check; exit 0 only when none failed.
    """
    from degradation.check import run_checks
    from degradation.config import DEVICES, ConfigError
    from degradation.training.device import resolve_device

    if device not in DEVICES:
        fail(f"--device {device!r} is not one of: {', '.join(DEVICES)}")
    try:
        resolved = resolve_device(device).type
    except ConfigError as error:
        fail(str(error))
    typer.echo(f"degrade check on {resolved}: each check runs `degrade ...` on generated data")
    rows = []
    for row in run_checks(resolved):
        rows.append(row)
        typer.echo(row.format())
    failed = sum(row.result == "failed" for row in rows)
    skipped = sum(row.result == "skipped" for row in rows)
    typer.echo(f"{len(rows) - failed - skipped} passed, {failed} failed, {skipped} skipped")
    if failed:
        raise typer.Exit(FAILED_EXIT)


def _analysis(command, *args, **kwargs):
    """Run an analysis command, turning its expected failures into one-line errors and
    printing its `warning:` lines (a damaged file, a run in several folders) on stderr."""
    from degradation.analysis.results import AnalysisError
    from degradation.launch.plan import USER_ERRORS

    with warnings_to_stderr():
        try:
            return command(*args, **kwargs)
        except AnalysisError as error:  # nothing (of the kind asked for) to analyse
            fail(str(error), code=FAILED_EXIT)
        except USER_ERRORS as error:  # a bad value, or a place that cannot be written
            fail(str(error))


def _figures(command, path: Path, out: Path | None, *args):
    """`_analysis` of a command that writes figures or tables into `out` (default
    PATH/figures): a folder that cannot be written there (a file, a read-only tree, /proc) is
    refused before any run is read, in one line, exit 2, nothing written."""
    from degradation.analysis.results import figures_dir

    _check_writable(figures_dir(path, out))
    return _analysis(command, path, out, *args)


def _check_writable(folder: Path) -> None:
    """Refuse a folder that is not, and cannot be made, writable: one line, exit 2."""
    from degradation.storage import StorageError, check_writable

    try:
        check_writable(folder)
    except StorageError as error:
        fail(str(error))


def _write_study(planned) -> None:
    """The study's TensorBoard view (Figure 6 layout, mean curves) for each output folder."""
    from degradation.analysis.board import study_command
    from degradation.analysis.results import AnalysisError

    for output_dir in dict.fromkeys(Path(run.config.output_dir) for run in planned):
        with contextlib.suppress(AnalysisError):  # no run has logged yet: nothing to show
            study_command(output_dir)


def _cpu_estimate(runs) -> str | None:
    """Where the runs would train on this machine's CPU: a warning when they take over an
    hour."""
    from degradation.analysis.watch import cpu_estimate, run_progress
    from degradation.config import ConfigError
    from degradation.runs import read_run
    from degradation.training.device import resolve_device

    try:
        # A cluster's nodes are not this machine: their speed is not measured here.
        if not runs or not runs[0].here or resolve_device(runs[0].config.device).type != "cpu":
            return None
    except ConfigError:  # device=cuda without one: training itself says so
        return None
    left = []
    for run in runs:
        record = read_run(run.folder) if run.action == "resume" else None
        # A damaged log of a run to resume is named by the resume itself.
        done = run_progress(record, name_damage=False).iteration if record is not None else 0
        left.append((run.config, run.config.train.iterations - done))
    return cpu_estimate(left)


def _plan(overrides: list[str], sweep: bool, force: bool, fetch: bool,
          config_dir: Path | None = None):
    from degradation.launch import plan

    try:
        return plan.plan(overrides, sweep=sweep, force=force, fetch=fetch,
                              config_dir=config_dir)
    except plan.USER_ERRORS as error:
        fail(str(error))


def _show_config(overrides: list[str], config_dir: Path | None) -> None:
    """Print the validated configuration of one run (`train --show-config`)."""
    import yaml

    from degradation.launch import compose, plan

    try:
        compose.refuse_run_folder_overrides(overrides)
        config = compose.compose_config(overrides, config_dir)
    except plan.USER_ERRORS as error:
        fail(str(error))
    typer.echo(yaml.safe_dump(config.to_dict(), sort_keys=False), nl=False)


def _inspect(overrides: list[str], sweep: bool, cfg: str | None, resolve: bool,
             package: str | None, info: bool, config_dir: Path | None) -> bool:
    """Hydra's inspection flags: print what `--cfg` or `--info [TOPIC]` asks for; False when
    neither was given. A sweep's `--cfg` is one YAML document per run."""
    from degradation.launch import compose, plan

    if cfg is not None and cfg not in ("job", "hydra", "all"):
        fail(f"--cfg {cfg!r} is not one of: job, hydra, all")
    if cfg is None and (resolve or package is not None):  # Hydra refuses --resolve alone too
        fail(f"{'--resolve' if resolve else '--package'} goes only with --cfg job, hydra or "
             "all (it says what to print, it runs nothing)")
    if cfg is None and not info:
        return False
    # An override always has `=`, so a bare word among them is --info's topic.
    topic = next((word for word in overrides if word in INFO_CHOICES), "all")
    overrides = [word for word in overrides if word != topic]
    try:
        if cfg is not None:
            jobs = compose.expand(overrides, config_dir) if sweep else [overrides]
            typer.echo("---\n".join(compose.show_config(job, cfg, resolve, package, config_dir)
                                     for job in jobs), nl=False)
            return True
        fixed = compose.fixed_overrides(overrides)  # Hydra's --info shows one config
        compose.show_config(fixed, "job", config_dir=config_dir)  # a bad value: one line
    except plan.USER_ERRORS as error:
        fail(str(error))
    plan.launch(fixed, sweep=False, config_dir=config_dir, hydra_flags=["--info", topic])
    return True


for _registered in app.registered_commands:
    _registered.cls = Command  # (no command sets a class of its own)


def main() -> None:
    """Console-script entry point."""
    app()
