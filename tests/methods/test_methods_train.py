"""Training: losses, mining, re-ranking, k-means, training steps, resume, CLI, DDP."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from harness.cli import cli  # noqa: E402
from harness.errors import HarnessError  # noqa: E402
from harness.splits import Split  # noqa: E402
from methods.checkpoints import read_checkpoint  # noqa: E402
from methods.train import losses  # noqa: E402
from methods.train.cluster import kmeans, read_clusters  # noqa: E402
from methods.train.config import TrainConfig  # noqa: E402
from methods.train.mining import Miner, build_training_set, difficult_positive_order  # noqa: E402
from methods.train.rerank import build_graph, reranked_distances  # noqa: E402

torch.set_num_threads(1)  # two threads on a shared 2-core machine run ~4x slower


def _unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


# -------------------------------------------------------------------------------- losses
@pytest.mark.parametrize(
    "negative, expected",
    [
        ([0.0, 1.0], 0.0),  # far negative: no hinge
        ([1.0, 0.0], math.sqrt(0.1)),  # negative equals the anchor: the margin sqrt(0.1)
    ],
)
def test_triplet_loss_hand_cases(negative, expected):
    anchors, positives = _unit([1.0, 0.0]), _unit([1.0, 0.0])
    loss = losses.triplet_loss(anchors, positives, _unit(negative)[None], margin=0.1)
    assert float(loss) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "kind, expected",
    [
        # similarities: positive 1; negatives 0 and 1; temperature 0.5 -> logits 2, 0, 2
        ("sare_joint", -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(2)))),
        ("sare_ind", 0.5 * (math.log(1 + math.exp(-2)) + math.log(2))),
    ],
)
def test_sare_hand_cases(kind, expected):
    anchors, positives = _unit([1.0, 0.0]), _unit([1.0, 0.0])
    negatives = _unit([0.0, 1.0], [1.0, 0.0])[None]
    loss = losses.tuple_loss(kind, anchors, positives, negatives, margin=0.1, temperature=0.5)
    assert float(loss) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("joint", [True, False])
def test_sare_at_half_temperature_is_openibl_euclidean_form(joint):
    generator = torch.Generator().manual_seed(0)
    anchors = F.normalize(torch.randn(3, 8, generator=generator), dim=1)
    positives = F.normalize(torch.randn(3, 8, generator=generator), dim=1)
    negatives = F.normalize(torch.randn(3, 4, 8, generator=generator), dim=2)
    d_pos = ((anchors - positives) ** 2).sum(1, keepdim=True)
    d_neg = ((anchors[:, None] - negatives) ** 2).sum(2)
    if joint:
        reference = (-F.log_softmax(-torch.cat((d_pos, d_neg), 1), 1)[:, 0]).mean()
    else:
        pairs = -torch.stack((d_pos.expand_as(d_neg), d_neg), 2).view(-1, 2)
        reference = (-F.log_softmax(pairs, 1)[:, 0]).mean()
    ours = losses.sare_loss(
        anchors, positives, negatives, joint=joint, temperature=losses.EUCLIDEAN_TEMPERATURE
    )
    assert float(ours) == pytest.approx(float(reference), rel=1e-5)


def test_soft_label_loss_is_cross_entropy():
    student = torch.tensor([[1.0, 0.0, 0.0]])
    teacher = torch.tensor([[0.0, 0.0, 0.0]])
    # uniform target: mean of -log softmax(student / 1)
    expected = -torch.log_softmax(student, 1).mean()
    loss = losses.soft_label_loss(
        student, teacher, student_temperature=1.0, teacher_temperature=0.5
    )
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)


# -------------------------------------------------------------------------------- mining
def _line_split(num_queries=6, num_database=40, spacing_m=5.0):
    database_utm = np.column_stack([np.arange(num_database) * spacing_m, np.zeros(num_database)])
    query_utm = np.column_stack([np.linspace(20, 150, num_queries), np.full(num_queries, 2.0)])
    query_utm[-1] = (5000.0, 0.0)  # no positive: not trained on
    return Split(
        name="line",
        query_names=tuple(f"q{i}.jpg" for i in range(num_queries)),
        database_names=tuple(f"d{i}.jpg" for i in range(num_database)),
        query_utm=query_utm,
        database_utm=database_utm,
    )


def test_training_set_radii():
    split = _line_split()
    training = build_training_set(split, 10.0, 25.0)
    assert training.query_rows.tolist() == [0, 1, 2, 3, 4]
    for position, query in enumerate(training.query_rows):
        distance = np.linalg.norm(split.database_utm - split.query_utm[query], axis=1)
        assert set(training.positives[position]) == set(np.flatnonzero(distance <= 10.0))
        assert set(training.non_negatives[position]) == set(np.flatnonzero(distance <= 25.0))


def test_mined_tuples_respect_radii_and_hardness():
    split = _line_split()
    training = build_training_set(split, 10.0, 25.0)
    generator = torch.Generator().manual_seed(0)
    queries = F.normalize(torch.randn(split.num_queries, 16, generator=generator), dim=1)
    database = F.normalize(torch.randn(split.num_database, 16, generator=generator), dim=1)
    miner = Miner(training, neg_num=3, neg_pool=1000, pos_num=2, pos_pool=4)
    tuples = miner.mine(np.arange(len(training)), queries, database, np.random.default_rng(0))
    assert tuples.shape == (5, 2 + 3 + 2)
    for position, row in enumerate(tuples):
        query = row[0]
        assert query == training.query_rows[position]
        positives = training.positives[position]
        similarity = (database @ queries[query]).numpy()
        assert row[1] == positives[np.argmax(similarity[positives])]  # nearest positive
        candidates = np.setdiff1d(np.arange(split.num_database), training.non_negatives[position])
        hardest = candidates[np.argsort(-similarity[candidates])[:3]]
        assert row[2:5].tolist() == hardest.tolist()  # pool >= candidates: the hardest overall
        assert set(row[5:]) <= set(positives)
    np.testing.assert_array_equal(miner.negative_cache, tuples[:, 2:5])


def test_negative_cache_joins_the_next_pool():
    split = _line_split()
    training = build_training_set(split, 10.0, 25.0)
    generator = torch.Generator().manual_seed(1)
    queries = F.normalize(torch.randn(split.num_queries, 16, generator=generator), dim=1)
    database = F.normalize(torch.randn(split.num_database, 16, generator=generator), dim=1)
    miner = Miner(training, neg_num=2, neg_pool=1000)
    first = miner.mine([0], queries, database, np.random.default_rng(0))
    # A pool of one random negative: the cached (harder) ones still win.
    miner.neg_pool = 1
    second = miner.mine([0], queries, database, np.random.default_rng(5))
    assert second[0, 2:].tolist() == first[0, 2:].tolist()


def test_difficult_positive_order_hand_case():
    # re-ranked order: positions 1, 2, 0, 3 -> gaps -1, -1, +2, 0: moved up 1 and 2, then 3 unmoved.
    assert difficult_positive_order(np.array([0.5, 0.1, 0.3, 0.9]), 3).tolist() == [1, 2, 3]
    assert difficult_positive_order(np.array([0.1, 0.2, 0.3]), 2).tolist() == [0, 1]


def _dense_rerank(features: np.ndarray, k1: int, lambda_value: float) -> np.ndarray:
    """Zhong et al.'s re-ranking on the full matrix (k2 = 1): what the sparse code must equal."""
    squared = np.maximum(2 - 2 * features @ features.T, 0)
    original = squared**2
    original = original / original.max(axis=1, keepdims=True)
    rank = np.argsort(original, axis=1, kind="stable")
    n = len(features)
    V = np.zeros((n, n))
    half = int(np.around(k1 / 2))

    def reciprocal(i, k):
        forward = rank[i, : k + 1]
        return np.array([j for j in forward if i in rank[j, : k + 1]], dtype=np.int64)

    for i in range(n):
        members = reciprocal(i, k1)
        expanded = list(members)
        for candidate in members:
            candidate_set = reciprocal(candidate, half)
            if len(np.intersect1d(candidate_set, members)) > 2 / 3 * len(candidate_set):
                expanded += list(candidate_set)
        expanded = np.unique(expanded)
        weights = np.exp(-original[i, expanded])
        V[i, expanded] = weights / weights.sum()
    overlap = np.minimum(V[:, None, :], V[None, :, :]).sum(axis=2)
    jaccard = 1 - overlap / (2 - overlap)
    return jaccard * (1 - lambda_value) + original * lambda_value


