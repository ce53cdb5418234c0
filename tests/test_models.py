"""Tests for degradation.models: shapes, parameter counts, shortcuts, init and bad input."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from degradation.models import (
    ARCHS,
    SHORTCUTS,
    ModelConfigError,
    ShortcutA,
    blocks_per_stage,
    build_model,
    count_parameters,
    response_modules,
)

# Sec. 4.2 / Table 6, option A, BN and FC included.
PAPER_COUNTS = {
    20: 269_722,
    32: 464_154,
    44: 658_586,
    56: 853_018,
    110: 1_727_962,
    1202: 19_421_274,
}


def _option_c_count(depth: int, num_classes: int = 10) -> int:
    """Count option C's parameters from the architecture description, not from the code."""
    n = (depth - 2) // 6

    def conv_bn(k: int, cin: int, cout: int) -> int:
        return k * k * cin * cout + 2 * cout  # conv without bias + BN gamma/beta

    total = conv_bn(3, 3, 16) + 64 * num_classes + num_classes
    cin = 16
    for cout in (16, 32, 64):
        for _ in range(n):
            total += conv_bn(3, cin, cout) + conv_bn(3, cout, cout) + conv_bn(1, cin, cout)
            cin = cout
    return total


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("depth", sorted(PAPER_COUNTS))
def test_parameter_counts_match_paper(depth: int) -> None:
    a = count_parameters(build_model("resnet", depth, "A"))
    assert a == PAPER_COUNTS[depth]
    assert count_parameters(build_model("plain", depth, "A")) == a
    # B: a 16->32 and a 32->64 projection (1x1 conv + BN): 512+64 + 2048+128.
    assert count_parameters(build_model("resnet", depth, "B")) == a + 2752
    assert count_parameters(build_model("resnet", depth, "C")) == _option_c_count(depth)


def test_blocks_per_stage() -> None:
    assert [blocks_per_stage(d) for d in (8, 20, 32, 44, 56, 110, 1202)] == [1, 3, 5, 7, 9, 18, 200]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("depth", [20, 32])
@pytest.mark.parametrize("shortcut", SHORTCUTS)
def test_output_shape(arch: str, depth: int, shortcut: str) -> None:
    model = build_model(arch, depth, shortcut)
    assert (model.arch, model.depth) == (arch, depth)
    assert model.shortcut == (shortcut if arch == "resnet" else None)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


def test_num_classes() -> None:
    assert build_model("resnet", 8, num_classes=100)(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def _randomize_bn(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)


def _residual_path(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """BN2(conv2(ReLU(BN1(conv1 x)))) computed by hand from the block's parameters (eval BN)."""

    def bn(m: nn.BatchNorm2d, t: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, 1, 1)
        scale = m.weight / torch.sqrt(m.running_var + m.eps)
        return (t - m.running_mean.view(shape)) * scale.view(shape) + m.bias.view(shape)

    c1 = block.conv1
    h = F.conv2d(x, c1.weight, stride=c1.stride, padding=1)
    h = F.relu(bn(block.bn1, h))
    return bn(block.bn2, F.conv2d(h, block.conv2.weight, padding=1))


@pytest.mark.parametrize("stage", [0, 1])  # same-shape block and downsampling block
def test_plain_block_has_no_shortcut(stage: int) -> None:
    model = build_model("plain", 8).eval()
    _randomize_bn(model)
    block = model.stages[stage][0]
    assert block.shortcut is None
    x = torch.randn(2, block.conv1.in_channels, 16, 16)
    with torch.no_grad():
        assert torch.allclose(block(x), F.relu(_residual_path(block, x)), atol=1e-5)
    assert not any("shortcut" in k for k in model.state_dict())


@pytest.mark.parametrize("shortcut", SHORTCUTS)
@pytest.mark.parametrize("stage", [0, 1])
def test_resnet_block_adds_shortcut_before_relu(shortcut: str, stage: int) -> None:
    model = build_model("resnet", 8, shortcut).eval()
    _randomize_bn(model)
    block = model.stages[stage][0]
    x = torch.randn(2, block.conv1.in_channels, 16, 16)
    with torch.no_grad():
        expected = F.relu(_residual_path(block, x) + block.shortcut(x))
        assert torch.allclose(block(x), expected, atol=1e-5)
        # With BN2 zeroed the residual branch is 0, so the block is ReLU(s(x)).
        block.bn2.weight.zero_()
        block.bn2.bias.zero_()
        s = block.shortcut(x)
        assert s.abs().sum() > 0
        assert torch.allclose(block(x), F.relu(s), atol=1e-6)


def test_option_a_subsamples_and_zero_pads() -> None:
    model = build_model("resnet", 8, "A")
    for name, m in model.named_modules():
        if "shortcut" in name:
            assert sum(p.numel() for p in m.parameters()) == 0
    shortcuts = [stage[0].shortcut for stage in model.stages]
    assert isinstance(shortcuts[0], nn.Identity)
    assert all(isinstance(s, ShortcutA) for s in shortcuts[1:])

    x = torch.arange(2 * 16 * 4 * 4, dtype=torch.float32).view(2, 16, 4, 4)
    y = shortcuts[1](x)
    assert y.shape == (2, 32, 2, 2)
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2])  # identity on even positions
    assert torch.equal(y[:, 16:], torch.zeros(2, 16, 2, 2))  # extra channels are zeros
    assert y[0, 1, 1, 1] == x[0, 1, 2, 2]


