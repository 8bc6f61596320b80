"""Training: Algorithm 1 patches, click simulation, the loss, steps, and exact resume."""
import json

import numpy as np
import pytest
import torch

from core_fixtures import blob_image, write_training_set
from focuscut_core.network import FocusCutNet, NetworkSpec
from focuscut_core.simulation import augment, degrade_mask, focus_patch, global_clicks
from focuscut_core.train import TrainConfig, Trainer, WeightedSources, fine_tune, main, masked_bce
from focuscut_core.weights import load_weights, save_weights


def test_focus_patch_centre_click_has_the_ground_truth_polarity():
    image, gt = blob_image(120, 160)
    for seed in range(20):
        rng = np.random.default_rng(seed)
        view = focus_patch(image, gt, 64, rng)
        assert view.rgb.shape == (64, 64, 3) and view.gt.shape == (64, 64) and view.prev.shape == (64, 64)
        centre = view.clicks[0]
        assert abs(centre.y - 32) < 1 and abs(centre.x - 32) < 1
        label = view.gt[int(centre.y), int(centre.x)]
        assert centre.is_positive == (label == 255)
        assert 1 <= len(view.clicks) <= 7
        for c in view.clicks[1:]:
            assert view.gt[c.pixel()] == (255 if c.is_positive else 0)


def test_focus_patch_range_follows_object_size():
    image, gt = blob_image(120, 160)
    k = np.sqrt((gt == 255).sum())
    rng = np.random.default_rng(0)
    # alpha fixed at 0.5 and no jitter: the patch is centred on a boundary pixel, half object and half not
    view = focus_patch(image, gt, 2 * int(round(0.5 * k)) + 1, rng, alpha=(0.5, 0.5), beta=(0, 0))
    fraction = (view.gt == 255).mean()
    assert 0.2 < fraction < 0.8
    assert focus_patch(image, np.zeros_like(gt), 64, rng) is None


def test_global_clicks_start_with_a_positive_inside():
    _, gt = blob_image(120, 160)
    for seed in range(10):
        clicks = global_clicks(gt, np.random.default_rng(seed))
        assert clicks[0].is_positive
        for c in clicks:
            assert gt[c.pixel()] == (255 if c.is_positive else 0)


def test_degrade_mask_changes_the_mask_but_keeps_its_place():
    _, gt = blob_image(120, 160)
    obj = gt == 255
    degraded = [degrade_mask(gt, np.random.default_rng(s)) for s in range(10)]
    assert any((d != obj).any() for d in degraded)
    for d in degraded:
        inter = (d & obj).sum()
        assert inter / max(1, (d | obj).sum()) > 0.5


def test_augment_returns_a_square_crop_with_object():
    image, gt = blob_image(90, 200)
    rgb, crop = augment(image, gt, 64, np.random.default_rng(0))
    assert rgb.shape == (64, 64, 3) and crop.shape == (64, 64)
    assert (crop == 255).sum() > 64