def test_sparse_rerank_equals_dense_definition():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((4, 8))
    points = np.concatenate([c + 0.3 * rng.standard_normal((8, 8)) for c in centers])
    features = points / np.linalg.norm(points, axis=1, keepdims=True)
    dense = _dense_rerank(features, k1=5, lambda_value=0.1)
    graph = build_graph(torch.from_numpy(features).float(), k1=5, block_rows=7)
    first = np.repeat(np.arange(0, 32, 5), 32)
    second = np.tile(np.arange(32), len(np.arange(0, 32, 5)))
    sparse = reranked_distances(graph, first, second, lambda_value=0.1)
    np.testing.assert_allclose(sparse, dense[first, second], rtol=1e-4, atol=1e-5)
    assert np.std(sparse) > 0.05  # not trivially constant


def test_kmeans_finds_separated_clusters():
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = np.concatenate([c + 0.1 * rng.standard_normal((50, 2)) for c in centers])
    found = kmeans(torch.from_numpy(points).float(), 3, seed=1).numpy()
    for center in centers:
        assert np.min(np.linalg.norm(found - center, axis=1)) < 0.1


# ------------------------------------------------------------------------------ training
def _config(tmp_path, tiny_city, **changes):
    values = dict(
        out_dir=str(tmp_path / "run"),
        train_split="synth-ams30k-train",
        val_split="synth-ams30k-val",
        data_root=str(tiny_city.data_root),
        mode="netvlad",
        backbone="small",
        num_clusters=4,
        image_height=32,
        image_width=32,
        epochs=2,
        neg_num=2,
        neg_pool=8,
        pos_num=2,
        pos_pool=3,
        max_queries_per_epoch=3,
        train_layers="full",
        lr=0.01,
        workers=0,
        batch_size=16,
        device="cpu",
        progress=False,
        seed=3,
        jitter=(0.0, 0.0, 0.0, 0.0),
    )
    values.update(changes)
    return TrainConfig(**values)


