"""BoQ (ResNet-50 and DINOv2): released key layouts, strict loading, preprocessing, batching."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from released_layouts import (  # noqa: E402
    boq_dino_state,
    boq_resnet_state,
    boq_shapes,
    dinov2_shapes,
    resnet50_layer3_shapes,
)

from harness.errors import HarnessError  # noqa: E402
from methods.base import PartContext  # noqa: E402
from methods.boq import build_boq  # noqa: E402
from methods.imagenet import TensorResize, normalize_for_method  # noqa: E402
from methods.registry import get_method  # noqa: E402

torch.set_num_threads(1)  # two threads on a shared 2-core machine run ~4x slower
CONTEXT = PartContext(part="database", names=(), image_root=None)
F = torch.nn.functional


def _images(count, height, width, seed=0):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (count, 3, height, width), dtype=np.uint8))


def _method(path, **options):
    return get_method("boq", {k: str(v) for k, v in options.items()}, weights=path)


def _encode(method, model, images):
    with torch.inference_mode():
        return method.encode(model, images, CONTEXT)


def _save(state, path):
    torch.save(state, path)  # as the authors release them: plain state dicts
    return path


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    return _save(boq_resnet_state(seed=0), tmp_path_factory.mktemp("boq") / "resnet50_16384.pth")


@pytest.fixture(scope="module")
def dino_file(tmp_path_factory):
    return _save(boq_dino_state(seed=1), tmp_path_factory.mktemp("boq") / "dinov2_12288.pth")


def _boq_reference(aggregator, feature_map):
    """amaralibey/Bag-of-Queries' BoQ.forward written out (queries repeated per image)."""
    x = aggregator.proj_c(feature_map).flatten(2).permute(0, 2, 1)
    x = aggregator.norm_input(x)
    outs = []
    for block in aggregator.boqs:
        x = block.encoder(x)
        q = block.queries.repeat(x.size(0), 1, 1)
        q = block.norm_q(q + block.self_attn(q, q, q)[0])
        out, _ = block.cross_attn(q, x, x)
        outs.append(block.norm_out(out))
    out = aggregator.fc(torch.cat(outs, dim=1).permute(0, 2, 1)).flatten(1)
    return F.normalize(out, p=2, dim=-1)


# ------------------------------------------------------------------- full-size architectures
def test_released_layouts_and_dimensions():
    with torch.device("meta"):
        resnet = build_boq({}, "resnet50")
        dino = build_boq({}, "dinov2")
    shapes = {k: tuple(v.shape) for k, v in resnet.state_dict().items()}
    expected = {"backbone.net." + k: shape for k, (shape, _) in resnet50_layer3_shapes().items()}
    expected.update({"aggregator." + k: v for k, v in boq_shapes(1024, 512).items()})
    assert shapes == expected
    assert resnet.aggregator.output_dim == 16384
    assert resnet.aggregator.boqs[0].cross_attn.num_heads == 8
    shapes = {k: tuple(v.shape) for k, v in dino.state_dict().items()}
    vit_b = dinov2_shapes(768, 12, 3072, mask_token=True, norm=False)
    expected = {"backbone.dino." + k: v for k, v in vit_b.items()}
    expected.update({"aggregator." + k: v for k, v in boq_shapes(768, 384).items()})
    assert shapes == expected
    assert dino.aggregator.output_dim == 12288
    assert dino.aggregator.boqs[0].cross_attn.num_heads == 6


# ---------------------------------------------------------------------------------- ResNet-50
def test_resnet_boq_from_released_file(resnet_file):
    method = _method(resnet_file)
    assert method.backbone_name() == "resnet50" and method.descriptor_dim == 512
    model = method.build_model(torch.device("cpu"))
    state = torch.load(resnet_file, weights_only=True)
    # BatchNorm statistics come from the file (eval mode uses them).
    assert torch.equal(
        model.backbone.net[5][0].bn2.running_var, state["backbone.net.5.0.bn2.running_var"]
    )
    images = _images(8, 64, 80)  # non-square: a 4 x 5 layer3 map
    out = _encode(method, model, images)
    assert out.shape == (8, 512)
    np.testing.assert_allclose(out.norm(dim=1).numpy(), 1.0, atol=1e-5)
    with torch.inference_mode():
        reference = _boq_reference(model.aggregator, model.backbone(normalize_for_method(images)))
    np.testing.assert_allclose(out.numpy(), reference.numpy(), atol=1e-5)
    alone = torch.cat([_encode(method, model, images[i : i + 1]) for i in range(8)])
    assert (out - alone).abs().max().item() < 1e-5


