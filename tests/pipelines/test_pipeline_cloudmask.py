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


def _count_scene_reads(monkeypatch) -> list[int]:
    """Scenes read whole from the store (each call of loaders.cloudmask.read_window, which does the read)."""
    import loaders.cloudmask as lc

    reads: list[int] = []
    real = lc.read_window

    def counting(handle, scene, *window):
        reads.append(int(scene))
        return real(handle, scene, *window)

    monkeypatch.setattr(lc, "read_window", counting)
    return reads


def _count_catalog_opens(monkeypatch) -> list[str]:
    """Catalogs opened (each call of intake.open_catalog, through which every catalog is opened)."""
    import intake

    opens: list[str] = []
    real = intake.open_catalog

    def counting(*args, **kwargs):
        opens.append(str(args[0]) if args else "")
        return real(*args, **kwargs)

    monkeypatch.setattr(intake, "open_catalog", counting)
    return opens


@pytest.mark.slow
def test_evaluate_reads_each_test_scene_once(cloudmask_training_root, tmp_path, monkeypatch):
    root = str(cloudmask_training_root)
    cfg = TrainConfig(mode="random", patch=64, patches_per_scene=4, batch_size=4, max_steps=1)
    model = train(root, cfg, tmp_path, progress=False).model_path
    reads = _count_scene_reads(monkeypatch)
    out = evaluate(root, model, split="test", progress=False, baseline=True)
    test_scenes = [r["scene"] for r in out["per_scene"]]
    assert test_scenes and "baseline_single_channel" in out
    assert sorted(s for s in reads if s in test_scenes) == sorted(test_scenes), reads


@pytest.mark.slow
def test_run_cloudmask_opens_the_catalog_once(tmp_path, monkeypatch):
    from scibench_data.pipelines.cloudmask import RunConfig, run

    cfg = RunConfig(train_products=2, test_products=1, grid=(256, 256),
                    train=TrainConfig(mode="random", patch=64, patches_per_scene=4, batch_size=4, max_steps=1))
    opens = _count_catalog_opens(monkeypatch)
    reads = _count_scene_reads(monkeypatch)
    summary = run(str(tmp_path / "root"), cfg, progress=False)
    assert len(opens) == 1, opens
    test_scenes = [r["scene"] for r in json.loads(open(summary["scores_json"]).read())["per_scene"]]
    assert test_scenes and all(reads.count(s) == 1 for s in test_scenes), (test_scenes, reads)
    # the predictions written from that one read are the ones the scorer accepts, with the same scores
    from scibench_data.registry import get
    from scibench_data.scoring.predictions import score_predictions

    scored = score_predictions(get("cloudmask"), summary["predictions"], root=str(tmp_path / "root"))
    assert scored.scores == pytest.approx(summary["scores"])
