"""NetVLAD model, preprocessing, checkpoints (both OpenIBL layouts), PCA, registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

from harness.errors import HarnessError  # noqa: E402
from harness.registry import Registry  # noqa: E402
from methods.checkpoints import (  # noqa: E402
    load_state_dict_strict,
    read_checkpoint,
    save_checkpoint,
    to_openibl_hub,
    to_openibl_training,
)
from methods.netvlad import (  # noqa: E402
    Backbone,
    ModelConfig,
    build_model,
    get_backbone,
    load_backbone_weights,
    model_from_checkpoint,
)
from methods.pca import fit_pca, load_pca, pca_conv_parameters, save_pca  # noqa: E402
from methods.registry import get_method, list_methods  # noqa: E402
from methods.transforms import MEAN, STD, ResizeUint8, ShortSideUint8, normalize_batch  # noqa: E402

torch.set_num_threads(1)  # two threads on a shared 2-core machine run ~4x slower
DATA = Path(__file__).resolve().parents[1] / "data"
GOLDEN = DATA / "golden_netvlad_vgg16.npz"
SMALL = ModelConfig(backbone="small", num_clusters=4, image_height=32, image_width=32)


def _fill(model, seed: int = 0) -> None:
    """Deterministic weights from numpy (independent of torch's init code and version)."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, parameter in sorted(model.named_parameters()):
            fan_in = int(np.prod(parameter.shape[1:])) if parameter.ndim > 1 else 1
            values = rng.standard_normal(parameter.shape) * np.sqrt(2.0 / fan_in)
            parameter.copy_(torch.from_numpy(values.astype(np.float32)))


def _golden_model():
    model = build_model(ModelConfig(backbone="vgg16", num_clusters=8, pca_dim=16))
    _fill(model, seed=0)
    return model.eval()


def _golden_input():
    rng = np.random.default_rng(1)
    return normalize_batch(torch.from_numpy(rng.integers(0, 256, (2, 3, 32, 48), dtype=np.uint8)))


def openibl_reference(model, images):
    """OpenIBL's EmbedNetPCA forward written out literally (broadcast residuals)."""
    x = model.base_model.base(images)
    n, c = x.shape[:2]
    x = F.normalize(x, p=2, dim=1)
    soft_assign = F.softmax(model.net_vlad.conv(x).view(n, model.net_vlad.num_clusters, -1), dim=1)
    x_flatten = x.view(n, c, -1)
    residual = x_flatten.expand(model.net_vlad.num_clusters, -1, -1, -1).permute(
        1, 0, 2, 3
    ) - model.net_vlad.centroids.expand(x_flatten.size(-1), -1, -1).permute(1, 2, 0).unsqueeze(0)
    residual = residual * soft_assign.unsqueeze(2)
    vlad = residual.sum(dim=-1)
    vlad = F.normalize(vlad, p=2, dim=2).view(n, -1)
    vlad = F.normalize(vlad, p=2, dim=1)
    if model.pca_layer is None:
        return vlad
    out = model.pca_layer(vlad.view(n, -1, 1, 1)).view(n, -1)
    return F.normalize(out, p=2, dim=-1)


# ------------------------------------------------------------------------------ model
def test_vgg16_backbone_is_cut_at_conv5_3_before_relu():
    backbone = Backbone(get_backbone("vgg16"))
    layers = list(backbone.base)
    assert len(layers) == 29 and isinstance(layers[-1], torch.nn.Conv2d)
    assert layers[-1].out_channels == 512
    # The lineage's trainable split: conv5 starts at layer 24.
    backbone.freeze("conv5")
    assert not any(p.requires_grad for p in backbone.base[:24].parameters())
    assert all(p.requires_grad for p in backbone.base[24:].parameters())


def test_vgg16_layers_equal_torchvision_features():
    torchvision = pytest.importorskip("torchvision")
    reference = torch.nn.Sequential(
        *list(torchvision.models.vgg16(weights=None).features.children())[:-2]
    )
    ours = Backbone(get_backbone("vgg16")).base
    assert [type(m) for m in ours] == [type(m) for m in reference]
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {
        k: tuple(v.shape) for k, v in reference.state_dict().items()
    }
    assert all(
        a.padding == b.padding and a.kernel_size == b.kernel_size
        for a, b in zip(ours, reference)
        if isinstance(a, torch.nn.Conv2d)
    )


def test_state_dict_keys_are_openibl_names():
    keys = set(build_model(ModelConfig(backbone="vgg16", pca_dim=8)).state_dict())
    assert {
        "base_model.base.0.weight",
        "base_model.base.28.bias",
        "net_vlad.conv.weight",
        "net_vlad.centroids",
        "pca_layer.weight",
        "pca_layer.bias",
    } <= keys
    assert not any(k.startswith("module.") for k in keys)


def test_descriptor_equals_openibl_formula():
    model = _golden_model()
    images = _golden_input()
    with torch.no_grad():
        ours = model(images)
        reference = openibl_reference(model, images)
        vlad = model.vlad(images)
    assert ours.shape == (2, 16) and vlad.shape == (2, 8 * 512)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(vlad.norm(dim=1), torch.ones(2))


def test_golden_descriptor():
    """Regression: the fixed model on the fixed input gives the stored descriptors."""
    with torch.no_grad():
        model = _golden_model()
        images = _golden_input()
        vlad, descriptor = model.vlad(images).numpy(), model(images).numpy()
    golden = np.load(GOLDEN, allow_pickle=False)
    np.testing.assert_allclose(vlad, golden["vlad"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(descriptor, golden["descriptor"], rtol=1e-4, atol=1e-6)
    # The stored values are not degenerate (a constant would pass a weaker check).
    assert np.std(golden["descriptor"]) > 0.05 and not np.allclose(
        golden["vlad"][0], golden["vlad"][1]
    )


def test_cluster_init_alpha_and_assignment():
    model = build_model(SMALL, seed=0)
    rng = np.random.default_rng(0)
    centroids = rng.standard_normal((4, 128)).astype(np.float32)
    descriptors = rng.standard_normal((50, 128)).astype(np.float32)
    descriptors /= np.linalg.norm(descriptors, axis=1, keepdims=True)
    alpha = model.net_vlad.init_from_clusters(centroids, descriptors)
    normed = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
    dots = np.sort(normed @ descriptors.T, axis=0)[::-1]
    assert alpha == pytest.approx(-np.log(0.01) / np.mean(dots[0] - dots[1]), rel=1e-5)
    np.testing.assert_allclose(
        model.net_vlad.conv.weight[:, :, 0, 0].detach().numpy(), alpha * normed, rtol=1e-5
    )
    np.testing.assert_allclose(model.net_vlad.centroids.detach().numpy(), centroids)


# ---------------------------------------------------------------------- preprocessing
def test_preprocessing_equals_torchvision_pipeline():
    from PIL import Image
    from torchvision import transforms as T

    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))
    reference = T.Compose(
        [T.Resize((24, 32)), T.ToTensor(), T.Normalize(mean=list(MEAN), std=list(STD))]
    )(image)
    ours = normalize_batch(ResizeUint8(24, 32)(image)[None])[0]
    assert torch.equal(ours, reference)
    tokyo = ShortSideUint8(40)(image)
    assert tuple(tokyo.shape) == (3, 40, 56) and tokyo.dtype == torch.uint8
    reference = T.Compose([T.Resize(40), T.PILToTensor()])(image)
    assert torch.equal(tokyo, reference)


@pytest.mark.parametrize("factor", [0.3, 1.0, 1.6])
def test_color_jitter_operations_equal_torchvision(factor):
    from PIL import Image, ImageEnhance
    from torchvision.transforms import functional as TF

    from methods.transforms import adjust_hue, color_jitter

    rng = np.random.default_rng(4)
    image = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    for ours, theirs in [
        (ImageEnhance.Brightness(image).enhance(factor), TF.adjust_brightness(image, factor)),
        (ImageEnhance.Contrast(image).enhance(factor), TF.adjust_contrast(image, factor)),
        (ImageEnhance.Color(image).enhance(factor), TF.adjust_saturation(image, factor)),
        (adjust_hue(image, factor / 4), TF.adjust_hue(image, factor / 4)),
    ]:
        assert np.array_equal(np.asarray(ours), np.asarray(theirs))
    # Seeded: the same generator state gives the same jitter; no jitter leaves the image alone.
    first = color_jitter(image, np.random.default_rng(1), 0.7, 0.7, 0.7, 0.5)
    again = color_jitter(image, np.random.default_rng(1), 0.7, 0.7, 0.7, 0.5)
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(image))
    assert np.array_equal(np.asarray(color_jitter(image, rng, 0, 0, 0, 0)), np.asarray(image))


