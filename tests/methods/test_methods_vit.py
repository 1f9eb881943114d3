"""DINOv2 ViT, SALAD and MegaLoc: released key layouts, golden pieces, strict loading, the CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402
from PIL import Image  # noqa: E402
from released_layouts import (  # noqa: E402
    TINY_VIT,
    dinov2_shapes,
    megaloc_old_layout,
    megaloc_state,
    salad_shapes,
    salad_state,
)

from harness.cli import cli  # noqa: E402
from harness.errors import HarnessError  # noqa: E402
from harness.features import read_descriptors, read_names  # noqa: E402
from methods.base import PartContext  # noqa: E402
from methods.dinov2 import (  # noqa: E402
    DinoVisionTransformer,
    interpolate_grid,
    vit_config_from_state,
)
from methods.imagenet import RoundToMultiple, TensorResize, normalize_for_method  # noqa: E402
from methods.megaloc import build_megaloc  # noqa: E402
from methods.registry import get_method  # noqa: E402
from methods.salad import build_salad, log_sinkhorn  # noqa: E402

torch.set_num_threads(1)  # two threads on a shared 2-core machine run ~4x slower
CONTEXT = PartContext(part="database", names=(), image_root=None)


def _prefixed(shapes, prefix):
    return {prefix + k: tuple(v) for k, v in shapes.items()}


def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _images(count, height, width, seed=0):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (count, 3, height, width), dtype=np.uint8))


def _method(name, path, **options):
    return get_method(name, {k: str(v) for k, v in options.items()}, weights=path)


def _encode(method, model, images):
    with torch.inference_mode():
        return method.encode(model, images, CONTEXT)


@pytest.fixture(scope="module")
def salad_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("salad") / "dino_salad.ckpt"
    torch.save(salad_state(seed=0), path)  # as serizba/salad releases it: a plain state dict
    return path


@pytest.fixture(scope="module")
def salad(salad_file):
    method = _method("salad", salad_file)
    return method, method.build_model(torch.device("cpu"))


# ------------------------------------------------------------------- full-size architectures
def test_released_vit_b_layouts_and_dimensions():
    """Built from no tensors, the models are the released ViT-B/14 shapes, key for key."""
    with torch.device("meta"):
        salad_model = build_salad({})
        megaloc_model = build_megaloc({})
    vit_b = {"dim": 768, "depth": 12, "mlp": 3072}
    assert _shapes(salad_model) == {
        **_prefixed(dinov2_shapes(**vit_b, mask_token=True), "backbone.model."),
        **_prefixed(salad_shapes(768), "aggregator."),
    }
    assert salad_model.aggregator.output_dim == 8448
    assert _shapes(megaloc_model) == {
        **_prefixed(dinov2_shapes(**vit_b, mask_token=False), "backbone."),
        **_prefixed(salad_shapes(768, 64, 256, 256), "aggregator.agg."),
        "aggregator.linear.weight": (8448, 16640),
        "aggregator.linear.bias": (8448,),
    }
    assert megaloc_model.backbone.blocks[0].attn.num_heads == 12


def test_vit_shape_from_file_and_depth_check():
    state = salad_state()
    config = vit_config_from_state(state, "backbone.model.", mask_token=True)
    assert (config.embed_dim, config.depth, config.num_heads, config.mlp_dim) == (128, 2, 2, 512)
    # A ViT-B width with a block missing is not taken as an 11-block network.
    shapes = dinov2_shapes(768, 11, 3072, mask_token=True)
    fake = {k: torch.empty(v) for k, v in shapes.items() if "blocks" in k or k == "cls_token"}
    with pytest.raises(HarnessError, match="has 12 blocks"):
        vit_config_from_state(fake, "", mask_token=True, path="x.ckpt")


# -------------------------------------------------------------------- positional embeddings
def test_positional_embedding_identity_at_native_size():
    vit = DinoVisionTransformer(
        vit_config_from_state(salad_state(), "backbone.model.", mask_token=True)
    )
    with torch.no_grad():
        vit.pos_embed.normal_()
    assert vit.positional_embedding(518, 518) is vit.pos_embed
    # 37 x 37 patches but not square in pixels: resampled (by a scale of 37.1 / 37), as dinov2.
    assert not torch.equal(vit.positional_embedding(518, 520), vit.pos_embed)


def _cubic(t, a=-0.75):
    t = abs(t)
    if t <= 1:
        return (a + 2) * t**3 - (a + 3) * t**2 + 1
    return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a if t < 2 else 0.0


def _resample_1d(values, out_len, offset=0.1):
    # Bicubic (A = -0.75) at half-pixel centres, scale (out + 0.1) / M, edges clamped.
    side = len(values)
    scale = (out_len + offset) / side
    out = []
    for i in range(out_len):
        source = (i + 0.5) / scale - 0.5
        base = math.floor(source)
        frac = source - base
        out.append(
            sum(_cubic(frac - k) * values[min(max(base + k, 0), side - 1)] for k in range(-1, 3))
        )
    return np.array(out)


def test_positional_interpolation_non_square_matches_hand_bicubic():
    """322 x 420 px -> 23 x 30 patches; rows follow H, columns W (MegaLoc commit 4a23a2b)."""
    rng = np.random.default_rng(0)
    by_row, by_col = rng.standard_normal(37), rng.standard_normal(37)
    grid = torch.from_numpy(np.add.outer(by_row, by_col)).reshape(1, 37 * 37, 1)
    out = interpolate_grid(grid, 23, 30).reshape(23, 30).numpy()
    expected = np.add.outer(_resample_1d(by_row, 23), _resample_1d(by_col, 30))
    np.testing.assert_allclose(out, expected, atol=1e-10)


# ---------------------------------------------------------------------------------- Sinkhorn
def test_one_sinkhorn_step_with_dust_bin_by_hand():
    scores = np.array([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]])
    dust = 0.3
    m, n = scores.shape
    augmented = np.vstack([scores, np.full((1, n), dust)])
    log_a = np.full(m + 1, -np.log(m + n))
    log_a[-1] += np.log(n - m)  # the dust bin takes the surplus n - m (here log 1 = 0)
    log_b = np.full(n, -np.log(m + n))
    u = np.array(
        [log_a[i] - np.log(sum(np.exp(augmented[i, j]) for j in range(n))) for i in range(m + 1)]
    )
    v = np.array(
        [
            log_b[j] - np.log(sum(np.exp(augmented[i, j] + u[i]) for i in range(m + 1)))
            for j in range(n)
        ]
    )
    expected = augmented + u[:, None] + v[None, :] + np.log(m + n)
    got = log_sinkhorn(torch.tensor(scores[None]), torch.tensor(dust), iterations=1)
    np.testing.assert_allclose(got[0].numpy(), expected, atol=1e-12)
    # After a column update every column of the plan holds mass 1 (the shift by log(m + n)).
    np.testing.assert_allclose(np.exp(got[0].numpy()).sum(axis=0), np.ones(n), atol=1e-12)


def _salad_reference(aggregator, patch_map, token):
    """serizba/salad's aggregation written out: repeat, multiply, sum, per-cluster L2."""
    f = aggregator.cluster_features(patch_map).flatten(2)
    p = aggregator.score(patch_map).flatten(2)
    t = aggregator.token_features(token)
    p = log_sinkhorn(p, aggregator.dust_bin, 3).exp()[:, :-1, :]
    p = p.unsqueeze(1).repeat(1, aggregator.cluster_dim, 1, 1)
    f = f.unsqueeze(2).repeat(1, 1, aggregator.num_clusters, 1)
    vlad = torch.nn.functional.normalize((f * p).sum(dim=-1), p=2, dim=1).flatten(1)
    out = torch.cat([torch.nn.functional.normalize(t, p=2, dim=-1), vlad], dim=-1)
    return torch.nn.functional.normalize(out, p=2, dim=-1)


