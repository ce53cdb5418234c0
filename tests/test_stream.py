"""The on-device training stream and evaluation batches: the paper's augmentation and
bit-identical resumes."""

from __future__ import annotations

import io

import pytest
import torch

from degradation.data.cifar import (
    DataError,
)
from degradation.data.stream import (
    TrainBatches,
    augment,
    augment_reference,
    crop_flip,
    draw_crops_flips,
    eval_batches,
    normalize,
)
from tests.data_fixtures import (
    CPU,
    assert_data_error,
    images_encoding,
)


def random_batch(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    mean = torch.rand(3, 32, 32, generator=g) * 200 + 20
    return images, mean


def test_normalize_only_subtracts_the_mean() -> None:
    images, mean = random_batch(4)
    out = normalize(images, mean)
    assert out.dtype == torch.float32
    assert torch.equal(out, images.double().sub(mean.double()).float())


def test_augment_equals_the_reference_definition() -> None:
    images, mean = random_batch(64)
    out = augment(images, mean, torch.Generator().manual_seed(5))
    offsets, flips = draw_crops_flips(64, torch.Generator().manual_seed(5))
    assert flips.any() and not flips.all() and len(set(map(tuple, offsets.tolist()))) > 20
    assert out.shape == (64, 3, 32, 32) and out.dtype == torch.float32
    for i in range(64):
        dy, dx = offsets[i].tolist()
        assert torch.equal(out[i], augment_reference(images[i], mean, dy, dx, bool(flips[i])))


def test_every_crop_and_flip_matches_the_reference() -> None:
    images, mean = random_batch(162, seed=1)
    offsets = torch.tensor([(dy, dx) for dy in range(9) for dx in range(9)] * 2)
    flips = torch.arange(162) >= 81
    out = crop_flip(images, mean, offsets, flips)
    for i, ((dy, dx), flip) in enumerate(zip(offsets.tolist(), flips.tolist(), strict=True)):
        assert torch.equal(out[i], augment_reference(images[i], mean, dy, dx, flip))


def test_reference_crops_and_flips() -> None:
    # The reference itself, against hand-made expectations: crop (0, 8) of the padded image
    # has 4 zero rows on top and 4 zero columns on the right, and flipping moves them left.
    image = torch.arange(3 * 32 * 32).reshape(3, 32, 32).remainder(251).to(torch.uint8)
    mean = torch.full((3, 32, 32), 0.5)
    crop = augment_reference(image, mean, 0, 8, flip=False)
    assert torch.equal(crop[:, 4:, :28], image[:, :28, 4:].float() - 0.5)
    assert (crop[:, :4] == 0).all() and (crop[:, :, 28:] == 0).all()
    flipped = augment_reference(image, mean, 0, 8, flip=True)
    assert torch.equal(flipped, crop.flip(-1)) and (flipped[:, :, :4] == 0).all()
    assert torch.equal(augment_reference(image, mean, 4, 4, flip=False), image - mean)


def test_padded_pixels_are_exactly_zero() -> None:
    # Image 200, mean 100.5 everywhere: inside pixels are 99.5, padding must be 0.0 (not -mean).
    offsets = torch.tensor([(dy, dx) for dy in range(9) for dx in range(9)])
    flips = torch.arange(81) % 2 == 1
    out = crop_flip(images_encoding([200] * 81), torch.full((3, 32, 32), 100.5), offsets, flips)
    span = torch.arange(32)
    for i, ((dy, dx), flip) in enumerate(zip(offsets.tolist(), flips.tolist(), strict=True)):
        inside_rows = (span + dy >= 4) & (span + dy < 36)
        cols = span.flip(0) if flip else span
        inside_cols = (cols + dx >= 4) & (cols + dx < 36)
        inside = inside_rows[:, None] & inside_cols[None, :]
        assert (out[i][:, inside] == 99.5).all()
        assert (out[i][:, ~inside] == 0.0).all() and (out[i][:, ~inside].signbit() == 0).all()


def test_offsets_and_flips_are_uniform() -> None:
    n = 81 * 200
    offsets, flips = draw_crops_flips(n, torch.Generator().manual_seed(0))
    assert offsets.min() == 0 and offsets.max() == 8
    counts = torch.bincount(offsets[:, 0] * 9 + offsets[:, 1], minlength=81).double()
    assert len(counts) == 81 and counts.min() > 0
    chi2 = ((counts - 200) ** 2 / 200).sum()
    assert chi2 < 200  # 80 degrees of freedom: mean 80, sd 12.6; a broken draw is far above
    assert abs(flips.double().mean() - 0.5) < 0.03  # sd 0.004


def test_augment_draws_from_the_generator_only() -> None:
    images, mean = random_batch(8)
    a = augment(images, mean, torch.Generator().manual_seed(1))
    torch.manual_seed(123)  # the global generator must not matter
    b = augment(images, mean, torch.Generator().manual_seed(1))
    c = augment(images, mean, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


# --- the training stream ---------------------------------------------------------------------


def indexed_stream(n: int = 100, batch_size: int = 32, seed: int = 0) -> TrainBatches:
    """A stream over images whose every pixel holds their index; label = index % 10."""
    return TrainBatches(images_encoding(list(range(n))), torch.arange(n) % 10,
                        torch.zeros(3, 32, 32), batch_size, seed, CPU)


def identities(images: torch.Tensor) -> torch.Tensor:
    """The index encoded in each image: the centre pixel always survives a crop."""
    return images[:, 0, 16, 16].long()


def test_batches_have_the_right_shape_and_labels() -> None:
    stream = indexed_stream()
    for _ in range(7):
        images, labels = next(stream)
        assert images.shape == (32, 3, 32, 32) and images.dtype == torch.float32
        assert labels.shape == (32,) and labels.dtype == torch.int64
        assert torch.equal(labels, identities(images) % 10)  # labels stay with their images


def test_each_epoch_is_a_permutation() -> None:
    stream = indexed_stream(n=100, batch_size=32)  # 3 full batches an epoch, 4 images dropped
    epochs = []
    for epoch in range(3):
        assert stream.epoch == epoch
        seen = torch.cat([identities(stream.next()[0]) for _ in range(3)])
        assert len(seen) == 96 and len(set(seen.tolist())) == 96  # no repeats in an epoch
        assert seen.min() >= 0 and seen.max() < 100
        epochs.append(seen.tolist())
    assert stream.epoch == 3
    assert epochs[0] != epochs[1]  # a fresh permutation each epoch


def test_stream_is_iterable() -> None:
    stream = indexed_stream()
    batches = [batch for batch, _ in zip(stream, range(4), strict=False)]
    assert len(batches) == 4 and stream.epoch == 1


@pytest.mark.parametrize("taken", [0, 2, 3, 5])
def test_resume_continues_bit_identically(taken: int) -> None:
    stream = indexed_stream(n=100, batch_size=32, seed=7)
    for _ in range(taken):
        stream.next()
    buffer = io.BytesIO()
    torch.save(stream.state_dict(), buffer)  # as a checkpoint would
    expected = [stream.next() for _ in range(7)]
    resumed = indexed_stream(n=100, batch_size=32, seed=99)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer))
    assert resumed.epoch == taken // 3
    for (images, labels), (want_images, want_labels) in zip(
            (resumed.next() for _ in range(7)), expected, strict=True):
        assert torch.equal(images, want_images) and torch.equal(labels, want_labels)


