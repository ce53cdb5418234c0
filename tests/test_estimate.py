"""The sweep's CPU time estimate: one network timed, the rest scaled, a warning over an hour."""

from __future__ import annotations

from pathlib import Path

import pytest

from degradation.bench import measure
from degradation.launch import estimate
from degradation.launch.estimate import cpu_estimate
from tests.analysis_fixtures import make_config
from tests.conftest import degrade_here


def test_a_cpu_sweep_over_an_hour_says_so_with_the_estimate_and_how_to_shorten() -> None:
    demo = [(make_config(Path("out"), {"arch": arch, "depth": depth,
                                       "train.iterations": 16000,
                                       "train.milestones": [8000, 12000]}), 16000)
            for arch in ("plain", "resnet") for depth in (20, 56)]
    timed = []

    def step_seconds(config) -> float:  # the timing is injected: no test depends on speed
        timed.append((config.arch, config.depth))
        return 0.02

    warning = cpu_estimate(demo, step_seconds, cores=1)
    # One network is timed, the shallowest; the others follow its depth: 56 layers cost 3x
    # what 20 do (54 against 18 conv layers).
    assert timed == [("plain", 20)]
    # 16000 iterations x (0.02 + 0.06 + 0.02 + 0.06) s = 42m40s: under an hour, no warning.
    assert warning is None
    slow = cpu_estimate(demo, lambda config: 0.1, cores=2)  # 16000 x 0.8 s over 2 cores
    assert slow is not None and slow.startswith("warning: no GPU: 4 runs need about 1h46m")
    assert "plain-20 timed here: 0.10 s a step on one core, eager" in slow
    assert "spread over 2 cores" in slow
    # 3600 s / 0.4 s per iteration of all four: 9000 iterations fit in about an hour, with
    # log and evaluation points that a schedule of that length can draw curves from (the
    # milestones quoted for a shell: brackets are a glob pattern).
    assert ("train.iterations=9000 'train.milestones=[4500,6750]' train.log_every=220 "
            "train.eval_every=2250") in slow
    assert "experiment=smoke" in slow
    short = [(config, 40) for config, _ in demo]
    assert cpu_estimate(short, lambda config: pytest.fail("short sweeps are not timed")) is None


def test_sweep_warns_before_starting_on_the_cpu(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(measure, "step_seconds", lambda config: 0.5)
    monkeypatch.setattr(estimate, "usable_cores", lambda: [0, 1])
    result = degrade_here("sweep", "--dry-run", "device=cpu", "depth=20,56",
                                      f"output_dir={tmp_path}", "train.iterations=16000",
                                      "train.milestones=[8000,12000]")
    assert result.exit_code == 0, result.output
    warning = result.stderr.strip()
    assert warning.startswith("warning: no GPU: 2 runs need about 4h26m on this CPU")
    assert "train.iterations=3600 'train.milestones=[1800,2700]'" in warning

def test_train_warns_before_a_long_cpu_run_as_sweep_does(generated: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    from degradation.launch import session

    monkeypatch.setattr(measure, "step_seconds", lambda config: 0.5)
    monkeypatch.setattr(estimate, "usable_cores", lambda: [0, 1])
    launched = []
    monkeypatch.setattr(session, "launch", lambda *args, **kwargs: launched.append(args))
    result = degrade_here("train", "device=cpu", "depth=20", f"data.root={generated}",
                          "data.download=false", "train.batch_size=32",
                          f"output_dir={tmp_path / 'out'}")
    assert result.exit_code == 0, result.output
    # 64000 iterations x 0.5 s over 2 cores: a single run spreads over all of them.
    assert "warning: no GPU: 1 run needs about 4h26m on this CPU" in result.output
    assert launched  # a warning, not a refusal


def test_a_sweep_sent_to_a_cluster_is_not_timed_on_this_machine(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    monkeypatch.setattr(measure, "step_seconds",
                        lambda config: pytest.fail("the nodes' speed is not measured here"))
    result = degrade_here("sweep", "--dry-run", "hydra/launcher=slurm", "depth=20,56",
                          f"output_dir={tmp_path}")
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    assert result.output.startswith("2 runs: 2 to start")

def test_the_estimate_notes_compilation_only_for_runs_that_compile() -> None:
    def runs(iterations: int) -> list:
        return [(make_config(Path("out"), {"depth": 56, "train.iterations": iterations,
                                           "train.milestones": [iterations // 2,
                                                                iterations * 3 // 4]}),
                 iterations)]

    long = cpu_estimate(runs(64000), lambda config: 1.0, cores=1)
    assert long is not None and "runs of 5,000+ iterations compile" in long
    short = cpu_estimate(runs(4000), lambda config: 1.0, cores=1)
    assert short is not None and "compile" not in short
