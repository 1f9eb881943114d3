"""CSAIL's released segmentation files: their BatchNorm bookkeeping buffers, and
``harness segmenter import`` making a segmenter that ``harness segment`` runs.

The files are written as CSAIL's ``train.py`` writes them, ``torch.save(net.state_dict())``
of an encoder and a decoder whose BatchNorm layers are synchronized BatchNorms registering
``_tmp_running_mean``, ``_tmp_running_var`` and ``_running_iter`` (reproduced here by a
BatchNorm2d subclass registering the same buffers).
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

torch = pytest.importorskip("torch")

from harness.cli import cli  # noqa: E402
from harness.errors import HarnessError  # noqa: E402
from methods.iovpr import segmentation as seg  # noqa: E402
from methods.iovpr.segtrain import resize_short_side, to_tensor  # noqa: E402

torch.set_num_threads(1)
ARCH = "upernet-tiny"
WINDOW_ROW = 8  # ADE20k class 9 (windowpane) is logit 8 of CSAIL's 150


class _SyncBatchNorm(torch.nn.BatchNorm2d):
    """A BatchNorm with the extra buffers of CSAIL's synchronized BatchNorm."""

    def __init__(self, num_features):
        super().__init__(num_features)
        self.register_buffer("_tmp_running_mean", torch.zeros(num_features))
        self.register_buffer("_tmp_running_var", torch.ones(num_features))
        self.register_buffer("_running_iter", torch.ones(1))


def _with_sync_batchnorm(module):
    for name, child in list(module.named_children()):
        if isinstance(child, torch.nn.BatchNorm2d):
            setattr(module, name, _SyncBatchNorm(child.num_features))
        else:
            _with_sync_batchnorm(child)
    return module


def _released_model(seed: int):
    """A 150-class UPerNet as CSAIL trains it, every tensor drawn from a seeded generator."""
    model = _with_sync_batchnorm(seg.build_segmenter(ARCH, num_classes=150))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if key.endswith("running_var"):
                value.copy_(0.5 + torch.rand(value.shape, generator=generator))
            elif key.endswith(("num_batches_tracked", "_running_iter")):
                value.fill_(300)
            else:
                value.copy_(0.2 * torch.randn(value.shape, generator=generator))
    return model.eval()


@pytest.fixture(scope="module")
def csail_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("csail")
    model = _released_model(seed=5)
    encoder, decoder = folder / "encoder_epoch_30.pth", folder / "decoder_epoch_30.pth"
    torch.save(model.encoder.state_dict(), encoder)  # CSAIL's train.py checkpoint()
    torch.save(model.decoder.state_dict(), decoder)
    return encoder, decoder, model


def _plain_state(model) -> dict:
    """The model's tensors without the bookkeeping buffers (what torch's BatchNorm holds)."""
    return {k: v for k, v in model.state_dict().items()
            if k.rpartition(".")[2] not in seg.SYNC_BN_BOOKKEEPING}


def test_released_files_carry_the_bookkeeping_and_load(csail_files):
    encoder, decoder, released = csail_files
    saved = torch.load(encoder, weights_only=True)
    assert {"bn1._tmp_running_mean", "bn1._tmp_running_var", "bn1._running_iter"} <= set(saved)
    model = seg.build_segmenter(ARCH)  # 2 classes, as `harness train window-seg --pretrained`
    report = seg.load_pretrained(model, encoder)
    assert report.parts == ("encoder",)
    assert "encoder.layer1.0.bn2._running_iter" in report.ignored
    report = seg.load_pretrained(model, decoder)
    assert report.parts == ("decoder",) and "decoder.conv_last.1.weight" in report.adapted
    loaded = model.state_dict()
    for key, value in _plain_state(released).items():
        if not key.startswith("decoder.conv_last.1."):
            assert torch.equal(loaded[key], value), key


