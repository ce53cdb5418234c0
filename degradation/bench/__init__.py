"""`degrade bench`: training and evaluation throughput, ours against the conventional pipeline.

    degrade bench --arch resnet --depth 20 --depth 56 --device cpu --repeats 3 --record
    degrade bench --arch plain --arch resnet --depth 20 --depth 56 --device cuda \
        --steps 300 --warmup-steps 50 --repeats 3 --record

Ours is exactly what `degrade train` runs: `build_network` (training/device.py),
`train_step` and `evaluate` (training/step.py) on a device-resident `TrainBatches`, with the
speed settings of conf/config.yaml (override them as in `degrade train`:
`train.compile=true`). The conventional pipeline is the shape of most CIFAR-10 repositories:
PIL images through torchvision's RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor
and Normalize in DataLoader workers, an eager fp32 NCHW model, PyTorch's default SGD, and
the loss read back with `.item()` every step. Both train the same network from the same
initial weights on the same synthetic CIFAR-shaped uint8 images at the same batch size, one
after the other, alternating. The conventional pipeline runs in a process of its own, with
the C library's allocator as it comes (ours tunes it for good in this one:
`keep_freed_memory`). Throughput is counted after warm-up; the warm-up time (compilation
included) is reported on its own.

- settings.py: how much is measured (steps, warm-up, repeats, ...), the defaults' one home,
  and the command that measures the same again.
- measure.py: the synthetic data, our network set up and stepped as `degrade train` does,
  timings and peak memory; `step_seconds`, which the sweep's CPU estimate times.
- conventional.py: the conventional pipeline, in a process of its own.
- packing.py: several runs on one device, fused into one model or side by side.
- records.py: the rows, their columns, and the tables of BENCHMARKS.md.
- harness.py: `bench_command`, both pipelines alternated on every network asked for.
"""
