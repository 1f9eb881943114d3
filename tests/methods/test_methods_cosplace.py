"""CosPlace / EigenPlaces from files in the released layouts: shapes, GeM, strictness, CLI."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from click.testing import CliRunner  # noqa: E402
from PIL import Image  # noqa: E402
from precision_checks import (  # noqa: E402
    check_bf16_autocast_keeps_float32_output,
    check_cuda_fp32_matches_the_cpu,
)
from released_layouts import cosplace_shapes, cosplace_state, meta_state  # noqa: E402

from harness.cli import cli  # noqa: E402
from harness.errors import HarnessError  # noqa: E402
from harness.features import read_descriptors, read_info, read_names  # noqa: E402
from methods.cosplace import CosPlaceNet, GeM, gem, infer_backbone, infer_dim  # noqa: E402
from methods.imagenet import IMAGENET_MEAN, IMAGENET_STD, normalize_for_method  # noqa: E402
from methods.registry import get_method, list_methods  # noqa: E402

torch.set_num_threads(1)  # two threads on a shared 2-core machine run ~4x slower
DIM = 32


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A ``ResNet18_32_cosplace.pth`` as the authors save it: ``torch.save(state_dict)``."""
    state = cosplace_state("ResNet18", DIM, seed=0)
    path = tmp_path_factory.mktemp("cosplace") / "ResNet18_32_cosplace.pth"
    torch.save(state, path)
    return path, state


def _images(seed: int, count: int, size=(64, 80)):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (count, 3, *size), dtype=np.uint8))


def _model(path, name="cosplace", **options):
    method = get_method(name, {k: str(v) for k, v in options.items()}, weights=path)
    return method, method.build_model("cpu")


# ------------------------------------------------------------------------------ pieces
def test_gem_golden_values():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 2)
    # p = 2: sqrt((1 + 4 + 9 + 16) / 4) = sqrt(7.5); p = 3: cbrt((1 + 8 + 27 + 64) / 4) = cbrt(25)
    assert gem(x, torch.tensor([2.0])).item() == pytest.approx(7.5**0.5, rel=1e-6)
    assert gem(x, torch.tensor([3.0])).item() == pytest.approx(25 ** (1 / 3), rel=1e-6)
    # negatives and zeros are clamped to eps before the power: p = 1 gives (2 + 2 + 2e-6) / 4
    y = torch.tensor([-1.0, 0.0, 2.0, 2.0]).view(1, 1, 2, 2)
    assert gem(y, torch.tensor([1.0])).item() == pytest.approx((4 + 2e-6) / 4, rel=1e-7)
    pool = GeM()
    assert pool.p.item() == 3.0 and pool(x).shape == (1, 1, 1, 1)


def test_aggregation_matches_a_numpy_reference():
    rng = np.random.default_rng(3)
    net = CosPlaceNet("ResNet18", 8).eval()
    with torch.no_grad():
        net.aggregation[1].p.fill_(2.5)
    features = rng.standard_normal((2, 512, 3, 2)).astype(np.float32)
    got = net.aggregation(torch.from_numpy(features)).detach().numpy()
    normed = features / np.linalg.norm(features, axis=1, keepdims=True)
    pooled = (np.clip(normed, 1e-6, None) ** 2.5).mean(axis=(2, 3)) ** (1 / 2.5)
    linear = net.aggregation[3]
    out = pooled @ linear.weight.detach().numpy().T + linear.bias.detach().numpy()
    expected = out / np.linalg.norm(out, axis=1, keepdims=True)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------------- released files
@pytest.mark.parametrize("backbone, dim", [("ResNet18", 64), ("ResNet50", 128), ("VGG16", 512)])
def test_backbone_and_dim_come_from_the_file(tmp_path, backbone, dim):
    path = tmp_path / f"{backbone}_{dim}_cosplace.pth"
    torch.save(cosplace_state(backbone, dim, seed=1), path)
    method = get_method("cosplace", {}, weights=path)
    assert method.shape() == (backbone, dim) and method.descriptor_dim == dim
    model = method.build_model("cpu")  # strict: every key and shape matched
    assert model.aggregation[3].out_features == dim


@pytest.mark.parametrize("backbone", ["ResNet18", "ResNet50", "ResNet101", "ResNet152", "VGG16"])
def test_layouts_are_told_apart_by_their_keys(backbone):
    # shapes only (meta tensors): ResNet-50/101/152 differ in blocks per stage (3-4-6-3,
    # 3-4-23-3, 3-8-36-3), ResNet-18 has basic blocks (no conv3), VGG16 a backbone.28
    state = meta_state(cosplace_shapes(backbone, 256))
    assert (infer_backbone(state), infer_dim(state)) == (backbone, 256)


