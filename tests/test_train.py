"""The training loop: schedule, warm-up, what is logged, what a run folder holds."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from degradation.launch.compose import compose_config
from degradation.models import build_model, layer_names
from degradation.runs import (
    CHECKPOINT,
    CONFIG_FILE,
    GRAD_NORMS_FILE,
    METRICS_FILE,
    PREVIOUS_CHECKPOINT,
    SUMMARY_FILE,
    TENSORBOARD_DIR,
    run_dir,
)
from degradation.storage import read_json
from degradation.training.checkpoint import load_checkpoint
from degradation.training.device import (
    fit_optimizer_state,
    resolve_speed,
    rng_state,
    seed_everything,
    set_rng_state,
    use_speed,
)
from degradation.training.logs import HPARAMS_METRICS, TAGS
from degradation.training.loop import train
from degradation.training.step import learning_rate
from tests.conftest import scalars, tiny_overrides

PAPER = compose_config([]).train


@pytest.mark.parametrize("iteration, expected", [
    (0, 0.1), (31_999, 0.1), (32_000, 0.01), (47_999, 0.01), (48_000, 0.001), (63_999, 0.001),
])
def test_learning_rate_follows_the_papers_milestones(iteration: int, expected: float) -> None:
    assert learning_rate(iteration, PAPER) == expected


def test_warmup_uses_the_warmup_rate_until_switched_off() -> None:
    assert learning_rate(0, PAPER, warming_up=True) == 0.01
    assert learning_rate(40_000, PAPER, warming_up=True) == 0.01
    assert learning_rate(400, PAPER, warming_up=False) == 0.1


@pytest.fixture(scope="module")
def finished(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory):
    output = tmp_path_factory.mktemp("runs")
    return train(compose_config(tiny_overrides(cifar_root, output)))


def test_run_folder_holds_config_events_csv_checkpoint_and_summary(finished) -> None:
    folder = finished.run_dir
    assert finished.status == "done"
    for name in (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, "checkpoint.pt"):
        assert (folder / name).is_file(), name
    assert list((folder / TENSORBOARD_DIR).glob("events.out.tfevents.*"))
    state, notes = load_checkpoint(folder)
    assert notes == [] and state["iteration"] == 12
    assert {"model", "optimizer", "rng", "config", "batches"} <= state.keys()


def test_logged_tags_and_steps(finished) -> None:
    logged = scalars(finished.run_dir)
    assert {tag for tag in logged if not tag.startswith("grad_norm/")} == {
        *TAGS, *HPARAMS_METRICS}
    assert [step for step, _ in logged["error/train"]] == list(range(2, 13, 2))
    assert [step for step, _ in logged["error/test"]] == [6, 12]
    # Each point reports the rate of the step just taken: milestones 6 and 9 -> steps 7, 10.
    assert [value for _, value in logged["lr"]] == pytest.approx(
        [0.1, 0.1, 0.1, 0.01, 0.001, 0.001])
    assert all(0 <= value <= 100 for _, value in logged["error/train"] + logged["error/test"])


def test_csv_rows_equal_the_tensorboard_points(finished) -> None:
    logged = scalars(finished.run_dir)
    with (finished.run_dir / METRICS_FILE).open() as file:
        rows = list(csv.DictReader(file))
    for tag in TAGS:
        from_csv = [(int(row["iteration"]), float(row[tag])) for row in rows if row[tag]]
        assert [step for step, _ in from_csv] == [step for step, _ in logged[tag]]
        # TensorBoard stores float32; the CSV keeps full precision.
        assert [value for _, value in from_csv] == pytest.approx(
            [value for _, value in logged[tag]], rel=1e-6)


def test_each_log_point_records_every_3x3_layers_gradient_norm_in_network_order(
        finished) -> None:
    layers = layer_names(build_model("resnet", 8))
    assert len(layers) == 7  # 6n+1 convs for n = 1
    with (finished.run_dir / GRAD_NORMS_FILE).open() as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["iteration", "layer", "name", "grad_norm"]
    assert [(int(row["iteration"]), int(row["layer"]), row["name"]) for row in rows] == [
        (iteration, layer, name) for iteration in range(2, 13, 2)
        for layer, name in enumerate(layers)]
    logged = scalars(finished.run_dir)
    for layer, name in enumerate(layers):
        points = logged[f"grad_norm/{layer:03d}_{name}"]
        from_csv = [float(row["grad_norm"]) for row in rows if int(row["layer"]) == layer]
        assert [step for step, _ in points] == list(range(2, 13, 2))
        assert [value for _, value in points] == pytest.approx(from_csv, rel=1e-6)
        assert all(0 < value < float("inf") for value in from_csv)


def test_the_logged_norms_are_those_of_the_step_just_taken(cifar_root: Path,
                                                          tmp_path: Path) -> None:
    taken: list[list[float]] = []

    def record(optimizer: torch.optim.Optimizer, *_: object) -> None:
        # The 3x3 conv weights, in registration order, which is the network's order.
        taken.append([float(p.grad.norm()) for p in optimizer.param_groups[0]["params"]
                      if p.dim() == 4 and p.shape[-1] == 3])

    handle = register_optimizer_step_post_hook(record)
    try:
        run = train(compose_config(tiny_overrides(cifar_root, tmp_path)))
    finally:
        handle.remove()
    with (run.run_dir / GRAD_NORMS_FILE).open() as file:
        rows = list(csv.DictReader(file))
    for iteration in range(2, 13, 2):
        logged = [float(row["grad_norm"]) for row in rows if int(row["iteration"]) == iteration]
        assert logged == pytest.approx(taken[iteration - 1], rel=1e-6), iteration
    assert taken[0] != pytest.approx(taken[1], rel=1e-3)  # steps differ: the test can tell


def test_summary_reports_final_and_best_errors(finished) -> None:
    summary = read_json(finished.run_dir / SUMMARY_FILE)
    logged = scalars(finished.run_dir)
    assert summary["status"] == "done"
    assert summary["iterations_done"] == summary["iterations"] == 12
    assert summary["final_test_error"] == pytest.approx(logged["error/test"][-1][1], rel=1e-6)
    assert summary["final_train_error"] == pytest.approx(logged["error/train"][-1][1], rel=1e-6)
    best_step, best = min(logged["error/test"], key=lambda point: point[1])
    assert summary["best_test_error"] == pytest.approx(best, rel=1e-6)
    assert summary["best_test_iteration"] == best_step
    # resnet-8, option A: 464 + 4,672 + 13,952 + 55,552 + 650
    assert summary["parameters"] == 75_290
    assert summary["eval_set"] == "test"
    assert summary["device"].startswith("cpu")
    assert summary["versions"]["torch"] == torch.__version__


def test_finished_run_is_skipped_not_retrained(finished, cifar_root: Path) -> None:
    config_path = finished.run_dir / "checkpoint.pt"
    before = config_path.stat().st_mtime_ns
    again = train(compose_config(tiny_overrides(cifar_root, finished.run_dir.parents[2])))
    assert again.status == "skipped" and again.run_dir == finished.run_dir
    assert config_path.stat().st_mtime_ns == before


def test_same_seed_reproduces_and_another_seed_differs(cifar_root: Path, tmp_path: Path) -> None:
    first = train(compose_config(tiny_overrides(cifar_root, tmp_path / "a")))
    second = train(compose_config(tiny_overrides(cifar_root, tmp_path / "b")))
    other = train(compose_config(tiny_overrides(cifar_root, tmp_path / "c", seed=1)))
    read = [(run.run_dir / METRICS_FILE).read_text() for run in (first, second, other)]
    assert read[0] == read[1]
    assert read[0] != read[2]


@pytest.fixture
def process_flags(monkeypatch: pytest.MonkeyPatch):
    """Restore the process-wide settings a run sets (`use_speed`) after the test."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark, torch.get_num_threads())
    yield
    torch.use_deterministic_algorithms(saved[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[1:3]
    torch.set_num_threads(saved[3])


def test_deterministic_runs_use_deterministic_algorithms_in_the_same_folder(
        cifar_root: Path, tmp_path: Path, process_flags: None) -> None:
    fast = compose_config(tiny_overrides(cifar_root, tmp_path))
    exact = compose_config(tiny_overrides(cifar_root, tmp_path, **{
        "train.deterministic": "true"}))
    assert not fast.train.deterministic and exact.train.deterministic
    assert run_dir(exact) == run_dir(fast)  # how it is computed, not what

    outcome = train(exact)  # every CPU op the loop uses has a deterministic kernel
    assert outcome.status == "done" and outcome.run_dir == run_dir(fast)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark

    # On CUDA (flags only: nothing here touches a GPU): cuDNN's fastest choice unless asked.
    cuda = torch.device("cuda")
    use_speed(cuda, resolve_speed(fast.train, cuda))
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    use_speed(cuda, resolve_speed(exact.train, cuda))
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"  # cuBLAS's deterministic mode


def test_warmup_switches_to_the_base_rate_once_training_error_drops(
        cifar_root: Path, tmp_path: Path) -> None:
    run = train(compose_config(tiny_overrides(
        cifar_root, tmp_path, **{"train.warmup": "true", "train.warmup_until_error": 95,
                                 "train.iterations": 30, "train.milestones": "[28,29]"})))
    logged = scalars(run.run_dir)
    errors, rates = [v for _, v in logged["error/train"]], [v for _, v in logged["lr"]]
    switch = next(i for i, error in enumerate(errors) if error < 95)
    assert 0 < switch < len(rates) - 3, "the warm-up should end inside this short run"
    assert rates[: switch + 1] == pytest.approx([0.01] * (switch + 1))
    assert rates[switch + 1] == pytest.approx(0.1)


def test_warmup_that_never_ends_keeps_the_warmup_rate(cifar_root: Path, tmp_path: Path) -> None:
    run = train(compose_config(tiny_overrides(
        cifar_root, tmp_path, **{"train.warmup": "true", "train.warmup_until_error": 0.001})))
    rates = [value for _, value in scalars(run.run_dir)["lr"]]
    assert rates == pytest.approx([0.01] * len(rates))


def test_validation_split_is_evaluated_instead_of_the_test_set(
        cifar_root: Path, tmp_path: Path) -> None:
    run = train(compose_config(tiny_overrides(cifar_root, tmp_path, **{"data.val_split": 50})))
    assert read_json(run.run_dir / SUMMARY_FILE)["eval_set"] == "validation"


def test_a_finished_run_writes_its_hparams_session(finished) -> None:
    from tests.test_board import read_hparams

    board = read_hparams(finished.run_dir)
    summary = read_json(finished.run_dir / SUMMARY_FILE)
    assert board["hparams"] == {"arch": "resnet", "depth": 8.0, "shortcut": "A", "seed": 0.0}
    assert board["scalars"]["final/test_error"] == pytest.approx(summary["final_test_error"])
    assert board["scalars"]["best/test_error"] == pytest.approx(summary["best_test_error"])


@pytest.mark.parametrize("saved, resumed", [("false", "true"), ("true", "false")],
                         ids=["nchw-to-channels-last", "channels-last-to-nchw"])
def test_a_resumed_runs_momentum_is_laid_out_as_its_weights(
        cifar_root: Path, tmp_path: Path, saved: str, resumed: str) -> None:
    """CUDA's fused SGD refuses a momentum buffer whose strides differ from its weight's:
    those of a checkpoint written with another `train.channels_last`, or by a fused run."""
    first = train(compose_config(tiny_overrides(cifar_root, tmp_path, **{
        "train.channels_last": saved})))
    folder = first.run_dir
    (folder / SUMMARY_FILE).unlink()
    shutil.copy(folder / PREVIOUS_CHECKPOINT, folder / CHECKPOINT)  # back to iteration 6
    seen: list[list[tuple[Any, Any]]] = []

    def before_step(optimizer: torch.optim.Optimizer, *_: object) -> None:
        seen.append([((param.dtype, param.stride()), (buffer.dtype, buffer.stride()))
                     for param, state in optimizer.state.items()
                     for buffer in (state["momentum_buffer"],)])

    handle = register_optimizer_step_pre_hook(before_step)
    try:
        again = train(compose_config(tiny_overrides(cifar_root, tmp_path, **{
            "train.channels_last": resumed})))
    finally:
        handle.remove()
    assert again.status == "done" and again.run_dir == folder
    layouts = seen[0]  # the first step after the load
    assert any(len(stride) == 4 for (_, stride), _ in layouts)  # convolution weights
    for param, buffer in layouts:
        assert buffer == param


def test_optimizer_state_takes_its_parameters_dtype_and_layout() -> None:
    weight = torch.nn.Parameter(torch.zeros(4, 3, 3, 3).contiguous(
        memory_format=torch.channels_last))
    optimizer = torch.optim.SGD([weight], lr=0.1, momentum=0.9)
    saved = torch.arange(108, dtype=torch.float64).reshape(4, 3, 3, 3)  # NCHW, as fused runs
    optimizer.state[weight]["momentum_buffer"] = saved
    fit_optimizer_state(optimizer)
    buffer = optimizer.state[weight]["momentum_buffer"]
    assert (buffer.dtype, buffer.stride()) == (weight.dtype, weight.stride())
    assert torch.equal(buffer, saved.float())


def test_an_optimizer_state_of_another_shape_is_refused() -> None:
    weight = torch.nn.Parameter(torch.zeros(4, 3, 3, 3))
    optimizer = torch.optim.SGD([weight], lr=0.1, momentum=0.9)
    optimizer.state[weight]["momentum_buffer"] = torch.zeros(4, 3, 3)
    with pytest.raises(ValueError, match=r"momentum_buffer has shape \(4, 3, 3\), its "
                                         r"parameter \(4, 3, 3, 3\)"):
        fit_optimizer_state(optimizer)


class FakeCuda:
    """CUDA's generator functions on `count` GPUs, this process using `current`: each GPU's
    state is a tensor of its number; a GPU that is not there raises IndexError, as in torch."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, count: int, current: int = 0) -> None:
        self.count, self.current = count, current
        self.states = {device: torch.full((16,), device, dtype=torch.uint8)
                       for device in range(count)}
        for module in (torch.cuda, torch.cuda.random):
            for name, value in {"is_available": lambda: True, "is_initialized": lambda: True,
                                "device_count": lambda: self.count,
                                "current_device": lambda: self.current,
                                "get_rng_state": self.get_rng_state,
                                "set_rng_state": self.set_rng_state}.items():
                if hasattr(module, name):
                    monkeypatch.setattr(module, name, value)

    def _index(self, device: Any) -> int:
        index = self.current if device == "cuda" else int(device)
        if index >= self.count:
            raise IndexError("tuple index out of range")
        return index

    def get_rng_state(self, device: Any = "cuda") -> torch.Tensor:
        return self.states[self._index(device)].clone()

    def set_rng_state(self, state: torch.Tensor, device: Any = "cuda") -> None:
        self.states[self._index(device)] = state.clone()


def test_a_checkpoint_keeps_only_its_own_gpus_generator(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    FakeCuda(monkeypatch, count=4, current=2)
    assert torch.equal(rng_state()["cuda"], torch.full((16,), 2, dtype=torch.uint8))


@pytest.mark.parametrize("saved", [
    torch.full((16,), 7, dtype=torch.uint8),  # this version: the run's own GPU's
    [torch.full((16,), 7, dtype=torch.uint8), *(torch.full((16,), 9, dtype=torch.uint8),) * 3],
], ids=["own-gpu", "every-gpu-of-a-wider-slot"])
def test_a_run_resumes_in_a_narrower_slot(monkeypatch: pytest.MonkeyPatch,
                                          saved: Any) -> None:
    seed_everything(0)
    state = {**rng_state(), "cuda": saved}  # written where 4 GPUs were visible, say
    cuda = FakeCuda(monkeypatch, count=1)
    set_rng_state(state)
    assert torch.equal(cuda.states[0], torch.full((16,), 7, dtype=torch.uint8))


def test_tensorboard_lists_a_finished_run_once_with_its_hparams_beside_its_curves(
        finished) -> None:
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import metadata as hparams_metadata

    output_dir = finished.run_dir.parents[2]
    board = EventMultiplexer().AddRunsFromDirectory(str(output_dir))
    board.Reload()
    run = (finished.run_dir / TENSORBOARD_DIR).relative_to(output_dir).as_posix()
    assert list(board.Runs()) == [run]
    assert [path.name for path in (finished.run_dir / TENSORBOARD_DIR).iterdir()
            if path.is_dir()] == []
    assert {"error/train", "error/test", "final/test_error"} <= set(
        board.Runs()[run]["tensors"])
    sessions = board.PluginRunToTagToContent(hparams_metadata.PLUGIN_NAME)
    assert list(sessions) == [run]
    assert {hparams_metadata.EXPERIMENT_TAG, hparams_metadata.SESSION_START_INFO_TAG,
            hparams_metadata.SESSION_END_INFO_TAG} <= set(sessions[run])