# ------------------------------------------------------------------------------------- SALAD
def test_salad_from_released_file(salad):
    method, model = salad
    assert method.descriptor_dim == 8448
    images = _images(2, 126, 154)  # 9 x 11 = 99 patches (> 64 clusters), non-square
    out = _encode(method, model, images)
    assert out.shape == (2, 8448)
    np.testing.assert_allclose(out.norm(dim=1).numpy(), 1.0, atol=1e-5)
    with torch.inference_mode():
        patch_map, token = model.backbone.model(normalize_for_method(images))
        reference = _salad_reference(model.aggregator, patch_map, token)
    np.testing.assert_allclose(out.numpy(), reference.numpy(), atol=1e-5)


def test_salad_batch_size_independent(salad):
    method, model = salad
    images = _images(8, 126, 126, seed=3)
    together = _encode(method, model, images)
    alone = torch.cat([_encode(method, model, images[i : i + 1]) for i in range(8)])
    assert (together - alone).abs().max().item() < 1e-5


def test_salad_lightning_checkpoint_gives_the_same_descriptors(salad, tmp_path):
    method, model = salad
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": salad_state(seed=0), "epoch": 3, "global_step": 10}, path)
    other = _method("salad", path)
    images = _images(1, 126, 126, seed=5)
    np.testing.assert_array_equal(
        _encode(other, other.build_model(torch.device("cpu")), images).numpy(),
        _encode(method, model, images).numpy(),
    )


