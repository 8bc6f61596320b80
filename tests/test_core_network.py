"""The network: shapes, the 6-channel widening of ImageNet filters, weights files, devices."""
import hashlib

import numpy as np
import pytest
import torch
from torchvision import models

from focuscut_core.network import (
    MOBILENET_V2_SHA256, FocusCutNet, NetworkSpec, build_network, find_mobilenet_imagenet_file, first_conv,
    load_imagenet_backbone, redraw_input_filters, select_device,
)
from focuscut_core.predictor import OnnxPredictor, Predictor, make_predictor
from focuscut_core.weights import DEFAULT_WEIGHTS, load_predictor, load_weights, save_weights


@pytest.mark.parametrize("backbone", ["mobilenetv2", "resnet50"])
def test_output_is_one_logit_map_at_input_size(backbone):
    net = FocusCutNet(NetworkSpec(backbone=backbone)).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 6, 65, 97))
    assert out.shape == (2, 1, 65, 97)


def test_output_stride_is_16():
    net = FocusCutNet(NetworkSpec()).eval()
    with torch.no_grad():
        low, high = net.backbone(torch.randn(1, 6, 64, 128))
    assert low.shape[2:] == (16, 32) and high.shape[2:] == (4, 8)
    assert high.shape[1] == 320


def test_imagenet_file_is_torchvisions_and_verified():
    path = find_mobilenet_imagenet_file()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == MOBILENET_V2_SHA256
    assert MOBILENET_V2_SHA256.startswith("b0353104")  # torchvision names its file by this prefix


def test_tampered_imagenet_file_is_refused(tmp_path):
    bad = tmp_path / "mobilenet_v2-b0353104.pth"
    bad.write_bytes(find_mobilenet_imagenet_file().read_bytes()[:-1] + b"\0")
    with pytest.raises(ValueError, match="sha256"):
        load_imagenet_backbone(FocusCutNet(NetworkSpec()), bad)


def test_widened_first_conv_with_zero_extra_channels_reproduces_pretrained_features():
    net = build_network(imagenet=True).eval()
    reference = models.mobilenet_v2(weights=None)
    reference.load_state_dict(torch.load(find_mobilenet_imagenet_file(), weights_only=True))
    reference.eval()
    rgb = torch.randn(2, 3, 64, 80)
    x = torch.cat([rgb, torch.zeros(2, 3, 64, 80)], dim=1)
    with torch.no_grad():
        ours_low, _ = net.backbone(x)
        theirs_low = reference.features[:4](rgb)
    assert first_conv(net).in_channels == 6
    torch.testing.assert_close(ours_low, theirs_low, rtol=1e-5, atol=1e-5)
    weight = first_conv(net).weight
    # the click and mask filters are as strong as the RGB ones, so the clicks count from the start
    assert weight[:, 3:].abs().mean() > 0.3 * weight[:, :3].abs().mean()


def test_redrawn_input_filters_change_only_those_channels():
    net = build_network(imagenet=False)
    with torch.no_grad():
        first_conv(net).weight[:, 3:5] *= 0.01  # filters too small for the clicks to matter
    before = first_conv(net).weight.detach().clone()
    redraw_input_filters(net, (3, 4), seed=0)
    after = first_conv(net).weight.detach()
    torch.testing.assert_close(after[:, [0, 1, 2, 5]], before[:, [0, 1, 2, 5]])
    assert after[:, 3:5].abs().mean() > 20 * before[:, 3:5].abs().mean()
    other = build_network(imagenet=False)
    redraw_input_filters(other, (3, 4), seed=0)
    torch.testing.assert_close(first_conv(other).weight[:, 3:5], after[:, 3:5])  # seeded


def test_resnet_without_imagenet_file_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="resnet50"):
        load_imagenet_backbone(FocusCutNet(NetworkSpec(backbone="resnet50")), tmp_path / "missing.pth")


def test_weights_round_trip_fp16(tmp_path):
    net = FocusCutNet(NetworkSpec()).eval()
    path = save_weights(tmp_path / "w.pt", net, {"version": "v-test"})
    loaded, meta = load_weights(path)
    assert meta["version"] == "v-test"
    x = torch.randn(1, 6, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), net(x), rtol=0.05, atol=0.05)
    assert path.stat().st_size < 8_000_000
    assert not list(tmp_path.glob(".w.pt.*"))  # no temporary file left behind


def test_not_a_weights_file_is_a_clear_error(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not torch")
    with pytest.raises(ValueError, match="not a FocusCut weights file"):
        load_weights(junk)


def test_shipped_weights_load_offline_on_the_cpu():
    assert DEFAULT_WEIGHTS.is_file()
    predictor = load_predictor(device="cpu")
    assert predictor.device.type == "cpu" and predictor.version


def test_device_selection(monkeypatch):
    monkeypatch.setenv("FOCUSCUT_DEVICE", "cpu")
    assert select_device().type == "cpu"
    assert select_device("cpu").type == "cpu"
    monkeypatch.delenv("FOCUSCUT_DEVICE")
    assert select_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_onnx_runtime_gives_the_torch_probabilities(tmp_path):
    torch.manual_seed(0)
    net = FocusCutNet(NetworkSpec())
    reference = Predictor(net, torch.device("cpu"), "v")
    fast = OnnxPredictor(net, "v", cache_dir=tmp_path)
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((6, 64, 96)).astype(np.float32) for _ in range(2)]
    inputs += [rng.standard_normal((6, 48, 48)).astype(np.float32)]
    for a, b in zip(reference(inputs), fast(inputs)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert len(list(tmp_path.glob("*.onnx"))) == 1
    OnnxPredictor(net, "v", cache_dir=tmp_path)  # the second one reuses the exported graph
    assert len(list(tmp_path.glob("*.onnx"))) == 1
    assert isinstance(make_predictor(net, torch.device("cpu"), "v", "torch"), Predictor)
    with pytest.raises(ValueError):
        make_predictor(net, torch.device("cpu"), "v", "tensorrt")


def test_flip_averages_the_mirrored_pass_and_is_mirror_symmetric():
    torch.manual_seed(0)
    predictor = Predictor(FocusCutNet(NetworkSpec()), torch.device("cpu"), "v")
    x = np.random.default_rng(0).standard_normal((6, 48, 80)).astype(np.float32)
    mirrored = np.ascontiguousarray(x[:, :, ::-1])
    plain, plain_mirrored = predictor([x, mirrored])
    assert np.abs(plain - plain_mirrored[:, ::-1]).max() > 1e-5  # the network alone is not symmetric
    flipped, flipped_mirrored = predictor([x, mirrored], flip=True)
    np.testing.assert_allclose(flipped, (plain + plain_mirrored[:, ::-1]) / 2, rtol=0, atol=1e-7)
    np.testing.assert_allclose(flipped_mirrored, flipped[:, ::-1], rtol=0, atol=1e-7)
