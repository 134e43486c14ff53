"""A short real training run reaches the target and beats the best single-channel threshold."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scibench_data.pipelines.cloudmask import TrainConfig, evaluate, split_scenes, train
from scibench_data.scoring.mllog import BenchmarkLog, read_events


def test_split_is_by_file_and_seeded():
    splits = np.array(["training"] * 10 + ["inference"] * 3)
    a = split_scenes(splits, 0.2, 42)
    assert a == split_scenes(splits, 0.2, 42)
    assert len(a["validation"]) == 2 and len(a["train"]) == 8 and a["test"] == [10, 11, 12]
    assert not set(a["train"]) & set(a["validation"])
    flat = split_scenes(np.array([""] * 5), 0.2, 42)
    assert flat["test"] == flat["validation"] and len(flat["validation"]) == 1


@pytest.mark.slow
def test_short_training_reaches_target_and_beats_threshold(cloudmask_training_root, tmp_path):
    # 64 x 64 patches keep this fast on 2 cores; inference still tiles 256 windows at stride 176
    cfg = TrainConfig(mode="random", patch=64, patches_per_scene=200, batch_size=16, max_steps=60, epochs=10,
                      learning_rate=2e-3)
    log = BenchmarkLog(tmp_path / "result-0.txt", "cloudmask")
    result = train(str(cloudmask_training_root), cfg, tmp_path, log=log, progress=False)
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5])
    out = evaluate(str(cloudmask_training_root), result.model_path, split="test", outdir=tmp_path, log=log,
                   progress=False)
    log.close()
    scores, base = out["scores"], out["baseline_single_channel"]
    assert scores["pixel_accuracy"] >= 0.9, out
    assert scores["pixel_accuracy"] > base["pixel_accuracy"] + 0.02, (scores, base)
    assert len(out["per_scene"]) == 2
    saved = json.loads((tmp_path / "scores.json").read_text())
    assert saved["scores"] == scores
    keys = [e["key"] for e in read_events(tmp_path / "result-0.txt")]
    for key in ("submission_benchmark", "seed", "global_batch_size", "train_samples", "epoch_start",
                "eval_start", "eval_stop", "result"):
        assert key in keys