# ------------------------------------------------------------------------ checkpoints
@pytest.fixture(scope="module")
def small_model():
    model = build_model(SMALL, seed=0).eval()
    _fill(model, seed=5)
    return model


@pytest.mark.parametrize("layout", ["openibl-training", "openibl-hub", "harness"])
def test_checkpoint_layouts_round_trip(tmp_path, small_model, layout):
    state = small_model.state_dict()
    path = tmp_path / "weights.pth"
    if layout == "openibl-training":
        torch.save(to_openibl_training(state, epoch=3, best_recall5=0.5), path)
    elif layout == "openibl-hub":
        torch.save(to_openibl_hub(state), path)
    else:
        save_checkpoint(path, state_dict=state, model_config=SMALL.to_dict(), epoch=3)
    checkpoint = read_checkpoint(path)
    assert checkpoint.layout == layout
    loaded = model_from_checkpoint(checkpoint, SMALL).eval()
    images = normalize_batch(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    with torch.no_grad():
        assert torch.equal(loaded(images), small_model(images))


def test_openibl_training_keys_carry_module_prefix(small_model):
    payload = to_openibl_training(small_model.state_dict())
    assert all(k.startswith("module.") for k in payload["state_dict"])
    assert "module.net_vlad.centroids" in payload["state_dict"] and set(payload) == {
        "state_dict",
        "epoch",
        "best_recall5",
    }


def test_hub_file_with_pca_layer_gives_pca_descriptors(tmp_path):
    model = build_model(ModelConfig(backbone="small", num_clusters=4, pca_dim=8), seed=1).eval()
    path = tmp_path / "hub.pth"
    torch.save(to_openibl_hub(model.state_dict()), path)
    method = get_method(
        "netvlad", {"backbone": "small", "image_height": "32", "image_width": "32"}, weights=path
    )
    assert method.descriptor_dim == 8
    built = method.build_model("cpu")
    images = normalize_batch(torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8))
    with torch.no_grad():
        torch.testing.assert_close(built(images), model(images))


