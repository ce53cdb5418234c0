"""Figure 7's measurement equals a direct computation, and is cached per checkpoint."""

from __future__ import annotations

import logging

import pytest
import torch

from degradation.analysis import responses
from degradation.analysis.measurements import RESPONSES_FILE
from degradation.analysis.results import AnalysisError, load_runs
from degradation.data.cifar import load_cifar10, write_cifar10
from degradation.data.stream import eval_batches
from degradation.models import build_model, response_modules
from degradation.runs import read_run
from degradation.storage import read_json
from degradation.training.checkpoint import save_checkpoint
from tests.analysis_fixtures import make_config, make_summary, write_run


def _tiny_net(arch: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(arch, 8)
    # Trained-looking BN: random running statistics and affine terms, so BN is not identity.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.3, 0.3)
    return model


def _direct(model: torch.nn.Module, batches: list[torch.Tensor]) -> list[float]:
    """Store every response, then torch.std per channel (ddof=0) and the mean over channels."""
    stored: dict[int, list[torch.Tensor]] = {}
    modules = response_modules(model)
    hooks = [m.register_forward_hook(lambda _m, _i, out, i=i: stored.setdefault(i, []).append(out))
             for i, m in enumerate(modules)]
    model.eval()
    with torch.no_grad():
        for x in batches:
            model(x)
    for hook in hooks:
        hook.remove()
    result = []
    for i in range(len(modules)):
        out = torch.cat(stored[i]).double()  # (N, C, H, W)
        per_channel = out.transpose(0, 1).reshape(out.shape[1], -1).std(dim=1, correction=0)
        result.append(float(per_channel.mean()))
    return result


@pytest.mark.parametrize("arch", ["plain", "resnet"])
def test_layer_responses_equal_a_direct_computation(arch):
    model = _tiny_net(arch)
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randn(n, 3, 32, 32, generator=generator) * 40 for n in (6, 5, 3)]
    got = responses.layer_responses(model.train(), [(x, None) for x in batches])
    want = _direct(model, batches)
    assert len(got) == 7  # 6n+1 3x3 conv layers for depth 8
    assert got == pytest.approx(want, rel=1e-10)
    assert len(set(got)) == 7  # layers really differ: the hooks are not all on one module


def test_layer_responses_use_running_statistics_and_restore_the_mode():
    model = _tiny_net("resnet").train()
    before = [m.running_mean.clone() for m in response_modules(model)]
    responses.layer_responses(model, [torch.randn(4, 3, 32, 32)])
    assert model.training
    after = [m.running_mean for m in response_modules(model)]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert not any(m._forward_hooks for m in response_modules(model))


def _finished_run(root, iteration=2000):
    data_root = write_cifar10(root / "data", train_per_batch=4, test_size=25)
    overrides = {"depth": 8, "data.root": str(data_root), "data.download": False,
                 "train.eval_batch_size": 10}
    config = make_config(root, overrides)
    model = _tiny_net("resnet")
    folder = write_run(root, overrides, summary=make_summary(config))
    save_checkpoint(folder, {"model": model.state_dict(), "iteration": iteration,
                             "config": config.to_dict()})
    return read_run(folder), model


def test_compute_run_responses_measures_the_checkpoint_on_the_eval_set(tmp_path, monkeypatch):
    record, model = _finished_run(tmp_path)
    result = responses.compute_run_responses(record, None, "cpu")

    splits = load_cifar10(record.config.data.root, download=False)
    want = _direct(model, [x for x, _ in eval_batches(splits.eval_images, splits.eval_labels,
                                                      splits.mean, 10, torch.device("cpu"))])
    assert result["std"] == pytest.approx(want, rel=1e-10)
    assert result["images"] == 25 and result["eval_set"] == "test"
    assert result["checkpoint_iteration"] == 2000 and result["pooling"] == responses.POOLING
    assert result["layers"][0] == "stem.bn" and len(result["layers"]) == 7
    assert read_json(record.path / RESPONSES_FILE) == result

    # Cached: a second call does not measure again ...
    def refuse(*_):
        raise AssertionError("measured again")

    monkeypatch.setattr(responses, "layer_responses", refuse)
    assert responses.compute_run_responses(record, None, "cpu") == result
    # ... unless the checkpoint changed.
    save_checkpoint(record.path, {"model": model.state_dict(), "iteration": 3000,
                                  "config": record.config.to_dict()})
    with pytest.raises(AssertionError, match="measured again"):
        responses.compute_run_responses(record, None, "cpu")


def test_unfinished_runs_are_refused(tmp_path):
    folder = write_run(tmp_path, {"depth": 8})
    with pytest.raises(AnalysisError, match="pending: responses are measured only on finished"):
        responses.compute_run_responses(read_run(folder), None, "cpu")


def test_responses_command_writes_json_and_figure7(tmp_path):
    record, _ = _finished_run(tmp_path)
    write_run(tmp_path, {"depth": 8, "seed": 5})  # unfinished: skipped, not an error
    written = responses.responses_command(tmp_path, None, None, "cpu")
    assert written == [record.path / RESPONSES_FILE, tmp_path / "figures" / "figure7.png",
                       tmp_path / "figures" / "figure7.pdf"]
    assert all(path.stat().st_size > 0 for path in written)
    assert len(load_runs(tmp_path)) == 2


def test_responses_command_needs_a_finished_run(tmp_path):
    write_run(tmp_path, {"depth": 8})
    with pytest.raises(AnalysisError, match="no finished runs"):
        responses.responses_command(tmp_path, None, None, "cpu")


def test_a_run_without_a_readable_checkpoint_is_named_and_the_others_measured(tmp_path,
                                                                            caplog):
    record, _ = _finished_run(tmp_path)
    broken = make_config(tmp_path, {"depth": 8, "seed": 5})
    folder = write_run(tmp_path, {"depth": 8, "seed": 5}, summary=make_summary(broken))
    (folder / "checkpoint.pt").write_bytes(b"PK\x03\x04 cut off")  # a half-copied folder
    with caplog.at_level(logging.WARNING, logger="degrade"):
        written = responses.responses_command(tmp_path, None, None, "cpu")
    assert written[0] == record.path / RESPONSES_FILE and len(written) == 3
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(f"warning: {folder} has no readable checkpoint")