def test_a_few_training_steps_lower_the_loss(tmp_path, tiny_city):
    from methods.train.trainer import Trainer, TrainingForward, TupleDataset
    from methods.train.tuples import collate_tuples
    from methods.transforms import normalize_batch

    trainer = Trainer(_config(tmp_path, tiny_city, mode="sfrs", max_queries_per_epoch=4))
    trainer._setup()
    model = trainer._initial_model()
    tuples = trainer._round_tuples(model, np.arange(4), 0, np.random.default_rng(0))
    assert tuples.shape == (4, 2 + 2 + 2)
    dataset = TupleDataset(trainer.train_split, tuples, trainer.transform, (0,))
    batch = collate_tuples([dataset[i] for i in range(4)])
    images = normalize_batch(batch.images.flatten(0, 1))
    forward = TrainingForward(model, regions=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    values = []
    for _ in range(8):
        outputs = forward(images).view(4, tuples.shape[1], 9, -1)
        hard, _ = trainer._loss(outputs, 0, None)
        optimizer.zero_grad()
        hard.backward()
        optimizer.step()
        values.append(float(hard.detach()))
    assert values[-1] < 0.85 * values[0], values


def test_query_augment_applies_to_queries_only(tmp_path, tiny_city):
    from PIL import Image

    from methods.train.trainer import TupleDataset
    from methods.transforms import TrainTransform

    split = tiny_city.split("ams30k-train")

    def red(image, rng):
        assert isinstance(rng, np.random.Generator)
        return Image.new("RGB", image.size, (255, 0, 0))

    dataset = TupleDataset(
        split, np.array([[0, 1, 2]]), TrainTransform(16, 16, (0, 0, 0, 0)), (0,), query_augment=red
    )
    _, images, error = dataset[0]
    assert error is None and images.shape == (3, 3, 16, 16)
    assert images[0, 0].eq(255).all() and images[0, 1:].eq(0).all()
    assert not images[1, 1:].eq(0).all()


def test_train_resume_equals_uninterrupted(tmp_path, tiny_city, monkeypatch):
    from methods.train import trainer as trainer_module

    straight = trainer_module.train(_config(tmp_path / "a", tiny_city))
    history = json.loads((straight.parent / "history.json").read_text())
    assert [(h["generation"], h["epoch"]) for h in history] == [(-1, -1), (0, 0), (0, 1)]
    assert all("recall@5" in h for h in history)
    assert (straight.parent / "checkpoints" / "gen0_epoch1.pt").is_file() and (
        straight.parent / "init.pt"
    ).is_file()

    original = trainer_module.Trainer._save_state

    def interrupted(self, *args, **kwargs):
        original(self, *args, **kwargs)
        raise KeyboardInterrupt  # killed right after the first epoch's checkpoint

    monkeypatch.setattr(trainer_module.Trainer, "_save_state", interrupted)
    config = _config(tmp_path / "b", tiny_city)
    with pytest.raises(KeyboardInterrupt):
        trainer_module.train(config)
    monkeypatch.setattr(trainer_module.Trainer, "_save_state", original)
    resumed = trainer_module.train(config)
    final_a = read_checkpoint(straight.parent / "last.pt").state_dict
    final_b = read_checkpoint(resumed.parent / "last.pt").state_dict
    for key, value in final_a.items():
        assert torch.equal(value, final_b[key]), key
    assert (
        json.loads((resumed.parent / "history.json").read_text())[-1]["loss"] == history[-1]["loss"]
    )
    # A finished run returns at once.
    assert trainer_module.train(config) == resumed


def test_resume_with_another_config_is_refused(tmp_path, tiny_city):
    from methods.train.trainer import train

    train(_config(tmp_path, tiny_city, epochs=1, val_split=None))
    with pytest.raises(HarnessError, match="cannot resume.*lr: saved 0.01, now 0.02"):
        train(_config(tmp_path, tiny_city, epochs=1, val_split=None, lr=0.02))


def test_sfrs_generations_use_soft_labels(tmp_path, tiny_city):
    from methods.train.trainer import train

    best = train(
        _config(
            tmp_path,
            tiny_city,
            mode="sfrs",
            generations=2,
            epochs=1,
            first_generation_epochs=1,
            temperatures=(0.07, 0.07),
            rerank_k1=4,
            val_split=None,
        )
    )
    history = json.loads((best.parent / "history.json").read_text())
    assert [(h["generation"], h["epoch"]) for h in history] == [(0, 0), (1, 0)]
    assert history[0]["loss_soft"] == 0.0 and history[1]["loss_soft"] > 0.0
    checkpoint = read_checkpoint(best)
    assert checkpoint.layout == "harness" and checkpoint.meta["generation"] == 1
    assert checkpoint.model_config["backbone"] == "small"


def test_sfrs_rejects_odd_feature_maps(tmp_path, tiny_city):
    from methods.train.trainer import train

    with pytest.raises(HarnessError, match="even feature map"):
        train(
            _config(
                tmp_path,
                tiny_city,
                mode="sfrs",
                image_height=48,
                image_width=32,
                generations=1,
                temperatures=(0.07,),
                val_split=None,
            )
        )


# ----------------------------------------------------------------------------------- CLI
def test_cluster_cli(tmp_path, tiny_city):
    out = tmp_path / "clusters.h5"
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "cluster",
            "--split",
            "synth-ams30k-train",
            "--out",
            str(out),
            "--data-root",
            str(tiny_city.data_root),
            "--backbone",
            "small",
            "--num-clusters",
            "6",
            "--image-height",
            "64",
            "--image-width",
            "64",
            "--num-descriptors",
            "300",
            "--per-image",
            "10",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    centroids, descriptors, attrs = read_clusters(out)
    assert centroids.shape == (6, 128) and descriptors.shape == (300, 128)
    np.testing.assert_allclose(np.linalg.norm(descriptors, axis=1), 1.0, rtol=1e-5)
    assert attrs["backbone"] == "small" and attrs["backbone_seed"] == 43


def test_train_cli_config_file_and_errors(tmp_path, tiny_city):
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "train_split": "synth-ams30k-train",
                "backbone": "small",
                "num_clusters": 4,
                "image_height": 32,
                "image_width": 32,
                "epochs": 1,
                "neg_num": 2,
                "neg_pool": 8,
                "max_queries_per_epoch": 2,
                "workers": 0,
                "device": "cpu",
                "progress": False,
            }
        )
    )
    runner = CliRunner()
    base = ["train", "netvlad", "--config", str(config), "--data-root", str(tiny_city.data_root)]
    result = runner.invoke(cli, base + ["--out-dir", str(tmp_path / "run"), "--loss", "triplet"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["loss"] == "triplet" and saved["mode"] == "netvlad" and saved["epochs"] == 1
    result = runner.invoke(
        cli, base + ["--out-dir", str(tmp_path / "run2"), "--loss", "contrastive"]
    )
    assert result.exit_code == 2 and "must be one of" in result.output
    result = runner.invoke(cli, ["train", "sfrs", "--train-split", "x"])
    assert result.exit_code == 2 and "--out-dir" in result.output
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"learning_rate": 1}))
    result = runner.invoke(
        cli, ["train", "sfrs", "--config", str(bad), "--out-dir", "o", "--train-split", "x"]
    )
    assert result.exit_code == 2 and "unknown option(s) learning_rate" in result.output