def test_missing_and_unexpected_keys_are_listed(tmp_path, small_model):
    state = dict(small_model.state_dict())
    del state["net_vlad.centroids"]
    state["net_vlad.extra"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 0}, path)
    with pytest.raises(HarnessError) as info:
        model_from_checkpoint(read_checkpoint(path), SMALL)
    text = info.value.one_line()
    assert (
        str(path) in text
        and "missing keys: net_vlad.centroids" in text
        and "unexpected keys: net_vlad.extra" in text
    )


def test_shape_mismatch_is_listed(tmp_path, small_model):
    path = tmp_path / "k8.pth"
    torch.save(
        to_openibl_hub(build_model(ModelConfig(backbone="small", num_clusters=8)).state_dict()),
        path,
    )
    with pytest.raises(HarnessError, match=r"net_vlad.centroids \(8, 128\) != \(4, 128\)"):
        model_from_checkpoint(read_checkpoint(path), SMALL)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "checkpoint file is empty"),
        (
            b"\x00garbage that is not a zip or pickle",
            "not a loadable PyTorch checkpoint.*Unsupported operand",
        ),
    ],
)
def test_corrupt_checkpoint_is_an_error_naming_it(tmp_path, content, message):
    path = tmp_path / "corrupt.pth"
    path.write_bytes(content)
    with pytest.raises(HarnessError, match=message) as info:
        read_checkpoint(path)
    assert info.value.path == str(path)


def test_truncated_checkpoint_is_an_error(tmp_path, small_model):
    path = tmp_path / "truncated.pth"
    torch.save(to_openibl_hub(small_model.state_dict()), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(HarnessError, match="corrupt or truncated"):
        read_checkpoint(path)


class _Exploit:
    def __reduce__(self):
        return (print, ("code ran",))


@pytest.mark.parametrize(
    "protocol, message",
    [
        (2, "refusing to load: the checkpoint references Python object print"),
        (4, "not a loadable PyTorch checkpoint"),
    ],
)
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoint_with_code_is_refused(tmp_path, capsys, protocol, message):
    path = tmp_path / "evil.pth"
    torch.save(
        {"state_dict": {"a": torch.zeros(1)}, "payload": _Exploit()}, path, pickle_protocol=protocol
    )
    with pytest.raises(HarnessError, match=message):
        read_checkpoint(path)
    assert "code ran" not in capsys.readouterr().out


def test_missing_checkpoint(tmp_path):
    with pytest.raises(HarnessError, match="not found"):
        read_checkpoint(tmp_path / "nope.pth")


def test_backbone_weights_in_torchvision_layout(tmp_path):
    source = build_model(SMALL, seed=3)
    # torchvision names the layers features.N and adds a classifier.
    state = {
        f"features.{k[len('base_model.base.'):]}": v
        for k, v in source.state_dict().items()
        if k.startswith("base_model.base.")
    }
    state["classifier.0.weight"] = torch.zeros(2, 2)
    path = tmp_path / "vgg.pth"
    torch.save(state, path)
    target = build_model(SMALL, seed=4)
    load_backbone_weights(target.base_model, path)
    for key, value in source.base_model.state_dict().items():
        assert torch.equal(target.base_model.state_dict()[key], value)


def test_backbone_weights_that_do_not_fit(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(3, 3, 3, 3)}, path)
    with pytest.raises(HarnessError, match="missing keys"):
        load_backbone_weights(build_model(SMALL).base_model, path)