def test_same_seed_same_batches() -> None:
    a, b, c = indexed_stream(seed=1), indexed_stream(seed=1), indexed_stream(seed=2)
    for _ in range(4):
        (xa, ya), (xb, yb), (xc, _) = a.next(), b.next(), c.next()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(xa, xc)


def test_one_seed_gives_one_stream_drawn_on_the_cpu_an_epoch_at_a_time() -> None:
    """The definition: an epoch's order, then its crops and flips, from a CPU generator."""
    stream = indexed_stream(n=100, batch_size=32, seed=3)
    generator = torch.Generator().manual_seed(3)
    for _ in range(2):  # two epochs of 3 batches
        order = torch.randperm(100, generator=generator)
        offsets, flips = draw_crops_flips(96, generator)
        for rows in (slice(0, 32), slice(32, 64), slice(64, 96)):
            images, labels = stream.next()
            expected = crop_flip(images_encoding(order[rows].tolist()), torch.zeros(3, 32, 32),
                                 offsets[rows], flips[rows])
            assert torch.equal(images, expected) and torch.equal(labels, order[rows] % 10)


@pytest.mark.parametrize("taken", [2, 3])
def test_a_stream_saved_on_one_device_resumes_on_another(taken: int) -> None:
    """`meta` stands in for a GPU: what decides the batches is the same on every device."""
    images, labels = images_encoding(list(range(100))), torch.arange(100) % 10
    elsewhere = TrainBatches(images, labels, torch.zeros(3, 32, 32), 32, 7,
                             torch.device("meta"))
    for _ in range(taken):
        images_there, labels_there = elsewhere.next()
        assert images_there.is_meta and labels_there.is_meta
    state = elsewhere.state_dict()
    assert all(value.device == CPU for value in state.values()
               if isinstance(value, torch.Tensor))
    uninterrupted = indexed_stream(n=100, batch_size=32, seed=7)
    for _ in range(taken):
        uninterrupted.next()
    here = indexed_stream(n=100, batch_size=32, seed=0)
    here.load_state_dict(state)
    for _ in range(4):
        (x, y), (want_x, want_y) = here.next(), uninterrupted.next()
        assert torch.equal(x, want_x) and torch.equal(y, want_y)


