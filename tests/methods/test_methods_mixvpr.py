"""MixVPR from files in the released layout: mixer golden values, shapes, strictness, loaders."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from PIL import Image  # noqa: E402
from precision_checks import (  # noqa: E402
    check_bf16_autocast_keeps_float32_output,
    check_cuda_fp32_matches_the_cpu,
)
from released_layouts import meta_state, mixvpr_shapes, mixvpr_state  # noqa: E402

from harness.errors import HarnessError  # noqa: E402
from methods.imagenet import normalize_for_method  # noqa: E402
from methods.mixvpr import FeatureMixer, MixVPRAggregator, infer_shape  # noqa: E402
from methods.registry import get_method  # noqa: E402
from methods.torchvision_backbones import resnet_feature_size  # noqa: E402

torch.set_num_threads(1)  # two threads on a shared 2-core machine run ~4x slower
SIZE = 64  # ResNet-18 cut after layer3: 256 x 4 x 4 at 64 x 64
SMALL = {"image_height": "64", "image_width": "64"}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A ResNet-18 MixVPR (16 positions, 256 -> 32 channels x 2 rows), saved as a state dict."""
    state = mixvpr_state("resnet18", 16, 32, 2, channels=256, seed=0)
    path = tmp_path_factory.mktemp("mixvpr") / "resnet18_MixVPR_64_channels(32)_rows(2).ckpt"
    torch.save(state, path)
    return path, state


def _images(seed: int, count: int, size: int = SIZE):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (count, 3, size, size), dtype=np.uint8))


def _built(path, options=SMALL):
    method = get_method("mixvpr", dict(options), weights=path)
    return method, method.build_model("cpu")


# ------------------------------------------------------------------------------ pieces
def test_one_mixer_block_by_hand():
    block = FeatureMixer(4, 4)
    norm, first, _, second = block.mix
    with torch.no_grad():
        norm.weight.fill_(1.0)
        norm.bias.zero_()
        first.weight.copy_(torch.eye(4))
        first.bias.zero_()
        second.weight.copy_(2 * torch.eye(4))
        second.bias.copy_(torch.tensor([0.5, 0.0, 0.0, 0.0]))
    x = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
    # LayerNorm: mean 2.5, biased variance 1.25 -> (x - 2.5) / s, s = sqrt(1.25 + 1e-5);
    # ReLU keeps 0.5 / s and 1.5 / s; times 2 plus the bias; plus the residual x.
    s = (1.25 + 1e-5) ** 0.5
    expected = [1.0 + 0.5, 2.0, 3.0 + 1.0 / s, 4.0 + 3.0 / s]
    np.testing.assert_allclose(block(x)[0, 0].detach().numpy(), expected, rtol=1e-6)


def test_aggregator_matches_a_numpy_reference():
    rng = np.random.default_rng(4)
    agg = MixVPRAggregator(6, 9, 5, 3, depth=2, hidden=7).eval()
    with torch.no_grad():
        for parameter in agg.parameters():
            parameter.copy_(torch.from_numpy(rng.standard_normal(parameter.shape) * 0.3))
    features = rng.standard_normal((2, 6, 3, 3)).astype(np.float32)
    got = agg(torch.from_numpy(features)).detach().numpy()

    def weights(module):
        return module.weight.detach().double().numpy(), module.bias.detach().double().numpy()

    x = features.reshape(2, 6, 9).astype(np.float64)
    for block in agg.mix:
        (gamma, beta), (w1, b1), (w2, b2) = (weights(block.mix[i]) for i in (0, 1, 3))
        mean = x.mean(-1, keepdims=True)
        var = x.var(-1, keepdims=True)
        hidden = np.maximum(((x - mean) / np.sqrt(var + 1e-5) * gamma + beta) @ w1.T + b1, 0)
        x = x + hidden @ w2.T + b2
    wc, bc = weights(agg.channel_proj)
    wr, br = weights(agg.row_proj)
    x = (np.swapaxes(x, 1, 2) @ wc.T + bc).swapaxes(1, 2)  # (2, 5, 9)
    x = (x @ wr.T + br).reshape(2, -1)  # (2, 5 * 3), channel-major as flatten(1)
    expected = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_feature_size_arithmetic():
    # 320 -> conv1 160 -> pool 80 -> layer2 40 -> layer3 20 -> layer4 10 (the README's 20 x 20)
    assert [resnet_feature_size(320, n) for n in (1, 2, 3, 4)] == [80, 40, 20, 10]
    assert resnet_feature_size(SIZE, 3) == 4 and resnet_feature_size(321, 3) == 21


# -------------------------------------------------------------------------- released files
@pytest.mark.parametrize("dim, channels, rows", [(4096, 1024, 4), (512, 256, 2), (128, 64, 2)])
def test_released_configurations_are_read_from_shapes(dim, channels, rows):
    state = meta_state(mixvpr_shapes("resnet50", 400, channels, rows, 1024))
    shape = infer_shape(state, "x.ckpt")
    assert (shape.resnet_depth, shape.last_layer, shape.mix_depth) == (50, 3, 4)
    assert (shape.positions, shape.hidden, shape.channels) == (400, 400, 1024)
    assert (shape.out_channels, shape.out_rows, shape.dim) == (channels, rows, dim)


def test_released_4096_file_at_320(tmp_path):
    state = mixvpr_state("resnet50", 400, 1024, 4, 1024, seed=1)
    path = tmp_path / "resnet50_MixVPR_4096_channels(1024)_rows(4).ckpt"
    torch.save(state, path)
    method, model = _built(path, {})
    loader = method.image_loader(None)
    assert loader.fixed_size and method.descriptor_dim == 4096
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (90, 120, 3), np.uint8))
    pixels = loader.transform(image)
    assert pixels.shape == (3, 320, 320)
    with torch.no_grad():
        out = method.encode(model, pixels[None], None)
    assert out.shape == (1, 4096) and torch.isfinite(out).all()
    assert out.norm().item() == pytest.approx(1.0, abs=1e-5)