def test_load_state_dict_strict_accepts_exact_match(small_model):
    target = build_model(SMALL)
    load_state_dict_strict(target, small_model.state_dict(), None)
    assert torch.equal(target.net_vlad.centroids, small_model.net_vlad.centroids)


# -------------------------------------------------------------------------------- PCA
def _numpy_pca(data: np.ndarray, k: int):
    centred = data - data.mean(axis=0)
    covariance = centred.T @ centred / (len(data) - 1)
    values, vectors = np.linalg.eigh(covariance)
    order = np.argsort(values)[::-1][:k]
    return values[order], vectors[:, order]


@pytest.mark.parametrize(
    "points, dims", [(200, 16), (12, 40)]
)  # primal and dual (fewer points than dims)
def test_pca_fit_matches_numpy(points, dims):
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((points, dims)) * np.linspace(3, 0.5, dims)).astype(np.float32)
    k = 6
    params = fit_pca(data, k)
    values, vectors = _numpy_pca(data.astype(np.float64), k)
    np.testing.assert_allclose(params.lams, values, rtol=1e-4)
    # Eigenvectors are defined up to sign.
    np.testing.assert_allclose(np.abs(np.sum(params.U * vectors, axis=0)), np.ones(k), rtol=1e-4)
    np.testing.assert_allclose(params.mu[:, 0], data.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(params.Utmu, params.U.T @ params.mu, rtol=1e-4, atol=1e-5)


def test_pca_whitening_whitens_training_data():
    rng = np.random.default_rng(1)
    data = (rng.standard_normal((300, 12)) * np.linspace(4, 1, 12)).astype(np.float32)
    weight, bias = pca_conv_parameters(fit_pca(data, 5), whiten=True)
    projected = data @ weight[:, :, 0, 0].numpy().T + bias.numpy()
    np.testing.assert_allclose(np.cov(projected.T), np.eye(5), atol=1e-3)


def test_pca_h5_round_trip_and_openibl_layout(tmp_path):
    import h5py

    rng = np.random.default_rng(2)
    params = fit_pca(rng.standard_normal((40, 10)).astype(np.float32), 4)
    path = save_pca(tmp_path / "pca_params_model_best.h5", params)
    with h5py.File(path, "r") as handle:
        assert sorted(handle) == ["U", "Utmu", "lams", "mu"]
        assert (
            handle["U"].shape == (10, 4)
            and handle["mu"].shape == (10, 1)
            and handle["Utmu"].shape == (4, 1)
        )
    loaded = load_pca(path)
    for name in ("U", "lams", "mu", "Utmu"):
        np.testing.assert_allclose(
            getattr(loaded, name), getattr(params, name), rtol=1e-6, atol=1e-7
        )


def test_pca_conv_equals_openibl_load_and_infer():
    rng = np.random.default_rng(4)
    params = fit_pca(rng.standard_normal((60, 20)).astype(np.float32), 8)
    weight, bias = pca_conv_parameters(params, 6, whiten=True)
    # OpenIBL's PCA.load: U[:, :k] @ diag(1/sqrt(lams)), Utmu = U.T mu, conv weight U.T, bias -Utmu.
    U = params.U[:, :6] @ np.diag(1.0 / np.sqrt(params.lams[:6]))
    np.testing.assert_allclose(weight[:, :, 0, 0].numpy(), U.T, rtol=1e-5)
    np.testing.assert_allclose(bias.numpy(), -(U.T @ params.mu)[:, 0], rtol=1e-4, atol=1e-5)


def test_pca_refuses_more_components_than_rank():
    with pytest.raises(HarnessError, match="cannot keep 10 PCA components from 5 descriptors"):
        fit_pca(np.random.default_rng(0).standard_normal((5, 20)), 10)


@pytest.mark.parametrize(
    "content, message",
    [
        ({"U": np.zeros((4, 2))}, "lacks dataset"),
        (
            {"U": np.zeros((4, 2)), "lams": np.ones(3), "mu": np.zeros((4, 1))},
            "inconsistent PCA shapes",
        ),
        ({"U": np.full((4, 2), np.nan), "lams": np.ones(2), "mu": np.zeros((4, 1))}, "NaN or Inf"),
    ],
)
def test_bad_pca_files(tmp_path, content, message):
    import h5py

    path = tmp_path / "pca.h5"
    with h5py.File(path, "w") as handle:
        for key, value in content.items():
            handle.create_dataset(key, data=value)
    with pytest.raises(HarnessError, match=message):
        load_pca(path)


def test_method_applies_pca_file(tmp_path, small_model):
    weights = tmp_path / "w.pth"
    save_checkpoint(weights, state_dict=small_model.state_dict(), model_config=SMALL.to_dict())
    rng = np.random.default_rng(0)
    params = fit_pca(rng.standard_normal((64, 512)).astype(np.float32), 16)
    pca_path = save_pca(tmp_path / "pca.h5", params)
    method = get_method("netvlad", {"pca": str(pca_path), "pca_dim": "8"}, weights=weights)
    assert method.descriptor_dim == 8
    model = method.build_model("cpu")
    images = normalize_batch(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    with torch.no_grad():
        vlad = small_model.vlad(images).numpy()
        weight, bias = pca_conv_parameters(params, 8)
        expected = vlad @ weight[:, :, 0, 0].numpy().T + bias.numpy()
        expected /= np.linalg.norm(expected, axis=1, keepdims=True)
        np.testing.assert_allclose(model(images).numpy(), expected, rtol=1e-4, atol=1e-5)
    # The PCA file enters the fingerprint.
    plain = get_method("netvlad", {}, weights=weights)
    assert plain.fingerprint_sha256() != method.fingerprint_sha256()
    assert "pca" in method.fingerprint()["files"]


# --------------------------------------------------------------------------- registry
def test_builtin_methods_registered():
    assert {"netvlad", "sfrs"} <= set(list_methods())


def test_unknown_method_suggests_close_names(tmp_path):
    with pytest.raises(HarnessError, match="did you mean netvlad"):
        get_method("netvald", {})


def test_duplicate_registration_raises():
    registry = Registry("thing")
    registry.register("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("a", 2)


def test_unknown_option_lists_valid_ones(tmp_path, small_model):
    weights = tmp_path / "w.pth"
    save_checkpoint(weights, state_dict=small_model.state_dict(), model_config=SMALL.to_dict())
    with pytest.raises(HarnessError) as info:
        get_method("netvlad", {"pca_dimm": "8"}, weights=weights)
    text = info.value.one_line()
    assert (
        "unknown option(s) pca_dimm" in text
        and "did you mean pca_dim" in text
        and "image_height" in text
    )


@pytest.mark.parametrize(
    "options, message",
    [
        ({"image_height": "abc"}, "must be an integer"),
        ({"whiten": "maybe"}, "must be true or false"),
        ({"query_keep_aspect": "sometimes"}, "must be one of"),
        ({"image_height": "0"}, "image_height must be >= 1"),
    ],
)
def test_bad_option_values(tmp_path, small_model, options, message):
    weights = tmp_path / "w.pth"
    save_checkpoint(weights, state_dict=small_model.state_dict(), model_config=SMALL.to_dict())
    with pytest.raises(HarnessError, match=message):
        get_method("netvlad", options, weights=weights)


def test_weights_are_required_and_must_exist(tmp_path):
    with pytest.raises(HarnessError, match="needs --weights"):
        get_method("netvlad", {})
    with pytest.raises(HarnessError, match="weights file not found"):
        get_method("sfrs", {}, weights=tmp_path / "missing.pth")


def test_registry_tolerates_only_the_absent_iovpr_module(monkeypatch):
    from harness import registry as registry_module

    registry = Registry("thing", ("methods.iovpr.registered",),
                        optional_modules=("methods.iovpr.registered",))

    def fake_import(name):
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    monkeypatch.setattr(registry_module.importlib, "import_module", fake_import)
    assert registry.names() == []
    broken = Registry("thing", ("methods.iovpr.registered",),
                      optional_modules=("methods.iovpr.registered",))

    def broken_import(name):
        raise ModuleNotFoundError("No module named 'scipy_missing'", name="scipy_missing")

    monkeypatch.setattr(registry_module.importlib, "import_module", broken_import)
    with pytest.raises(ModuleNotFoundError, match="scipy_missing"):
        broken.names()


if __name__ == "__main__":  # regenerate the golden file (only after an intended change)
    with torch.no_grad():
        model, images = _golden_model(), _golden_input()
        DATA.mkdir(exist_ok=True)
        np.savez(GOLDEN, vlad=model.vlad(images).numpy(), descriptor=model(images).numpy())
    print("wrote", GOLDEN)