def test_released_file_gives_unit_descriptors(released):
    path, state = released
    method, model = _model(path)
    images = _images(0, 3)
    with torch.no_grad():
        out = method.encode(model, images, None)
    assert out.shape == (3, DIM) and torch.isfinite(out).all()
    np.testing.assert_allclose(out.norm(dim=1).numpy(), 1.0, atol=1e-5)
    assert model.aggregation[1].p.item() == pytest.approx(state["aggregation.1.p"].item())
    assert torch.equal(model.backbone[1].running_var, state["backbone.1.running_var"])
    counter = "backbone.1.num_batches_tracked"
    assert int(model.backbone[1].num_batches_tracked) == int(state[counter])


def test_eigenplaces_is_the_same_network(released, tmp_path):
    path, state = released
    eigen = tmp_path / "ResNet18_32_eigenplaces.pth"
    torch.save(state, eigen)
    images = _images(3, 2)
    with torch.no_grad():
        cosplace = _model(path)[1](normalize_for_method(images))
        method, model = _model(eigen, name="eigenplaces")
        assert method.name == "eigenplaces" and method.descriptor_dim == DIM
        assert torch.equal(method.encode(model, images, None), cosplace)


def test_batch_size_does_not_change_descriptors(released):
    path, _ = released
    method, model = _model(path)
    images = _images(1, 8)
    with torch.no_grad():
        batched = method.encode(model, images, None)
        single = torch.cat([method.encode(model, images[i : i + 1], None) for i in range(8)])
    assert torch.allclose(batched, single, atol=1e-5)


def test_training_checkpoint_loads_like_the_released_file(released, tmp_path):
    path, state = released
    _, reference = _model(path)
    adam = torch.optim.Adam([torch.nn.Parameter(torch.zeros(3))])
    adam.zero_grad()
    adam.step()
    training = tmp_path / "last_checkpoint.pth"  # CosPlace's util.save_checkpoint
    torch.save(
        {
            "epoch_num": 3,
            "model_state_dict": state,
            "optimizer_state_dict": adam.state_dict(),
            "classifiers_state_dict": [{"weight": torch.zeros(5, DIM)}],
            "optimizers_state_dict": [adam.state_dict()],
            "best_val_recall1": 71.5,
        },
        training,
    )
    images = _images(2, 2)
    with torch.no_grad():
        expected = reference(normalize_for_method(images))
        method, model = _model(training)
        assert torch.equal(method.encode(model, images, None), expected)


def test_bf16_autocast_keeps_gem_and_the_linear_layer_in_float32(released):
    path, _ = released
    method, model = _model(path)
    check_bf16_autocast_keeps_float32_output(method, model, _images(4, 2))


@pytest.mark.gpu
def test_cuda_fp32_matches_the_cpu(released):
    path, _ = released
    method, model = _model(path)
    check_cuda_fp32_matches_the_cpu(method, model, _images(5, 4))


# ------------------------------------------------------------------------------ strictness
def _expect_error(path, *fragments, **options):
    with pytest.raises(HarnessError) as info:
        method = get_method("cosplace", {k: str(v) for k, v in options.items()}, weights=path)
        method.build_model("cpu")
    message = info.value.one_line()
    assert message.startswith(f"{path}: ") and "\n" not in message
    for fragment in fragments:
        assert fragment in message
    return message


def test_missing_unexpected_and_misshaped_keys_are_named(released, tmp_path):
    _, state = released
    missing = dict(state)
    del missing["aggregation.1.p"]
    torch.save(missing, tmp_path / "missing.pth")
    _expect_error(tmp_path / "missing.pth", "missing keys: aggregation.1.p")

    unexpected = dict(state, **{"aggregation.5.weight": torch.zeros(3)})
    torch.save(unexpected, tmp_path / "unexpected.pth")
    _expect_error(tmp_path / "unexpected.pth", "unexpected keys: aggregation.5.weight")

    misshaped = dict(state, **{"backbone.4.0.bn1.running_mean": torch.zeros(65)})
    torch.save(misshaped, tmp_path / "shape.pth")
    _expect_error(tmp_path / "shape.pth", "backbone.4.0.bn1.running_mean (65,) != (64,)")


