"""`degrade`: the command line. A thin front door; Hydra owns configuration and sweeps.

    degrade train depth=56 arch=plain          # one run of the paper's recipe
    degrade sweep depth=20,56 arch=plain,resnet
    degrade plot outputs/                      # Figure 6 from every run under outputs/
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Reproduce the CIFAR-10 degradation study of He et al. 2016 (plain vs residual "
    "nets, Sec. 4.2). Configuration keys are given as Hydra overrides, e.g. "
    "`degrade train depth=56 arch=plain`; presets with `experiment=NAME` "
    "(smoke, quick, demo, fig6, table6, shortcuts, resnet1202).",
    context_settings={"help_option_names": ["-h", "--help"]},
)

OVERRIDES = typer.Argument(
    None, help="Hydra overrides KEY=VALUE: arch, depth, shortcut, seed, device, output_dir, "
    "data.root, data.download, data.val_split, train.iterations, train.batch_size, train.lr, "
    "train.milestones, train.eval_every, ..., experiment=NAME.", show_default=False)


def fail(message: str, code: int = 2) -> None:
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
) -> None:
    """Train one run. Resumes it if interrupted; leaves it alone if finished.

    The run's folder is outputs/runs/<arch>-<depth>[-<shortcut>]/seed-<seed>-<hash>/ with
    config.yaml, TensorBoard events, metrics.csv, checkpoint.pt, summary.json and train.log.
    """
    from degradation import launching
    from degradation.config import ConfigError
    from degradation.storage import RunLock
    from degradation.train import resolve_device

    planned = _plan(overrides or [], sweep=False, force=force)[0]
    if show_config:
        import yaml

        typer.echo(yaml.safe_dump(planned.config.to_dict(), sort_keys=False), nl=False)
        return
    if planned.action == "running":
        lock = RunLock(planned.folder)
        fail(str(lock.refusal(lock.holder() or "unknown")), code=1)
    try:
        resolve_device(planned.config.device)  # checked here only: sweeps may run elsewhere
    except ConfigError as error:
        fail(str(error))
    if planned.action == "skip" and not planned.config.trainer.fuse_with:
        # (With fuse_with the runs fused with it may be unfinished: training skips each
        # finished one and says so.)
        record = launching.read_run(planned.folder)
        typer.echo(launching.finished_line(record, "skipped") + "; --force retrains it")
        return
    if force:  # the runs fused with it (trainer.fuse_with) are retrained too
        for folder in launching.member_folders(planned.config):
            if (folder / launching.SUMMARY_FILE).exists():
                typer.echo(f"previous run kept in {launching.set_aside(folder)}")
    launching.launch(overrides or [], sweep=False)


@app.command()
def sweep(
    overrides: list[str] = OVERRIDES,
    force: bool = typer.Option(False, "--force", help="Retrain finished runs too (old folders "
                               "are kept as <folder>.replaced-<time>)."),
    dry_run: bool = typer.Option(False, "--dry-run",
                                 help="List the runs and what would happen to each; start none."),
) -> None:
    """Run a grid of runs (Hydra multirun): `depth=20,56 arch=plain,resnet` is 4 runs.

    Any Hydra sweep syntax works (`seed=range(5)`, `experiment=fig6`). Finished runs are
    skipped, interrupted ones resumed; a failing run does not stop the others.
    """
    from degradation import launching

    planned = _plan(overrides or [], sweep=True, force=force)
    counts = {action: sum(p.action == action for p in planned)
              for action in ("start", "resume", "skip", "retrain", "running")}
    typer.echo(f"{len(planned)} runs: {counts['start']} to start, {counts['resume']} to resume, "
               f"{counts['retrain']} to retrain, {counts['skip']} finished (skipped)"
               + (f", {counts['running']} being trained elsewhere" if counts["running"] else ""))
    if dry_run:
        todo = launching.to_launch(planned)
        fused_with = {job[0].folder: [run.config.seed for run in job[1:]]
                      for job in launching.fuse_runs(todo) if len(job) > 1}
        for run in planned:
            seeds = fused_with.get(run.folder)
            typer.echo(f"  {run.action:8} {run.folder}  [{' '.join(run.overrides)}]"
                       + (f"  (one fused job with seeds {seeds})" if seeds else ""))
        return
    for run in planned:
        if run.action == "retrain":
            launching.set_aside(run.folder)
    if counts["start"] + counts["resume"] + counts["retrain"] == 0:
        return
    launching.launch(overrides or [], sweep=True)
    records = [launching.read_run(run.folder) for run in planned]
    states = [record.state if record else "failed" for record in records]
    done = sum(state in ("done", "diverged") for state in states)
    typer.echo(f"sweep finished: {done}/{len(planned)} runs ended "
               f"({states.count('diverged')} diverged)")
    failed = [run for run, state in zip(planned, states, strict=True)
              if state not in ("done", "diverged")]
    for run in failed:
        error = run.folder / launching.ERROR_FILE
        reason = error.read_text().strip() if error.exists() else "did not finish"
        typer.echo(f"  failed: {run.folder}: {reason}", err=True)
    if failed:
        raise typer.Exit(1)


@app.command()
def status(path: Path = typer.Argument(Path("outputs"), help="Folder to search for runs.")
           ) -> None:
    """One line per run under PATH: network, seed, state, iteration, last errors, ETA.

    States: done, diverged, running (a live process holds the run's lock), failed (with the
    last line of its error.txt), interrupted (resumes from its checkpoint), pending.
    """
    from collections import Counter

    from degradation.logs import format_duration
    from degradation.runs import family, find_runs, progress

    records = find_runs(path)
    if not records:
        fail(f"no runs under {path} (a run folder holds config.yaml)", code=1)
    for record in records:
        state, where = record.state, progress(record)
        errors = "  ".join(f"{name} " + ("     -" if value is None else f"{value:5.2f}%")
                           for name, value in (("train", where.train_error),
                                               ("test", where.test_error)))
        note = ""
        if state == "running" and where.eta_s is not None:
            note = f"  ETA {format_duration(where.eta_s)}"
        elif where.error:
            note = f"  error: {where.error}"
        typer.echo(f"{family(record.config):14} seed {record.config.seed:<3} {state:11} "
                   f"{where.iteration:>6}/{where.total:<6} {errors}  {record.path}{note}")
    counts = Counter(record.state for record in records)
    typer.echo(f"{len(records)} runs: " + ", ".join(f"{counts[state]} {state}" for state in (
        "done", "diverged", "running", "failed", "interrupted", "pending") if counts[state]))


@app.command()
def plot(
    path: Path = typer.Argument(Path("outputs"), help="Folder to search for runs."),
    out: Path | None = typer.Option(None, "--out", help="Where to write (default PATH/figures)."),
    linear: bool = typer.Option(False, "--linear", help="Full linear error axis instead of the "
                                "paper's 0-20% range."),
) -> None:
    """Figure 6 from every run under PATH: error (%) vs iterations, training dashed, test bold.

    One panel per family (plain; resnet; resnet-110 vs 1202 when present), one colour per
    depth, a band over seeds; plus a shortcut A/B/C comparison when the runs have several.
    Writes PNG and PDF to PATH/figures/ and prints their paths.
    """
    from degradation.figures import plot_command

    for written in _analysis(plot_command, path, out, linear):
        typer.echo(written)


@app.command()
def table(
    path: Path = typer.Argument(Path("outputs"), help="Folder to search for runs."),
    out: Path | None = typer.Option(None, "--out", help="Where to write (default PATH/figures)."),
) -> None:
    """Table 6: final and best test error per network (mean +- std over seeds), beside the paper.

    Prints Markdown and writes table6.md and table6.csv beside the figures.
    """
    from degradation.analysis import table_command

    text, written = _analysis(table_command, path, out)
    typer.echo(text)
    for file in written:
        typer.echo(file)


@app.command()
def responses(
    path: Path = typer.Argument(Path("outputs"), help="Folder to search for runs."),
    out: Path | None = typer.Option(None, "--out", help="Where to write (default PATH/figures)."),
    data_root: Path | None = typer.Option(None, "--data-root", help="CIFAR-10 folder, if not the "
                                          "one each run was trained on."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
) -> None:
    """Figure 7: standard deviation of every 3x3 conv's response (after BN, before ReLU/add).

    Runs each finished run's final checkpoint once over its evaluation set (cached as
    responses.json in the run folder), then plots per-layer and sorted curves.
    """
    from degradation.responses import responses_command

    for written in _analysis(responses_command, path, out, data_root, device):
        typer.echo(written)


@app.command()
def claims(
    path: Path = typer.Argument(Path("outputs"), help="Folder to search for runs."),
    out: Path | None = typer.Option(None, "--out", help="Where to write (default PATH/figures)."),
) -> None:
    """The claims of Sec. 4.2, each with our numbers and a verdict: reproduced, not
    reproduced, or not enough runs (naming the missing runs and the command that makes them).

    Prints Markdown and writes claims.md and claims.csv beside the figures.
    """
    from degradation.claims import claims_command

    text, written = _analysis(claims_command, path, out)
    typer.echo(text)
    for file in written:
        typer.echo(file)


@app.command()
def gradients(
    path: Path = typer.Argument(Path("outputs"), help="Folder to search for runs."),
    out: Path | None = typer.Option(None, "--out", help="Where to write (default PATH/figures)."),
) -> None:
    """Per-layer gradient norms (grad_norms.csv) in network order at a few iterations, plain
    and ResNet at each depth: the evidence on vanishing gradients (claim 8).

    Writes gradients.png and .pdf; runs trained before gradient logging have none.
    """
    from degradation.figures import gradients_command

    written = _analysis(gradients_command, path, out)
    if not written:
        typer.echo(f"no gradient logs (grad_norms.csv) in the finished runs under {path}: "
                   "runs trained before gradient logging have none; nothing to draw")
    for file in written:
        typer.echo(file)


@app.command()
def report(
    path: Path = typer.Argument(Path("outputs"), help="Folder to search for runs."),
    out: Path | None = typer.Option(None, "--out", help="Where to write (default PATH/figures)."),
) -> None:
    """One HTML page with the figures, the tables and every run's config, code version, time."""
    from degradation.report import report_command

    typer.echo(_analysis(report_command, path, out))


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
    from degradation.data import write_cifar10

    written = write_cifar10(root, train_per_batch, test_size, seed)
    typer.echo(f"wrote {written}")


def _analysis(command, *args, **kwargs):
    """Run an analysis command, turning its expected failures into one-line errors."""
    from degradation.analysis import AnalysisError
    from degradation.launching import USER_ERRORS

    try:
        return command(*args, **kwargs)
    except (AnalysisError, *USER_ERRORS) as error:
        fail(str(error), code=1)


def _plan(overrides: list[str], sweep: bool, force: bool):
    from degradation import launching

    try:
        return launching.plan(overrides, sweep=sweep, force=force)
    except launching.USER_ERRORS as error:
        fail(str(error))


def main() -> None:
    """Console-script entry point."""
    app()