@pytest.mark.parametrize("edit, message", [
    ("other buffer", "unexpected keys .*bn1._tmp_running_std"),
    ("not a batchnorm", "unexpected keys .*conv1._running_iter"),
    ("shape", "unexpected keys .*bn1._tmp_running_mean"),
])
def test_only_those_buffers_of_batchnorm_layers_are_accepted(tmp_path, csail_files, edit, message):
    state = dict(torch.load(csail_files[0], weights_only=True))
    if edit == "other buffer":
        state["bn1._tmp_running_std"] = torch.ones(16)
    elif edit == "not a batchnorm":
        state["conv1._running_iter"] = torch.ones(1)
    else:
        state["bn1._tmp_running_mean"] = torch.zeros(17)
    path = tmp_path / "encoder.pth"
    torch.save(state, path)
    with pytest.raises(HarnessError, match=message):
        seg.load_pretrained(seg.build_segmenter(ARCH), path)


def _reference_mask(model, image: np.ndarray, short_side: int) -> np.ndarray:
    """CSAIL's prediction: the window class wins the 150-way argmax, at the image's size."""
    with torch.no_grad():
        logits = model(to_tensor(resize_short_side(image, short_side))[None])
        logits = torch.nn.functional.interpolate(logits, image.shape[:2], mode="bilinear",
                                                 align_corners=False)
    return (logits.argmax(1) == WINDOW_ROW)[0].numpy()


def test_import_then_segment_a_split(tmp_path, tiny_city):
    released = _released_model(seed=6)
    split = tiny_city.split("indoor-ams-1")
    image = np.asarray(Image.open(f"{split.query_root}/{split.query_names[0]}").convert("RGB"))
    with torch.no_grad():  # a window bias so that about half the pixels are windows
        logits = released(to_tensor(resize_short_side(image, 64))[None])[0]
        others = torch.cat([logits[:WINDOW_ROW], logits[WINDOW_ROW + 1:]]).amax(0)
        released.decoder.conv_last[1].bias[WINDOW_ROW] += (others - logits[WINDOW_ROW]).median()
    encoder, decoder = tmp_path / "encoder_epoch_30.pth", tmp_path / "decoder_epoch_30.pth"
    torch.save(released.encoder.state_dict(), encoder)
    torch.save(released.decoder.state_dict(), decoder)

    out = tmp_path / "seg.pth"
    runner = CliRunner()
    result = runner.invoke(cli, ["segmenter", "import", "--arch", ARCH, "--encoder", str(encoder),
                                 "--decoder", str(decoder), "--out", str(out),
                                 "--short-side", "64"])
    assert result.exit_code == 0, result.output
    loaded = seg.load_segmenter(out)
    assert loaded.info["config"]["encoder_sha256"] and loaded.input_short_side == 64
    state = loaded.model.state_dict()
    for key, value in _plain_state(released).items():
        assert torch.equal(state[key], value), key

    result = runner.invoke(cli, ["segment", "--split", "synth-indoor-ams-1", "--segmenter",
                                 str(out), "--data-root", str(tiny_city.data_root),
                                 "--cache-dir", str(tmp_path / "masks"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    folder = result.output.strip().splitlines()[-1]
    for name in split.query_names[:3]:
        image = np.asarray(Image.open(f"{split.query_root}/{name}").convert("RGB"))
        mask = np.asarray(Image.open(f"{folder}/{name}.png")) == 255
        expected = _reference_mask(released, image, 64)
        assert np.array_equal(mask, expected), name
    first = np.asarray(Image.open(f"{folder}/{split.query_names[0]}.png")) == 255
    assert 0.2 < first.mean() < 0.8


def test_import_errors(tmp_path, csail_files):
    encoder, decoder, _ = csail_files
    runner = CliRunner()
    swapped = runner.invoke(cli, ["segmenter", "import", "--arch", ARCH, "--encoder",
                                  str(decoder), "--decoder", str(decoder), "--out",
                                  str(tmp_path / "x.pth")])
    assert swapped.exit_code == 2 and "given as --encoder" in swapped.output
    assert not (tmp_path / "x.pth").exists()
    state = dict(torch.load(decoder, weights_only=True))
    state["conv_last.1.weight"] = torch.zeros(19, 32, 1, 1)
    torch.save(state, tmp_path / "cityscapes.pth")
    other = runner.invoke(cli, ["segmenter", "import", "--arch", ARCH, "--encoder", str(encoder),
                                "--decoder", str(tmp_path / "cityscapes.pth"), "--out",
                                str(tmp_path / "x.pth")])
    assert other.exit_code == 2 and "head has 19 classes" in other.output