def test_augment_scales_the_short_side_to_short_side_before_cropping():
    rows, cols = np.indices((100, 200))
    image = np.repeat((((rows // 10 + cols // 10) % 2) * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    gt = np.full((100, 200), 255, np.uint8)

    def square_side(short_side):  # the checkerboard's squares, in crop pixels
        rgb, _ = augment(image, gt, 64, np.random.default_rng(0), (1.0, 1.0), short_side=short_side)
        edges = np.count_nonzero(np.diff(rgb[32, :, 0] >= 128))
        return 64 / (edges + 1)

    assert square_side(None) == pytest.approx(6.4, rel=0.2)  # 100 px -> 64
    assert square_side(128) == pytest.approx(12.8, rel=0.2)  # 100 px -> 128, then a 64 crop


def test_masked_bce_ignores_128():
    logits = torch.full((1, 1, 2, 2), 3.0)
    gt = torch.tensor([[[0, 128], [128, 128]]], dtype=torch.uint8)
    only_wrong = masked_bce(logits, gt)
    assert only_wrong.item() == pytest.approx(torch.nn.functional.softplus(torch.tensor(3.0)).item(), rel=1e-5)
    assert masked_bce(logits, torch.full((1, 2, 2), 128, dtype=torch.uint8)).item() == 0.0


def _tiny_trainer(seed=0, **settings):
    torch.manual_seed(seed)
    image, gt = blob_image(80, 100)
    config = TrainConfig(crop_size=64, batch_size=2, epoch_samples=4, itis_prob=1.0, itis_max_iters=1, **settings)
    sources = WeightedSources({"blob": [(image, gt)]}, {"blob": 1.0}, loader=lambda pair: pair)
    return Trainer(FocusCutNet(NetworkSpec()), config, torch.device("cpu"), sources)


def test_resume_repeats_the_uninterrupted_run_exactly():
    straight = _tiny_trainer()
    straight.run_step()
    straight.run_step()
    first = _tiny_trainer()
    first.run_step()
    state = first.state_dict()
    resumed = _tiny_trainer(seed=123)  # different init: everything must come from the checkpoint
    resumed.load_state_dict(state)
    resumed.run_step()
    assert resumed.step == straight.step == 2
    for (name, a), b in zip(straight.net.state_dict().items(), resumed.net.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_adam_trains_the_backbone_at_a_lower_lr_and_the_new_parts_at_the_full_lr():
    trainer = _tiny_trainer(optimizer="adam", lr=1e-3, backbone_lr_mult=0.1)
    before = {name: p.detach().clone() for name, p in trainer.net.named_parameters()}
    trainer.run_step()
    assert isinstance(trainer.optimizer, torch.optim.Adam)
    slow, fast = trainer.optimizer.param_groups
    assert slow["lr"] == pytest.approx(1e-4) and fast["lr"] == pytest.approx(1e-3)
    first_conv_weight = trainer.net.backbone.low[0][0].weight
    assert any(p is first_conv_weight for p in fast["params"])  # its click filters are new
    assert len(slow["params"]) + len(fast["params"]) == len(before)
    # Adam's first step moves each weight by about its lr: the click filters ~10x more than the backbone's
    moved = {name: (p.detach() - before[name]).abs().max().item() for name, p in trainer.net.named_parameters()}
    assert moved["backbone.low.0.0.weight"] > 5e-4 and moved["backbone.high.7.conv.0.0.weight"] < 2e-4
    with pytest.raises(ValueError, match="optimizer"):
        _tiny_trainer(optimizer="rmsprop")


def test_lr_decays_per_epoch():
    config = TrainConfig(batch_size=2, epoch_samples=4)
    assert config.lr_at(0) == config.lr_at(1) == pytest.approx(7e-3)
    assert config.lr_at(2) == pytest.approx(7e-3 * 0.9)


def test_cosine_anneal_starts_at_the_decayed_lr_and_ends_the_run_at_zero():
    config = TrainConfig(batch_size=2, epoch_samples=4, anneal_from=5, anneal_steps=4)
    assert config.lr_at(4) == pytest.approx(7e-3 * 0.9 ** 2)
    assert [config.lr_at(s) / (7e-3 * 0.9 ** 2) for s in range(5, 10)] == pytest.approx(
        [1.0, 0.5 * (1 + np.cos(np.pi / 4)), 0.5, 0.5 * (1 + np.cos(3 * np.pi / 4)), 0.0])
    assert config.total_steps == 9
    restart = TrainConfig(batch_size=2, epoch_samples=4, anneal_from=5, anneal_steps=4, anneal_lr=1e-3)
    assert restart.lr_at(5) == pytest.approx(1e-3) and restart.lr_at(7) == pytest.approx(5e-4)


def test_fine_tune_respects_its_step_budget():
    image, gt = blob_image(80, 100)
    losses = []
    net = fine_tune(FocusCutNet(NetworkSpec()), [(image, gt)], TrainConfig(crop_size=64, batch_size=2),
                    max_steps=2, max_seconds=300, progress=lambda step, loss: losses.append((step, loss)))
    assert [s for s, _ in losses] == [1, 2] and all(np.isfinite(l) for _, l in losses)
    assert not net.training



def test_cli_trains_checkpoints_and_resumes(tmp_path, monkeypatch):
    write_training_set(tmp_path / "data")
    monkeypatch.setenv("FOCUSCUT_DATA_DIR", str(tmp_path / "data"))
    run = tmp_path / "run"
    args = ["--run-dir", str(run), "--crop-size", "64", "--batch-size", "2", "--device", "cpu",
            "--itis-max-iters", "1", "--export", str(tmp_path / "model.pt")]
    weights = json.dumps({"alpha": 1.0, "beta": 1.0})
    monkeypatch.setattr("focuscut_core.train.DEFAULT_SOURCE_WEIGHTS", json.loads(weights))
    assert main(args + ["--steps", "2"]) == 0
    assert torch.load(run / "checkpoint.pt", weights_only=False)["step"] == 2
    assert json.loads((run / "config.json").read_text())["crop_size"] == 64
    assert main(args + ["--steps", "1"]) == 0
    assert torch.load(run / "checkpoint.pt", weights_only=False)["step"] == 3
    lines = (run / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]
    assert (tmp_path / "model.pt").is_file() and (run / "weights.pt").is_file()
    assert load_weights(tmp_path / "model.pt")[0].spec.input_size == 64  # inference views default to it
    assert main(args + ["--steps", "2", "--snapshot-every", "2"]) == 0  # steps 4 and 5: one snapshot
    assert sorted(p.name for p in (run / "snapshots").iterdir()) == ["step4.pt"]
    assert load_weights(run / "snapshots" / "step4.pt")[1]["version"] == "run-step4"


def test_a_branch_continues_another_run_with_a_new_schedule_and_leaves_it_as_it_was(tmp_path, monkeypatch):
    write_training_set(tmp_path / "data")
    monkeypatch.setenv("FOCUSCUT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr("focuscut_core.train.DEFAULT_SOURCE_WEIGHTS", {"alpha": 1.0, "beta": 1.0})
    common = ["--crop-size", "64", "--batch-size", "2", "--device", "cpu", "--itis-max-iters", "1"]
    source, branch_dir = tmp_path / "source", tmp_path / "branch"
    assert main(["--run-dir", str(source), "--lr", "0.01", "--steps", "2"] + common) == 0
    before = (source / "checkpoint.pt").read_bytes()
    args = ["--run-dir", str(branch_dir), "--device", "cpu", "--branch-from", str(source / "checkpoint.pt"),
            "--anneal-steps", "2"]
    assert main(args) == 0  # steps 3 and 4, then the anneal has ended
    assert (source / "checkpoint.pt").read_bytes() == before
    state = torch.load(branch_dir / "checkpoint.pt", weights_only=False)
    assert state["step"] == 4 and state["branched_from"].endswith("@2")
    assert state["config"]["anneal_from"] == 2 and state["config"]["lr"] == 0.01 and state["config"]["crop_size"] == 64
    lrs = [json.loads(line)["lr"] for line in (branch_dir / "log.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([0.01, 0.005])  # epoch_samples 8361: no per-epoch decay yet
    bad_sources = [branch_dir / "checkpoint.pt",  # the branch exists: resume it, do not branch again
                   tmp_path / "missing.pt", source / "weights.pt"]  # no file; weights, not a checkpoint
    for bad_dir, bad_source in zip(["branch", "b2", "b3"], bad_sources):
        with pytest.raises(SystemExit) as exit_info:
            main(["--run-dir", str(tmp_path / bad_dir), "--branch-from", str(bad_source), "--device", "cpu"])
        assert exit_info.value.code == 2
    assert not (tmp_path / "b2").exists() and not (tmp_path / "b3").exists()


def test_sigterm_checkpoints_and_a_rerun_resumes(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    write_training_set(tmp_path / "data")
    run = tmp_path / "run"
    env = {**os.environ, "FOCUSCUT_DATA_DIR": str(tmp_path / "data"), "OMP_NUM_THREADS": "1"}
    code = ("import focuscut_core.train as t; t.DEFAULT_SOURCE_WEIGHTS = {'alpha': 1.0, 'beta': 1.0}; "
            "import sys; sys.exit(t.main(sys.argv[1:]))")
    args = [sys.executable, "-c", code, "--run-dir", str(run), "--crop-size", "64", "--batch-size", "2",
            "--device", "cpu", "--itis-max-iters", "1", "--threads", "1"]
    proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (run / "log.jsonl").exists() or not (run / "log.jsonl").read_text().strip():
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else "no step"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 0
    step = torch.load(run / "checkpoint.pt", weights_only=False)["step"]
    assert step >= 1
    logged = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert logged[-1] == step  # every logged step is in the checkpoint: nothing to redo, nothing lost
    assert subprocess.run(args + ["--steps", "1"], env=env, capture_output=True).returncode == 0
    assert torch.load(run / "checkpoint.pt", weights_only=False)["step"] == step + 1


def test_cli_holds_a_source_out_and_records_scale_settings(tmp_path, monkeypatch):
    write_training_set(tmp_path / "data")
    monkeypatch.setenv("FOCUSCUT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr("focuscut_core.train.DEFAULT_SOURCE_WEIGHTS", {"alpha": 1.0, "beta": 1.0})
    run = tmp_path / "run"
    args = ["--run-dir", str(run), "--crop-size", "64", "--batch-size", "2", "--device", "cpu",
            "--itis-max-iters", "1", "--steps", "1"]
    assert main(args + ["--source-weight", "beta=0", "--scale-range", "0.9", "1.1", "--short-side", "96"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["source_weights"] == {"alpha": 1.0, "beta": 0.0}
    assert config["scale_range"] == [0.9, 1.1] and config["short_side"] == 96
    for bad in ("gamma=1", "beta=much"):
        with pytest.raises(SystemExit) as exit_info:
            main(args + ["--source-weight", bad])
        assert exit_info.value.code == 2


def test_a_new_run_can_start_from_a_weights_file(tmp_path, monkeypatch):
    write_training_set(tmp_path / "data")
    monkeypatch.setenv("FOCUSCUT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr("focuscut_core.train.DEFAULT_SOURCE_WEIGHTS", {"alpha": 1.0, "beta": 1.0})
    torch.manual_seed(3)
    start = FocusCutNet(NetworkSpec())
    save_weights(tmp_path / "start.pt", start, {"version": "start"}, half=False)
    run = tmp_path / "run"
    assert main(["--run-dir", str(run), "--crop-size", "64", "--batch-size", "2", "--device", "cpu",
                 "--init-from", str(tmp_path / "start.pt"), "--steps", "0"]) == 0
    net, _ = load_weights(run / "weights.pt")
    for name, value in start.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(net.state_dict()[name], value, atol=1e-3, rtol=1e-3)  # stored in fp16
    assert json.loads((run / "config.json").read_text())["init_from"] == str(tmp_path / "start.pt")