def test_a_stream_saved_by_an_earlier_version_is_refused_in_one_line() -> None:
    # Earlier versions drew on the run's device, batch by batch: a CUDA generator's state.
    earlier = {"generator": torch.zeros(16, dtype=torch.uint8),
               "perm": torch.randperm(100), "step": 5, "num_images": 100, "batch_size": 32}
    with pytest.raises(DataError) as error:
        indexed_stream(n=100, batch_size=32).load_state_dict(earlier)
    assert_data_error(error, "earlier version", "move the checkpoint away")


def test_resume_into_different_data_is_refused() -> None:
    state = indexed_stream(n=100, batch_size=32).state_dict()
    with pytest.raises(DataError) as error:
        indexed_stream(n=90, batch_size=32).load_state_dict(state)
    assert_data_error(error, "100 images", "90")


@pytest.mark.parametrize("batch_size", [101, 0])
def test_bad_batch_size_is_refused(batch_size: int) -> None:
    with pytest.raises(DataError) as error:
        indexed_stream(n=100, batch_size=batch_size)
    assert_data_error(error, f"train.batch_size={batch_size}", "100 training images")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_stream_lives_on_cuda_and_resumes() -> None:
    cuda = torch.device("cuda")
    images, labels = images_encoding(list(range(100))), torch.arange(100) % 10
    stream = TrainBatches(images, labels, torch.zeros(3, 32, 32), 32, 0, cuda)
    stream.next()
    state = stream.state_dict()
    x, y = stream.next()
    assert x.is_cuda and y.is_cuda and torch.equal(y, identities(x) % 10)
    resumed = TrainBatches(images, labels, torch.zeros(3, 32, 32), 32, 5, cuda)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.next()[0], x)


def test_eval_batches_are_the_normalized_originals_in_order() -> None:
    images, mean = random_batch(10)
    labels = torch.arange(10) % 10
    batches = list(eval_batches(images, labels, mean, 4, CPU))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([x for x, _ in batches]), normalize(images, mean))
    assert torch.equal(torch.cat([y for _, y in batches]), labels)
