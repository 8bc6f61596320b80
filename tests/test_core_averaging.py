"""Weight averaging: the mean of snapshots, BatchNorm statistics measured again, and the CLI."""
import json

import pytest
import torch
from torch import nn

from core_fixtures import write_training_set
from focuscut_core.averaging import average_states, main, recompute_batchnorm
from focuscut_core.network import FocusCutNet, NetworkSpec
from focuscut_core.weights import load_weights, save_weights


def test_average_states_means_floats_and_keeps_the_last_counters():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(7)}
    averaged = average_states([a, b])
    torch.testing.assert_close(averaged["w"], torch.tensor([2.0, 4.0]))
    assert averaged["n"].item() == 7
    with pytest.raises(ValueError):
        average_states([a, {"w": torch.zeros(2)}])
    with pytest.raises(ValueError):
        average_states([])


def test_recompute_batchnorm_gives_the_plain_average_over_all_batches():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3))
    net[1].running_mean.fill_(50.0)  # stale statistics, to be replaced
    batches = [torch.randn(4, 2, 5, 5) * (i + 1) + i for i in range(3)]
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    recompute_batchnorm(net.eval(), batches)
    with torch.no_grad():
        features = [net[0](x) for x in batches]
    per_batch_mean = torch.stack([f.mean((0, 2, 3)) for f in features])
    per_batch_var = torch.stack([f.var((0, 2, 3), unbiased=True) for f in features])
    torch.testing.assert_close(net[1].running_mean, per_batch_mean.mean(0))
    torch.testing.assert_close(net[1].running_var, per_batch_var.mean(0))
    assert net[1].momentum == 0.1 and not net.training  # settings restored
    for k, v in before.items():
        torch.testing.assert_close(net.state_dict()[k], v)  # weights untouched


def test_cli_averages_snapshots_and_measures_batchnorm_on_training_batches(tmp_path, monkeypatch):
    write_training_set(tmp_path / "data")
    monkeypatch.setenv("FOCUSCUT_DATA_DIR", str(tmp_path / "data"))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"crop_size": 64, "batch_size": 2, "itis_max_iters": 1,
                                                 "source_weights": {"alpha": 1.0, "beta": 1.0}}))
    spec = NetworkSpec(input_size=64)
    nets = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        nets.append(FocusCutNet(spec))
        save_weights(tmp_path / f"s{seed}.pt", nets[-1], {"version": f"run-step{seed}00", "steps": seed * 100},
                     half=False)
    out = tmp_path / "avg.pt"
    assert main([str(tmp_path / "s1.pt"), str(tmp_path / "s2.pt"), "--run-dir", str(run), "--out", str(out),
                 "--bn-batches", "2", "--device", "cpu"]) == 0
    net, meta = load_weights(out)
    assert meta["averaged"] == ["run-step100", "run-step200"] and meta["steps"] == 200 and meta["version"] == "avg"
    assert net.spec == spec
    states = [n.state_dict() for n in nets]
    for key, value in net.state_dict().items():
        if value.is_floating_point() and "running" not in key:  # learned tensors: the mean (stored in fp16)
            torch.testing.assert_close(value, (states[0][key] + states[1][key]) / 2, atol=2e-3, rtol=2e-3)
    bn_means = [k for k in states[0] if k.endswith("running_mean")]
    # measured on the data, so neither the snapshots' (fresh: zero) statistics nor their mean
    assert any(net.state_dict()[k].abs().max() > 1e-3 for k in bn_means)

    with pytest.raises(SystemExit) as exit_info:  # different specs: a clear usage error
        save_weights(tmp_path / "other.pt", FocusCutNet(NetworkSpec(input_size=96)), {"version": "other"})
        main([str(tmp_path / "s1.pt"), str(tmp_path / "other.pt"), "--run-dir", str(run), "--out", str(out)])
    assert exit_info.value.code == 2
