"""Fake run folders, written exactly as training writes them, for the analysis tests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter

from degradation.config import Config, load_config, yaml_defaults
from degradation.runs import CONFIG_FILE, SUMMARY_FILE, TENSORBOARD_DIR, run_dir
from degradation.storage import write_json

PARAMETERS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962, 8: 75_290}

Points = Iterable[tuple[int, float]]


def make_config(output_dir: Path, overrides: Mapping[str, Any] | None = None) -> Config:
    """A real `Config` from conf/config.yaml with dotted-key overrides (`train.iterations`)."""
    values = OmegaConf.to_container(yaml_defaults())
    values["output_dir"] = str(output_dir)
    for dotted, value in (overrides or {}).items():
        *parents, last = dotted.split(".")
        node = values
        for key in parents:
            node = node[key]
        node[last] = value
    return load_config(values)


def write_events(folder: Path, scalars: Mapping[str, Points], wall_start: float = 1.0e9) -> None:
    """One event file (one SummaryWriter) holding `scalars`; wall time grows with each point."""
    writer = SummaryWriter(log_dir=str(folder / TENSORBOARD_DIR))
    wall = wall_start
    for tag, points in scalars.items():
        for step, value in points:
            wall += 1.0
            writer.add_scalar(tag, value, step, walltime=wall)
    writer.close()


def make_summary(config: Config, status: str = "done", *, final_test_error: float | None = 8.0,
                 final_train_error: float | None = 1.0, best_test_error: float | None = None,
                 iterations_done: int | None = None) -> dict[str, Any]:
    """A summary.json as training writes it when a run ends."""
    iterations = config.train.iterations
    return {
        "status": status, "arch": config.arch, "depth": config.depth,
        "shortcut": None if config.arch == "plain" else config.shortcut, "seed": config.seed,
        "iterations": iterations, "iterations_done": iterations_done or iterations,
        "final_test_error": final_test_error, "final_train_error": final_train_error,
        "final_test_loss": 0.3, "final_train_loss": 0.05,
        "best_test_error": best_test_error if best_test_error is not None or final_test_error
        is None else final_test_error - 0.2,
        "best_test_iteration": iterations - 1000,
        "eval_set": "validation" if config.data.val_split else "test",
        "parameters": PARAMETERS.get(config.depth, 1), "wall_time_s": 3725.0,
        "device": "NVIDIA H100", "versions": {"torch": "2.x"}, "code_version": "abc1234",
        "diverged": {"iteration": iterations_done, "lr": 0.1, "last_train_error": 90.0}
        if status == "diverged" else None,
    }


def write_run(root: Path, overrides: Mapping[str, Any] | None = None, *,
              scalars: Mapping[str, Points] | None = None,
              summary: dict[str, Any] | None = None) -> Path:
    """A run folder under `root/runs/` with config.yaml, events and (optionally) summary.json."""
    config = make_config(root, overrides)
    folder = run_dir(config)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(yaml.safe_dump(config.to_dict()), encoding="utf-8")
    if scalars:
        write_events(folder, scalars)
    if summary is not None:
        write_json(folder / SUMMARY_FILE, summary)
    return folder


def curves(depth: int, arch: str, seed: int, iterations: int = 64000, log_every: int = 1000,
           eval_every: int = 4000) -> dict[str, list[tuple[int, float]]]:
    """Smooth fake error curves: deeper plain nets end higher, deeper ResNets lower."""
    rng = np.random.default_rng(seed * 1000 + depth)
    floor = (0.5 + depth / 20) if arch == "plain" else max(0.1, 2.0 - depth / 50)
    test_floor = floor + 7.0

    def curve(step: int, end: float) -> float:
        return float(np.float32(end + (90 - end) * np.exp(-step / 3000) + rng.normal(0, 0.2)))

    train = [(s, curve(s, floor)) for s in range(log_every, iterations + 1, log_every)]
    test = [(s, curve(s, test_floor)) for s in range(eval_every, iterations + 1, eval_every)]
    return {"error/train": train, "loss/train": [(s, v / 50) for s, v in train],
            "lr": [(s, 0.1) for s, _ in train], "error/test": test,
            "loss/test": [(s, v / 40) for s, v in test]}


def write_study(root: Path, depths: Iterable[int] = (20, 56), archs: Iterable[str] = ("plain",
                "resnet"), seeds: Iterable[int] = (0, 1), shortcuts: Iterable[str] = ("A",),
                iterations: int = 64000) -> list[Path]:
    """A finished sweep: every arch x depth x seed (x shortcut for ResNets), all done."""
    folders = []
    for arch in archs:
        for depth in depths:
            for shortcut in shortcuts if arch == "resnet" else ("A",):
                for seed in seeds:
                    overrides = {"arch": arch, "depth": depth, "shortcut": shortcut,
                                 "seed": seed, "train.iterations": iterations,
                                 "train.milestones": [iterations // 2, iterations * 3 // 4]}
                    config = make_config(root, overrides)
                    points = curves(depth, arch, seed, iterations)
                    final_test = points["error/test"][-1][1]
                    final_train = points["error/train"][-1][1]
                    summary = make_summary(config, final_test_error=final_test,
                                           final_train_error=final_train)
                    folders.append(write_run(root, overrides, scalars=points, summary=summary))
    return folders