def test_training_registry():
    from methods.train.registry import list_trainings, training_config

    assert {"netvlad", "sfrs"} <= set(list_trainings())
    config = training_config("netvlad", {"out_dir": "o", "train_split": "s"})
    assert (
        config.mode == "netvlad"
        and config.loss == "sare_ind"
        and config.temperatures == (0.07, 0.07, 0.06, 0.05)
    )
    with pytest.raises(HarnessError, match="unknown training 'sfr'.*did you mean sfrs"):
        training_config("sfr", {})


# ----------------------------------------------------------------------------------- DDP
def _ddp_worker(rank, world_size, port, config_dict, result_dir):
    import os

    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    from methods.train.trainer import train

    train(TrainConfig.from_dict(config_dict))
    import torch.distributed as dist

    dist.destroy_process_group()
    (result_dir / f"rank{rank}.done").write_text("ok")


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tmp_path, tiny_city):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = _config(tmp_path, tiny_city, epochs=1, max_queries_per_epoch=4)
    mp.start_processes(
        _ddp_worker, args=(2, port, config.to_dict(), tmp_path), nprocs=2, start_method="spawn"
    )
    assert (tmp_path / "rank0.done").is_file() and (tmp_path / "rank1.done").is_file()
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    # 4 tuples over 2 ranks: 2 steps each.
    assert history[-1]["steps"] == 2 and "recall@1" in history[-1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_training_epoch(tmp_path, tiny_city):
    from methods.train.trainer import train

    best = train(
        _config(
            tmp_path,
            tiny_city,
            device="cuda",
            amp=True,
            epochs=1,
            mode="sfrs",
            generations=2,
            temperatures=(0.07, 0.07),
            rerank_k1=4,
        )
    )
    history = json.loads((best.parent / "history.json").read_text())
    assert history[-1]["loss_soft"] > 0 and math.isfinite(history[-1]["loss"])