def _projection_blocks(model: nn.Module) -> list[tuple[int, int]]:
    return [
        (i, j)
        for i, stage in enumerate(model.stages)
        for j, block in enumerate(stage)
        if isinstance(getattr(block.shortcut, "conv", None), nn.Conv2d)
    ]


def test_option_b_projects_only_at_stage_transitions() -> None:
    model = build_model("resnet", 20, "B")
    assert _projection_blocks(model) == [(1, 0), (2, 0)]
    for i, stage in enumerate(model.stages):
        for j, block in enumerate(stage):
            if (i, j) not in [(1, 0), (2, 0)]:
                assert isinstance(block.shortcut, nn.Identity)
    proj = model.stages[1][0].shortcut
    assert proj.conv.kernel_size == (1, 1) and proj.conv.stride == (2, 2)
    assert proj.conv.bias is None and isinstance(proj.bn, nn.BatchNorm2d)


def test_option_c_projects_every_block() -> None:
    model = build_model("resnet", 20, "C")
    assert _projection_blocks(model) == [(i, j) for i in range(3) for j in range(3)]


def _one_line_error(match: str, **kwargs: object) -> None:
    kwargs = {"arch": "resnet", "depth": 20, **kwargs}
    with pytest.raises(ModelConfigError, match=match) as info:
        build_model(**kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("depth", [21, 0, -4, 7, 2, "abc", True, 20.0, None])
def test_bad_depth_is_refused(depth: object) -> None:
    _one_line_error(f"depth={depth!r}", depth=depth)
    with pytest.raises(ModelConfigError, match="allowed"):
        blocks_per_stage(depth)


@pytest.mark.parametrize("depth", [True, "abc", 20.0])
def test_non_integer_depth_says_so(depth: object) -> None:
    # True would otherwise read as depth 1; say what is wrong, not just "not 6n+2".
    with pytest.raises(ModelConfigError, match="is not an integer"):
        blocks_per_stage(depth)


def test_bad_names_are_refused() -> None:
    _one_line_error(r"arch='foo' is not one of: plain, resnet", arch="foo")
    _one_line_error(r"shortcut='D' is not one of: A, B, C", shortcut="D")
    _one_line_error(r"shortcut='D'", arch="plain", shortcut="D")  # validated for plain too
    _one_line_error(r"init_mode='xavier'", init_mode="xavier")
    _one_line_error(r"num_classes=0", num_classes=0)
    assert issubclass(ModelConfigError, ValueError)


def test_pickle_round_trip_and_state_dict_keys() -> None:
    for shortcut in SHORTCUTS:
        model = build_model("resnet", 20, shortcut).eval()
        clone = pickle.loads(pickle.dumps(model))
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            assert torch.equal(model(x), clone(x))
        keys = list(model.state_dict())
        assert not any(k.startswith("module.") for k in keys)
        assert {
            "stem.conv.weight",
            "stem.bn.weight",
            "stages.0.0.conv1.weight",
            "stages.0.0.bn1.weight",
            "stages.2.2.bn2.bias",
            "fc.weight",
        } <= set(keys)
    assert "stages.1.0.shortcut.conv.weight" in build_model("resnet", 20, "B").state_dict()


@pytest.mark.parametrize(
    "arch,depth,shortcut",
    [("plain", 20, "A"), ("resnet", 20, "A"), ("resnet", 32, "C"), ("resnet", 110, "B")],
)
def test_response_modules(arch: str, depth: int, shortcut: str) -> None:
    model = build_model(arch, depth, shortcut)
    mods = response_modules(model)
    assert len(mods) == depth - 1
    assert all(isinstance(m, nn.BatchNorm2d) for m in mods)
    names = {id(m): name for name, m in model.named_modules()}
    assert not any("shortcut" in names[id(m)] for m in mods)
    # Network order: the order in which the forward pass calls them.
    order: list[int] = []
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(id(m))) for m in mods]
    model.eval()(torch.randn(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert order == [id(m) for m in mods]
    # Every 3x3 conv's BN is listed: the one following each 3x3 conv in registration order.
    convs3 = [
        n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
    ]
    assert [names[id(m)] for m in mods] == [c.replace("conv", "bn") for c in convs3]


@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
def test_he_init(mode: str) -> None:
    model = build_model("resnet", 20, "C", init_mode=mode)
    conv = model.stages[2][0].conv1  # 32 -> 64: fan_in 288, fan_out 576
    fan = conv.in_channels * 9 if mode == "fan_in" else conv.out_channels * 9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan), rel=0.1)
    big = model.stages[2][1].conv1  # 64x64x3x3 = 36,864 weights
    assert big.weight.std().item() == pytest.approx(math.sqrt(2 / 576), rel=0.1)
    assert abs(big.weight.mean().item()) < 0.01
    proj = model.stages[2][1].shortcut.conv  # 1x1 projections are He-initialised too
    assert proj.weight.std().item() == pytest.approx(math.sqrt(2 / 64), rel=0.1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))


def test_functional_call_matches_module() -> None:
    model = build_model("resnet", 20, "B").eval()
    params = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(torch.func.functional_call(model, params, (x,)), model(x))
