"""Training one run (or several fused, or one over several processes) from its `Config`.

- loop.py: `train()`, the loop of one run from its start or checkpoint to its summary.
- step.py: the arithmetic of a step and an evaluation (the hot path: no host syncs).
- device.py: device and speed setup (threads, allocator, compile, SGD kernel, seeding).
- checkpoint.py: the checkpoint format, its one writer and its one reader.
- summary.py: how a run ended (`Outcome`) and its summary.json.
- fused.py: several seeds trained as one vmapped model, behind the interface of one network.
- distributed.py: the DDP helpers the loop calls (no-ops in a single process);
  spawn.py starts the worker processes and worker.py is each one.
- logs.py: metrics.csv, gradient norms, TensorBoard and the console; signals.py: stopping.
"""