def test_salad_too_few_patches_is_an_input_error(salad):
    method, model = salad
    with pytest.raises(HarnessError, match="more patches than its 64 clusters"):
        _encode(method, model, _images(1, 112, 112))  # 8 x 8 = 64


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda s: s.pop("backbone.model.blocks.1.ls2.gamma"), "backbone.model.blocks.1.ls2.gamma"),
        (lambda s: s.update({"aggregator.extra": torch.zeros(1)}), "aggregator.extra"),
        (lambda s: s.update({"aggregator.dust_bin": torch.zeros(2)}), "aggregator.dust_bin"),
        (lambda s: s.pop("backbone.model.mask_token"), "backbone.model.mask_token"),
    ],
    ids=["missing", "unexpected", "misshaped", "no-mask-token"],
)
def test_salad_strict_loading_names_file_and_key(tmp_path, edit, key):
    state = salad_state(seed=1)
    edit(state)
    path = tmp_path / "dino_salad.ckpt"
    torch.save(state, path)
    with pytest.raises(HarnessError) as caught:
        _method("salad", path).build_model(torch.device("cpu"))
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and key in message and "\n" not in message


def test_salad_image_size_must_be_multiple_of_14(salad_file):
    with pytest.raises(HarnessError, match="multiple of 14"):
        _method("salad", salad_file, image_height=320)


# ----------------------------------------------------------------------------------- MegaLoc
@pytest.fixture(scope="module")
def megaloc_file(tmp_path_factory):
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("megaloc") / "model.safetensors"
    save_file(megaloc_state(seed=2), str(path))  # as the authors publish it on Hugging Face
    return path


def test_megaloc_from_safetensors(megaloc_file):
    method = _method("megaloc", megaloc_file)
    model = method.build_model(torch.device("cpu"))
    assert method.descriptor_dim == 64
    images = _images(8, 126, 140, seed=4)
    out = _encode(method, model, images)
    assert out.shape == (8, 64)
    np.testing.assert_allclose(out.norm(dim=1).numpy(), 1.0, atol=1e-5)
    # The head: SALAD output (itself L2-normalised) -> linear -> L2.
    with torch.inference_mode():
        salad_out = model.aggregator.agg(model.backbone(normalize_for_method(images)))
        np.testing.assert_allclose(salad_out.norm(dim=1).numpy(), 1.0, atol=1e-5)
        expected = torch.nn.functional.normalize(model.aggregator.linear(salad_out), dim=1)
    np.testing.assert_allclose(out.numpy(), expected.numpy(), atol=1e-6)
    alone = torch.cat([_encode(method, model, images[i : i + 1]) for i in range(8)])
    assert (out - alone).abs().max().item() < 1e-5


def test_megaloc_old_torch_layout_gives_the_same_descriptors(megaloc_file, tmp_path):
    new = _method("megaloc", megaloc_file)
    path = tmp_path / "megaloc.torch"
    torch.save(megaloc_old_layout(megaloc_state(seed=2)), path)
    old = _method("megaloc", path)
    images = _images(2, 126, 126, seed=6)
    np.testing.assert_array_equal(
        _encode(old, old.build_model(torch.device("cpu")), images).numpy(),
        _encode(new, new.build_model(torch.device("cpu")), images).numpy(),
    )


def test_megaloc_strict_and_unreadable_files(tmp_path):
    from safetensors.torch import save_file

    state = megaloc_state(seed=2)
    state["backbone.mask_token"] = torch.zeros(1, TINY_VIT["dim"])  # not in MegaLoc's own ViT
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    with pytest.raises(HarnessError, match="unexpected keys: backbone.mask_token") as caught:
        _method("megaloc", path).build_model(torch.device("cpu"))
    assert str(caught.value).startswith(f"{path}: ")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(HarnessError, match="not a readable safetensors file") as caught:
        _method("megaloc", broken).build_model(torch.device("cpu"))
    assert str(caught.value).startswith(f"{broken}: ")