def test_small_file_gives_unit_descriptors_and_keeps_the_values(small):
    path, state = small
    method, model = _built(path)
    with torch.no_grad():
        out = method.encode(model, _images(0, 3), None)
    assert out.shape == (3, 64)
    np.testing.assert_allclose(out.norm(dim=1).numpy(), 1.0, atol=1e-5)
    loaded = model.state_dict()
    for key in ("backbone.model.bn1.running_var", "aggregator.mix.3.mix.0.weight"):
        assert torch.equal(loaded[key], state[key])


def test_batch_size_does_not_change_descriptors(small):
    path, _ = small
    method, model = _built(path)
    images = _images(1, 8)
    with torch.no_grad():
        batched = method.encode(model, images, None)
        single = torch.cat([method.encode(model, images[i : i + 1], None) for i in range(8)])
    assert torch.allclose(batched, single, atol=1e-5)


def test_lightning_checkpoint_loads_like_the_state_dict(small, tmp_path, monkeypatch):
    path, state = small
    # Lightning's hyper-parameter dict class, as the pickle names it, for writing the .ckpt
    name = "lightning_fabric.utilities.data"
    attribute_dict = type("AttributeDict", (dict,), {"__module__": name})
    for level in ("lightning_fabric", "lightning_fabric.utilities", name):
        monkeypatch.setitem(sys.modules, level, types.ModuleType(level))
    sys.modules[name].AttributeDict = attribute_dict
    lightning = tmp_path / "resnet18_epoch(03)_step(0100)_R1[0.5]_R5[0.7].ckpt"
    torch.save(
        {
            "epoch": 3,
            "global_step": 100,
            "pytorch-lightning_version": "1.9.5",
            "state_dict": state,
            "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"current": {"ready": 3}}}},
            "hparams_name": "kwargs",
            "hyper_parameters": attribute_dict(agg_arch="MixVPR", layers_to_crop=[4]),
        },
        lightning,
    )
    monkeypatch.delitem(sys.modules, name)  # reading needs no Lightning
    images = _images(2, 2)
    with torch.no_grad():
        expected = _built(path)[1](normalize_for_method(images))
        method, model = _built(lightning)
        assert torch.equal(method.encode(model, images, None), expected)


def test_bf16_autocast_keeps_the_aggregator_in_float32(small):
    path, _ = small
    method, model = _built(path)
    check_bf16_autocast_keeps_float32_output(method, model, _images(3, 2))


@pytest.mark.gpu
def test_cuda_fp32_matches_the_cpu(small):
    path, _ = small
    method, model = _built(path)
    check_cuda_fp32_matches_the_cpu(method, model, _images(4, 4))


class _Payload:
    """A Python object in a checkpoint: unpickling it would run code, so it is refused."""


def test_other_objects_in_a_checkpoint_are_refused(small, tmp_path):
    _, state = small
    torch.save({"state_dict": state, "callback": _Payload()}, tmp_path / "evil.ckpt")
    with pytest.raises(HarnessError, match="refusing to load"):
        get_method("mixvpr", SMALL, weights=tmp_path / "evil.ckpt").state_dict()


# ------------------------------------------------------------------------------ strictness
def _expect_error(path, *fragments, options=SMALL):
    with pytest.raises(HarnessError) as info:
        _built(path, options)
    message = info.value.one_line()
    assert message.startswith(f"{path}: ") and "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_missing_unexpected_and_misshaped_keys_are_named(small, tmp_path):
    _, state = small
    torch.save({k: v for k, v in state.items() if k != "aggregator.row_proj.bias"}, tmp_path / "m")
    _expect_error(tmp_path / "m", "missing keys: aggregator.row_proj.bias")
    torch.save(dict(state, **{"backbone.model.fc.weight": torch.zeros(2, 2)}), tmp_path / "u")
    _expect_error(tmp_path / "u", "unexpected keys: backbone.model.fc.weight")
    torch.save(dict(state, **{"aggregator.mix.1.mix.0.bias": torch.zeros(15)}), tmp_path / "s")
    _expect_error(tmp_path / "s", "aggregator.mix.1.mix.0.bias (15,) != (16,)")
    torch.save({k: v for k, v in state.items() if "channel_proj" not in k}, tmp_path / "c")
    _expect_error(tmp_path / "c", "lack key aggregator.channel_proj.weight")


def test_image_size_must_fit_the_trained_mixer(small):
    path, _ = small
    _expect_error(path, "gives 20x20 feature positions", "expects 16", options={})


# ---------------------------------------------------------------------------- preprocessing
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_loader_matches_the_authors_torchvision_transform(small, interpolation):
    import torchvision.transforms as T

    path, _ = small
    image = Image.fromarray(np.random.default_rng(6).integers(0, 256, (75, 101, 3), np.uint8))
    options = {"interpolation": interpolation, "image_height": "40", "image_width": "48"}
    loader = get_method("mixvpr", options, weights=path).image_loader(None)
    mode = getattr(T.InterpolationMode, interpolation.upper())
    reference = T.Compose(
        [
            T.Resize((40, 48), interpolation=mode),
            T.ToTensor(),
            T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )(image)
    got = normalize_for_method(loader.transform(image)[None])[0]
    assert got.shape == (3, 40, 48)
    assert torch.allclose(got, reference, atol=1e-6)