def test_options_must_agree_with_the_file(released):
    path, _ = released
    _expect_error(path, "option backbone=ResNet50 contradicts", backbone="ResNet50")
    _expect_error(path, "option dim=64 contradicts", dim=64)
    method, _ = _model(path, backbone="ResNet18", dim=DIM)
    assert method.descriptor_dim == DIM


def test_options_fill_in_what_the_file_cannot_tell(released, tmp_path):
    _, state = released
    no_linear = {k: v for k, v in state.items() if not k.startswith("aggregation.3.")}
    torch.save(no_linear, tmp_path / "no_linear.pth")
    _expect_error(tmp_path / "no_linear.pth", "cannot tell the dim", "--method-option dim=")
    # Given the dimension, strict loading then names the keys the file lacks.
    _expect_error(
        tmp_path / "no_linear.pth", "missing keys: aggregation.3.bias, aggregation.3.weight", dim=8
    )
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    _expect_error(tmp_path / "other.pth", "cannot tell the backbone", "fc.weight")


def test_cli_error_is_one_line_exit_2(released, tmp_path):
    _, state = released
    torch.save({k: v for k, v in state.items() if k != "aggregation.1.p"}, tmp_path / "bad.pth")
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (32, 24)).save(folder / "a.jpg")
    result = CliRunner().invoke(
        cli,
        ["extract", "-m", "cosplace", "-w", str(tmp_path / "bad.pth"), "--images", str(folder),
         "-o", str(tmp_path / "f.h5"), "--device", "cpu", "--workers", "0", "--no-progress"],
    )
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {tmp_path / 'bad.pth'}: ")
    assert "missing keys: aggregation.1.p" in result.output
    assert not (tmp_path / "f.h5").exists()


# ---------------------------------------------------------------------------- preprocessing
def test_loader_keeps_full_resolution_and_matches_torchvision(released, tmp_path):
    import torchvision.transforms as T

    path, _ = released
    image = Image.fromarray(np.random.default_rng(5).integers(0, 256, (37, 53, 3), np.uint8))
    loader = get_method("cosplace", {}, weights=path).image_loader(None)
    assert not loader.fixed_size
    pixels = loader.transform(image)
    assert pixels.shape == (3, 37, 53)
    reference = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(image)
    assert torch.allclose(normalize_for_method(pixels[None])[0], reference, atol=1e-6)
    # CosPlace's --resize_test_imgs: Resize(short side, antialias=True) on the PIL image
    resized = get_method("cosplace", {"short_side": "20"}, weights=path).image_loader(None)
    expected = T.Resize(20, antialias=True)(image)
    assert torch.equal(resized.transform(image), T.PILToTensor()(expected))


# ------------------------------------------------------------------------------- end to end
def test_harness_extract_images_end_to_end(released, tmp_path):
    path, _ = released
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(7)
    sizes = {"a.jpg": (48, 64), "b.jpg": (64, 48), "c.jpg": (56, 56)}
    for name, (height, width) in sizes.items():
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name, quality=90)
    out = tmp_path / "features.h5"
    result = CliRunner().invoke(
        cli,
        ["extract", "--method", "cosplace", "--weights", str(path), "--images", str(folder),
         "--out", str(out), "--device", "cpu", "--workers", "0", "--no-progress"],
    )
    assert result.exit_code == 0, result.output
    info = read_info(out)
    assert info.method == "cosplace" and info.parts["database"].dim == DIM
    assert read_names(out, "database") == sorted(sizes)
    descriptors = read_descriptors(out, "database")
    np.testing.assert_allclose(np.linalg.norm(descriptors, axis=1), 1.0, atol=1e-5)
    # Each row is the network applied to the decoded JPEG at its own size.
    _, model = _model(path)
    for row, name in enumerate(sorted(sizes)):
        with Image.open(folder / name) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
        normed = (array - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
        tensor = torch.from_numpy(normed.astype(np.float32)).permute(2, 0, 1)[None]
        with torch.no_grad():
            direct = model(tensor)[0].numpy()
        np.testing.assert_allclose(descriptors[row], direct, atol=1e-5)


def test_methods_are_registered():
    names = list_methods()
    assert {"cosplace", "eigenplaces", "mixvpr"} <= set(names)
    result = CliRunner().invoke(cli, ["methods", "list"])
    assert result.exit_code == 0
    for name in ("cosplace", "eigenplaces", "mixvpr"):
        assert name in result.output