# ------------------------------------------------------------------------------ preprocessing
def test_round_to_multiple_of_14_as_megaloc():
    import torchvision.transforms.functional as TF

    rng = np.random.default_rng(7)
    image = Image.fromarray(rng.integers(0, 256, (333, 500, 3), dtype=np.uint8))
    out = RoundToMultiple(14)(image)
    assert tuple(out.shape) == (3, 336, 504)  # round(333/14) = 24, round(500/14) = 36
    reference = TF.resize(TF.to_tensor(image), [336, 504], antialias=True)
    np.testing.assert_allclose(out.numpy(), reference.numpy(), atol=1e-6)
    assert RoundToMultiple(14)(image.crop((0, 0, 28, 42))).shape[-2:] == (42, 28)
    assert not RoundToMultiple(14).fixed_size and RoundToMultiple(14, 322, 322).fixed_size


def test_tensor_resize_is_torchvisions_bicubic_antialias():
    import torchvision.transforms as T

    rng = np.random.default_rng(8)
    image = Image.fromarray(rng.integers(0, 256, (300, 410, 3), dtype=np.uint8))
    reference = T.Compose(
        [
            T.ToTensor(),
            T.Resize((384, 384), interpolation=T.InterpolationMode.BICUBIC, antialias=True),
        ]
    )(image)
    np.testing.assert_allclose(TensorResize(384, 384)(image).numpy(), reference.numpy(), atol=1e-6)


# ---------------------------------------------------------------------------------------- CLI
def _extract(weights, folder, out, *extra, method="salad"):
    return CliRunner().invoke(
        cli,
        [
            "extract",
            "--method",
            method,
            "--weights",
            str(weights),
            "--images",
            str(folder),
            "--out",
            str(out),
            "--workers",
            "0",
            "--device",
            "cpu",
            "--no-progress",
            *extra,
        ],
    )


def test_salad_extract_cli_end_to_end(salad, salad_file, tmp_path):
    _, model = salad
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(9)
    for name, size in (("a.jpg", (200, 150)), ("b.jpg", (150, 260)), ("c.jpg", (322, 322))):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
            folder / name
        )
    out = tmp_path / "salad.h5"
    result = _extract(
        salad_file, folder, out, "--option", "image_height=126", "--option", "image_width=154"
    )
    assert result.exit_code == 0, result.output
    names = read_names(out, "database")
    descriptors = read_descriptors(out, "database")
    assert names == ["a.jpg", "b.jpg", "c.jpg"] and descriptors.shape == (3, 8448)
    np.testing.assert_allclose(np.linalg.norm(descriptors, axis=1), 1.0, atol=1e-5)
    small = _method("salad", salad_file, image_height=126, image_width=154)
    loader = small.image_loader(CONTEXT)
    batch = torch.stack([loader(folder / name, name) for name in names])
    np.testing.assert_allclose(descriptors, _encode(small, model, batch).numpy(), atol=1e-5)


def test_salad_extract_cli_strict_error(tmp_path):
    state = salad_state(seed=1)
    del state["aggregator.score.3.bias"]
    path = tmp_path / "dino_salad.ckpt"
    torch.save(state, path)
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (140, 140)).save(folder / "a.jpg")
    result = _extract(path, folder, tmp_path / "x.h5")
    assert result.exit_code == 2
    assert (
        result.output.startswith(f"error: {path}: ") and "aggregator.score.3.bias" in result.output
    )
    assert not (tmp_path / "x.h5").exists()


def test_megaloc_extract_cli_images_of_their_own_sizes(megaloc_file, tmp_path):
    """Without an image size each image keeps its own, rounded to multiples of 14."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(10)
    for name, (width, height) in (("a.jpg", (150, 130)), ("b.jpg", (126, 200))):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name)
    out = tmp_path / "megaloc.h5"
    result = _extract(megaloc_file, folder, out, method="megaloc")
    assert result.exit_code == 0, result.output
    descriptors = read_descriptors(out, "database")
    assert descriptors.shape == (2, 64)
    method = _method("megaloc", megaloc_file)
    model = method.build_model(torch.device("cpu"))
    loader = method.image_loader(CONTEXT)
    for row, name in enumerate(["a.jpg", "b.jpg"]):
        image = loader(folder / name, name)
        assert image.shape[-2] % 14 == 0 and image.shape[-1] % 14 == 0
        expected = _encode(method, model, image.unsqueeze(0))[0].numpy()
        np.testing.assert_allclose(descriptors[row], expected, atol=1e-5)
