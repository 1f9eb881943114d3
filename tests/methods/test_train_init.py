"""``harness train sfrs|iovpr --init FILE``: fine-tuning from a complete NetVLAD/SFRS model.

The files are written here in OpenIBL's two layouts, with seeded random values: the released
hub file (``vgg16_netvlad.pth``: a flat state dict with ``pca_layer.*``) and the training
checkpoint (``{'state_dict': {'module.…'}, 'epoch', 'best_recall5'}``, as OpenIBL's
``save_checkpoint`` writes a DDP model).
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from harness.cli import cli  # noqa: E402
from methods.checkpoints import read_checkpoint  # noqa: E402
from methods.netvlad import ModelConfig, build_model  # noqa: E402
from methods.train.initial import is_cluster_file  # noqa: E402

torch.set_num_threads(1)
CONFIG = ModelConfig(backbone="small", num_clusters=4, image_height=64, image_width=96)
PCA_DIM = 16


def _released_state(seed: int, with_pca: bool) -> dict:
    """Every tensor of the model drawn from a seeded generator (no default initialisation)."""
    generator = torch.Generator().manual_seed(seed)
    state = {
        key: 0.05 * torch.randn(value.shape, generator=generator)
        for key, value in build_model(CONFIG).state_dict().items()
    }
    if with_pca:
        vlad_dim = CONFIG.num_clusters * 128
        state["pca_layer.weight"] = torch.randn(PCA_DIM, vlad_dim, 1, 1, generator=generator)
        state["pca_layer.bias"] = torch.randn(PCA_DIM, generator=generator)
    return state


def _save_hub(path, state):
    torch.save(dict(state), path)
    return path


def _save_training(path, state):
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 5,
         "best_recall5": 0.9},
        path,
    )
    return path


@pytest.fixture(scope="module")
def layouts(tiny_city, tmp_path_factory):
    out = tmp_path_factory.mktemp("init-layouts") / "layouts"
    result = CliRunner().invoke(cli, ["layouts", "build", "--ade", str(tiny_city.ade_dir),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _train(kind, tiny_city, out_dir, init, *extra):
    args = [
        "train", kind, "--init", str(init), "--train-split", "synth-ams30k-train",
        "--data-root", str(tiny_city.data_root), "--out-dir", str(out_dir),
        "--backbone", "small", "--num-clusters", "4", "--image-height", "64",
        "--image-width", "96", "--generations", "1", "--epochs", "1", "--workers", "0",
        "--batch-size", "8", "--neg-pool", "8", "--neg-num", "2", "--pos-num", "2",
        "--pos-pool", "2", "--cache-size", "6", "--max-queries-per-epoch", "3",
        "--train-layers", "full", "--device", "cpu", "--no-progress", *extra,
    ]
    return CliRunner().invoke(cli, args)


def _assert_equal_states(found, expected):
    assert set(found) == set(expected)
    for key, value in expected.items():
        assert torch.equal(found[key], value), key


def test_train_iovpr_from_released_hub_file_starts_at_its_weights(tiny_city, layouts, tmp_path):
    state = _released_state(seed=11, with_pca=True)
    init = _save_hub(tmp_path / "vgg16_netvlad.pth", state)
    out = tmp_path / "run"
    result = _train("iovpr", tiny_city, out, init, "--layouts-dir", str(layouts),
                    "--threshold", "20", "--layout-prob", "1.0", "--lr", "0")
    assert result.exit_code == 0, result.output
    without_pca = {k: v for k, v in state.items() if not k.startswith("pca_layer.")}
    start = read_checkpoint(out / "init.pt")
    _assert_equal_states(start.state_dict, without_pca)
    assert start.meta["init_layout"] == "openibl-hub" and start.meta["init_pca_dropped"] == PCA_DIM
    # The first epoch trained from exactly these weights: with lr 0 its model is unchanged.
    first_epoch = read_checkpoint(out / "checkpoints" / "gen0_epoch0.pt")
    _assert_equal_states(first_epoch.state_dict, without_pca)


def test_train_sfrs_from_openibl_training_checkpoint(tiny_city, tmp_path):
    state = _released_state(seed=12, with_pca=False)
    init = _save_training(tmp_path / "checkpoint4.pth.tar", state)
    out = tmp_path / "run"
    result = _train("sfrs", tiny_city, out, init)
    assert result.exit_code == 0, result.output
    start = read_checkpoint(out / "init.pt")
    _assert_equal_states(start.state_dict, state)
    assert start.meta["init_layout"] == "openibl-training"
    assert start.meta["init_pca_dropped"] is None
    assert not (out / "cluster.h5").exists()  # no k-means when the model is given
    trained = read_checkpoint(out / "checkpoints" / "gen0_epoch0.pt").state_dict
    moved = [k for k in state if not torch.equal(trained[k], state[k])]
    assert moved  # the steps then moved the weights away from the init


def test_init_model_keys_are_checked_strictly(tiny_city, tmp_path):
    state = _released_state(seed=13, with_pca=False)
    state["net_vlad.extra"] = torch.zeros(3)
    del state["net_vlad.centroids"]
    init = _save_hub(tmp_path / "broken.pth", state)
    result = _train("sfrs", tiny_city, tmp_path / "run", init)
    assert result.exit_code == 2
    message = result.output.strip().splitlines()[-1]
    assert message.startswith(f"error: {init}: --init model does not fit the model")
    assert "missing keys: net_vlad.centroids" in message
    assert "unexpected keys: net_vlad.extra" in message
    assert not (tmp_path / "run" / "init.pt").exists()

    shapes = _released_state(seed=13, with_pca=False)
    init = _save_training(tmp_path / "eight.pth.tar", shapes)
    result = _train("sfrs", tiny_city, tmp_path / "run8", init, "--num-clusters", "8")
    assert result.exit_code == 2
    assert "shape mismatches: net_vlad.centroids (4, 128) != (8, 128)" in result.output

    result = _train("sfrs", tiny_city, tmp_path / "run-bw", init, "--backbone-weights",
                    str(init))
    assert result.exit_code == 2 and "give one of them" in result.output


def test_init_kind_is_told_by_content(tmp_path):
    clusters = tmp_path / "clusters.pth"  # an HDF5 file whatever its name
    with h5py.File(clusters, "w") as handle:
        handle["centroids"] = np.zeros((2, 3), dtype=np.float32)
    model = _save_hub(tmp_path / "model.h5", _released_state(seed=1, with_pca=False))
    assert is_cluster_file(clusters) and not is_cluster_file(model)
