"""`degrade`: the command line. A thin front door; Hydra owns configuration and sweeps.

    degrade train depth=56 arch=plain          # one run of the paper's recipe
    degrade sweep depth=20,56 arch=plain,resnet
    degrade plot outputs/                      # Figure 6 from every run under outputs/

Over 400 lines because every command's options and their help texts are declared here, as
Typer needs them; each command only parses, calls the module that does the work, and prints.
"""

from __future__ import annotations

from pathlib import Path

import typer

from degradation.bench.settings import BENCHMARKS_FILE, BenchSettings
from degradation.bench.settings import DEFAULTS as BENCH
from degradation.completion import use_bash_script
from degradation.console import warnings_to_stderr
from degradation.errors import BAD_INPUT_EXIT, FAILED_EXIT
from degradation.help_text import Command, Group
from degradation.options import (
    CFG,
    CONFIG_DIR,
    FORCE,
    INFO,
    OUT,
    OVERRIDES,
    PACKAGE,
    RECURSIVE,
    RESOLVE,
    RUNS_PATH,
)
from degradation.package import presets

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
    force: bool = FORCE,
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
    from degradation.launch import session

    overrides = overrides or []
    if _launching(session.inspect, overrides, False, cfg, resolve, package, info, config_dir,
                  typer.echo):
        return
    if show_config:  # as `--cfg job`: showing a configuration needs no data and no folder
        typer.echo(_launching(session.validated_yaml, overrides, config_dir), nl=False)
        return
    _launching(session.train, overrides, force, config_dir, typer.echo)


@app.command()
def sweep(
    overrides: list[str] = OVERRIDES,
    force: bool = FORCE,
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
    from degradation.launch import session

    overrides = overrides or []
    if _launching(session.inspect, overrides, True, cfg, resolve, package, info, config_dir,
                  typer.echo):
        return
    _launching(session.sweep, overrides, force, dry_run, config_dir, typer.echo)


def _launching(command, *args):
    """Run a step of `train` or `sweep` (launch.session) and return what it returns: a
    refusal is one line and exit 2, a failed run exit 1."""
    from degradation.launch.plan import USER_ERRORS
    from degradation.launch.session import CommandFailed

    try:
        return command(*args)
    except USER_ERRORS as error:
        fail(str(error))
    except CommandFailed as error:
        if str(error):
            typer.echo(f"error: {error}", err=True)
        raise typer.Exit(FAILED_EXIT) from None


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
    from degradation.launch.status import status_command

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
    from degradation.analysis.table import table_command

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
    steps: int = typer.Option(BENCH.steps, help="Timed training steps per repeat."),
    warmup_steps: int = typer.Option(BENCH.warmup_steps,
                                     help="Untimed steps first (compilation, caches)."),
    repeats: int = typer.Option(BENCH.repeats, help="Timed repeats; the median is reported."),
    workers: int | None = typer.Option(BENCH.workers,
                                       help="The conventional DataLoader's workers."),
    images: int = typer.Option(BENCH.images, help="Synthetic training images of CIFAR shape."),
    eval_steps: int = typer.Option(BENCH.eval_steps, help="Timed evaluation batches."),
    runs: int = typer.Option(BENCH.runs, help="Also time this many runs at once: fused into "
                             "one model (trainer.fuse) against as many processes side by side."),
    record: bool = typer.Option(False, "--record", help="Append the rows to BENCHMARKS.md."),
    benchmarks_file: Path = typer.Option(BENCHMARKS_FILE, help="Where --record writes."),
) -> None:
    """Training and evaluation throughput: our pipeline vs the conventional one, same model.

    The conventional pipeline is PIL images, torchvision RandomCrop/Flip/Normalize through a
    DataLoader with workers, eager fp32, in a process of its own. Reports steady-state
    images/s after warm-up, the speed-up (median of back-to-back pairs), warm-up time,
    evaluation images/s and peak memory; `--runs K` also times K runs fused against K
    processes side by side.
    """
    from degradation.bench.harness import bench_command

    if record:  # refused now, not after minutes of timing
        _check_writable(benchmarks_file.parent)
        if benchmarks_file.is_dir():
            fail(f"--benchmarks-file {benchmarks_file} is a folder; give a Markdown file")
    settings = BenchSettings(steps=steps, warmup_steps=warmup_steps, repeats=repeats,
                             workers=workers, images=images, eval_steps=eval_steps, runs=runs)
    typer.echo(_analysis(bench_command, arch, depth, batch_size, device, settings, record,
                         benchmarks_file, overrides=overrides or [],
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




for _registered in app.registered_commands:
    _registered.cls = Command  # (no command sets a class of its own)


def main() -> None:
    """Console-script entry point."""
    app()