def test_resnet_boq_preprocessing_is_384_bicubic_antialias(resnet_file):
    assert _method(resnet_file).transform() == TensorResize(384, 384, "bicubic", True)
    assert _method(resnet_file, image_height=320, image_width=400).transform() == TensorResize(
        320, 400, "bicubic", True
    )


def test_resnet_boq_rejects_dino_norm_keys(tmp_path):
    state = boq_resnet_state(seed=0)
    state["backbone.dino.norm.weight"] = torch.ones(768)
    path = _save(state, tmp_path / "resnet50_16384.pth")
    with pytest.raises(HarnessError, match="cannot tell the BoQ backbone"):
        _method(path).build_model(torch.device("cpu"))
    with pytest.raises(HarnessError, match="unexpected keys: backbone.dino.norm.weight") as caught:
        _method(path, backbone="resnet50").build_model(torch.device("cpu"))
    assert str(caught.value).startswith(f"{path}: ")


def test_resnet_boq_missing_running_stats(tmp_path):
    state = boq_resnet_state(seed=0)
    del state["backbone.net.1.running_mean"], state["backbone.net.6.5.bn3.num_batches_tracked"]
    path = _save(state, tmp_path / "resnet50_16384.pth")
    with pytest.raises(HarnessError) as caught:
        _method(path).build_model(torch.device("cpu"))
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "missing keys" in message
    assert "backbone.net.1.running_mean" in message
    assert "backbone.net.6.5.bn3.num_batches_tracked" in message


# ------------------------------------------------------------------------------------ DINOv2
def test_dino_boq_from_released_file_with_unused_norm(dino_file):
    method = _method(dino_file)
    assert method.backbone_name() == "dinov2" and method.descriptor_dim == 256
    assert method.transform() == TensorResize(322, 322, "bicubic", True)
    model = method.build_model(torch.device("cpu"))
    assert model.backbone.dino.norm is None  # BoQ uses the tokens before the final norm
    images = _images(8, 126, 154, seed=2)  # 9 x 11 patches, non-square
    out = _encode(method, model, images)
    assert out.shape == (8, 256)
    np.testing.assert_allclose(out.norm(dim=1).numpy(), 1.0, atol=1e-5)
    with torch.inference_mode():
        tokens = model.backbone.dino.forward_tokens(normalize_for_method(images))[:, 1:]
        feature_map = tokens.permute(0, 2, 1).reshape(8, -1, 9, 11)
        reference = _boq_reference(model.aggregator, feature_map)
    np.testing.assert_allclose(out.numpy(), reference.numpy(), atol=1e-5)
    alone = torch.cat([_encode(method, model, images[i : i + 1]) for i in range(8)])
    assert (out - alone).abs().max().item() < 1e-5


def test_dino_boq_accepts_exactly_the_norm_keys(tmp_path):
    state = boq_dino_state(seed=1)
    without_norm = {k: v for k, v in state.items() if not k.startswith("backbone.dino.norm.")}
    assert len(without_norm) == len(state) - 2
    path = _save(without_norm, tmp_path / "no_norm.pth")
    _method(path).build_model(torch.device("cpu"))  # files trained with norm = Identity load too
    state["backbone.dino.head.weight"] = torch.zeros(4, 4)
    path = _save(state, tmp_path / "dinov2_12288.pth")
    with pytest.raises(HarnessError, match="unexpected keys: backbone.dino.head.weight"):
        _method(path).build_model(torch.device("cpu"))


def test_boq_backbone_option_against_the_file(dino_file, tmp_path):
    with pytest.raises(HarnessError, match="missing keys: backbone.net") as caught:
        _method(dino_file, backbone="resnet50").build_model(torch.device("cpu"))
    assert str(caught.value).startswith(f"{dino_file}: ")
    path = _save({"aggregator.fc.weight": torch.zeros(4, 128)}, tmp_path / "neither.pth")
    with pytest.raises(HarnessError, match="backbone=resnet50"):
        _method(path).build_model(torch.device("cpu"))
    with pytest.raises(HarnessError, match="must be one of"):
        _method(dino_file, backbone="vgg16")
    with pytest.raises(HarnessError, match="multiples of 14"):
        _method(dino_file, image_height=320).transform()
