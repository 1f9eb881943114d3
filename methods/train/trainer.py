"""NetVLAD and SFRS training with per-epoch checkpoints, resume, best-by-validation and DDP.

Layout of a run folder (``config.out_dir``)::

    config.json          the TrainConfig
    cluster.h5           centroid init (when no --init was given)
    init.pt              the initial model (backbone + cluster-initialised NetVLAD, or the
                         complete model given as --init: :mod:`methods.train.initial`)
    checkpoints/gen<g>_epoch<e>.pt   the model after each epoch (harness checkpoint layout)
    best.pt              the best model by validation recall@5 (the last one without validation)
    last.pt              the full state for resuming (model, optimiser, scheduler, SFRS teacher,
                         negative cache, history); ``train()`` resumes from it automatically
    history.json         losses and validation recalls per epoch

Every checkpoint can be given to ``harness eval --method netvlad --weights``.

The loop follows OpenIBL's ``netvlad_img.py`` / ``netvlad_img_sfrs.py``: per epoch, the
training queries are shuffled and cut into rounds of ``cache_size``; before each round all
training images are re-embedded and tuples mined (:mod:`methods.train.mining`); SFRS runs
generations, each restarting from the initial model and taught by the previous
generation's final model (soft labels over the sub-regions of difficult positives).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from harness.errors import HarnessError
from harness.io import write_json_atomic
from methods.base import ImageLoader, PartContext
from methods.checkpoints import load_state_dict_strict, read_checkpoint, save_checkpoint
from methods.netvlad import ModelConfig, NetVLADModel, build_model
from methods.train.config import TrainConfig
from methods.train.distributed import (
    agree,
    all_reduce_mean,
    barrier,
    broadcast_array,
    gather_rows,
    init_distributed,
)
from methods.train.mining import Miner, build_training_set
from methods.train.objective import TrainingForward, batch_loss
from methods.train.registry import register_training
from methods.train.run_state import RunState, read_run_state, save_run_state
from methods.train.tuples import QueryAugment, TupleDataset, collate_tuples
from methods.transforms import ResizeUint8, TrainTransform, normalize_batch

logger = logging.getLogger(__name__)

RECALL_NS = (1, 5, 10)
# Re-exported: the training's data and step live in their own modules.
__all__ = [
    "QueryAugment",
    "RECALL_NS",
    "Trainer",
    "TrainingForward",
    "TupleDataset",
    "read_history",
    "train",
]
class _EvalView:
    """The minimal method interface :func:`methods.extract.encode_rows` needs, for a bare model."""

    name = "training"

    def __init__(self, height: int, width: int):
        self.loader = ImageLoader(ResizeUint8(height, width))

    def image_loader(self, context):
        return self.loader

    def encode(self, model, images, context):
        return model(normalize_batch(images))


# -------------------------------------------------------------------------------- trainer
class Trainer:
    """One training run. ``run()`` trains (resuming from ``last.pt``) and returns ``best.pt``.

    Args:
        config: the run's :class:`TrainConfig`.
        query_augment: optional picklable ``(PIL image, numpy Generator) -> PIL image``
            applied to each training query (the IOVPR layouts plug in here).
    """

    def __init__(self, config: TrainConfig, *, query_augment: QueryAugment | None = None):
        self.config = config
        self.query_augment = query_augment
        self.out_dir = Path(config.out_dir)

    # -- paths ----------------------------------------------------------------------------
    @property
    def last_path(self) -> Path:
        return self.out_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.out_dir / "best.pt"

    @property
    def init_path(self) -> Path:
        return self.out_dir / "init.pt"

    def epoch_path(self, generation: int, epoch: int) -> Path:
        return self.out_dir / "checkpoints" / f"gen{generation}_epoch{epoch}.pt"

    # -- setup ----------------------------------------------------------------------------
    def _model_config(self) -> ModelConfig:
        c = self.config
        return ModelConfig(
            backbone=c.backbone,
            num_clusters=c.num_clusters,
            image_height=c.image_height,
            image_width=c.image_width,
        )

    def _setup(self) -> None:
        from harness.splits import get_split
        from methods.data import default_workers

        c = self.config
        self.env, self.device = init_distributed(c.device)
        self.workers = default_workers() if c.workers is None else c.workers
        self.train_split = get_split(c.train_split, c.data_root)
        self.val_split = get_split(c.val_split, c.data_root) if c.val_split else None
        for split in (self.train_split,) + ((self.val_split,) if self.val_split else ()):
            if not split.query_root or not split.database_root:
                raise HarnessError(
                    f"split {split.name} has no image folders (query_root/database_root)"
                )
        self.training_set = build_training_set(self.train_split, c.pos_radius_m, c.neg_radius_m)
        sfrs = c.mode == "sfrs"
        self.miner = Miner(
            self.training_set,
            neg_num=c.neg_num,
            neg_pool=c.neg_pool,
            pos_num=c.pos_num if sfrs else 0,
            pos_pool=c.pos_pool if sfrs else 0,
        )
        self.view = _EvalView(c.image_height, c.image_width)
        self.transform = TrainTransform(c.image_height, c.image_width, tuple(c.jitter))
        logger.info(
            "training %s on %s: %d of %d queries have a positive within %.0f m; %d database images",
            c.mode,
            self.train_split.name,
            len(self.training_set),
            self.train_split.num_queries,
            c.pos_radius_m,
            self.train_split.num_database,
        )

    def _check_even_regions(self, model: NetVLADModel) -> None:
        if self.config.mode != "sfrs":
            return
        with torch.no_grad():
            probe = torch.zeros(
                1, 3, self.config.image_height, self.config.image_width, device=self.device
            )
            h, w = model.local_features(probe).shape[-2:]
        if h % 2 or w % 2:
            raise HarnessError(
                "SFRS needs an even feature map; "
                f"{self.config.image_height}x{self.config.image_width} images "
                f"give {h}x{w} with backbone {self.config.backbone}: choose another image size"
            )

    def _initial_model(self) -> NetVLADModel:
        """The start of the run (:mod:`methods.train.initial`): clusters or a complete model."""
        from methods.train.initial import initial_model

        model, self.init_provenance = initial_model(
            self.config,
            self._model_config(),
            env=self.env,
            device=self.device,
            workers=self.workers,
            out_dir=self.out_dir,
        )
        return model

    # -- encoding and validation -----------------------------------------------------------
    @property
    def _amp(self) -> bool:
        """bfloat16 autocast: asked for (``amp``) and on a GPU."""
        return bool(self.config.amp and self.device.type == "cuda")

    def _encode_part(self, model: NetVLADModel, split, part: str, description: str) -> torch.Tensor:
        from methods.extract import encode_rows, shard_rows

        names = split.query_names if part == "query" else split.database_names
        root = split.query_root if part == "query" else split.database_root
        context = PartContext(
            part=part,
            names=names,
            image_root=Path(root),
            split_name=split.name,
            device=str(self.device),
            batch_size=self.config.batch_size,
            workers=self.workers,
        )
        rows = shard_rows(len(names), (self.env.rank, self.env.world_size))
        blocks = [
            descriptors
            for _, descriptors in encode_rows(
                self.view,
                model,
                context,
                device=self.device,
                rows=list(rows),
                precision="bf16" if self._amp else "fp32",
                progress=self.config.progress and self.env.is_main,
                description=description,
                to_numpy=False,
            )
        ]
        dim = model.vlad_dim if model.pca_layer is None else model.descriptor_dim
        local = torch.cat(blocks) if blocks else torch.zeros((0, dim), device=self.device)
        return gather_rows(self.env, local, len(names))

    def validate(self, model: NetVLADModel) -> dict:
        """Recall@1/5/10 on the validation split (no-positive queries per the split's policy)."""
        from harness.ground_truth import positives_within_radius

        split = self.val_split
        model.eval()
        queries = self._encode_part(model, split, "query", "val query")
        database = self._encode_part(model, split, "database", "val database")
        positives = positives_within_radius(split.database_utm, split.query_utm, split.radius_m)
        k = min(max(RECALL_NS), database.shape[0])
        top = []
        with torch.no_grad():
            for start in range(0, queries.shape[0], 1024):
                top.append(
                    torch.topk(queries[start : start + 1024] @ database.T, k, dim=1)
                    .indices.cpu()
                    .numpy()
                )
        hits = positives.is_positive(np.concatenate(top))
        counted = (
            positives.has_positive
            if split.no_positive == "exclude"
            else np.ones(len(hits), dtype=bool)
        )
        found = np.cumsum(hits, axis=1) > 0
        denominator = max(1, int(counted.sum()))
        return {
            f"recall@{n}": float(found[counted, min(n, k) - 1].sum() / denominator)
            for n in RECALL_NS
        }

    # -- checkpoints ----------------------------------------------------------------------
    def _model_meta(self, generation: int, epoch: int, recalls: dict | None, best: float) -> dict:
        return {
            "generation": generation,
            "epoch": epoch,
            "recalls": recalls or {},
            "best_recall5": best,
            "train_config": self.config.to_dict(),
        }

    def _save_model(self, path: Path, model: NetVLADModel, meta: dict) -> None:
        save_checkpoint(
            path, state_dict=model.state_dict(), model_config=self._model_config().to_dict(), **meta
        )

    def _save_state(
        self, model, teacher, optimizer, scheduler, state: RunState, generation: int, epoch: int
    ) -> None:
        save_run_state(
            self.last_path,
            self.config,
            self._model_config(),
            model=model,
            teacher=teacher,
            optimizer=optimizer,
            scheduler=scheduler,
            negative_cache=self.miner.negative_cache,
            state=state,
            generation=generation,
            epoch=epoch,
        )

    def _resume(self, model: NetVLADModel) -> RunState:
        state = read_run_state(self.last_path, self.config, model)
        self.miner.negative_cache = state.negative_cache
        logger.info(
            "resuming %s at generation %d, epoch %s",
            self.out_dir,
            state.generation,
            state.next_epoch if state.next_epoch is not None else "start",
        )
        return state

    # -- training -------------------------------------------------------------------------
    def _loss(self, outputs: torch.Tensor, generation: int, teacher_outputs: torch.Tensor | None):
        return batch_loss(self.config, outputs, generation, teacher_outputs)

    def _train_round(
        self, forward, teacher_forward, optimizer, tuples: np.ndarray, generation: int, seed: tuple
    ) -> list:
        from torch.utils.data import DataLoader

        from methods.data import raise_if_error

        c = self.config
        # Each rank takes every world_size-th tuple, padded so all ranks step equally often.
        share = int(np.ceil(len(tuples) / self.env.world_size))
        padded = (
            np.concatenate([tuples, tuples[: share * self.env.world_size - len(tuples)]])
            if len(tuples)
            else tuples
        )
        local = padded[self.env.rank :: self.env.world_size]
        seed = tuple(seed) + (self.env.rank,)  # ranks draw different jitter for their tuples
        dataset = TupleDataset(self.train_split, local, self.transform, seed, self.query_augment)
        loader = DataLoader(
            dataset,
            batch_size=c.tuples_per_batch,
            shuffle=False,
            num_workers=self.workers,
            collate_fn=collate_tuples,
            pin_memory=self.device.type == "cuda",
        )
        use_soft = c.mode == "sfrs" and generation > 0 and c.soft_weight > 0
        easy = 2 + c.neg_num
        records = []
        forward.train()
        from tqdm.auto import tqdm

        for batch in tqdm(
            loader,
            desc=f"gen {generation} train",
            unit="tuple",
            leave=False,
            disable=not (c.progress and self.env.is_main),
        ):
            raise_if_error(batch)
            images = batch.images.to(self.device, non_blocking=True)
            b, s = images.shape[:2]
            flat = normalize_batch(images.view(b * s, *images.shape[2:]))
            # bfloat16: no loss scaling needed (fp16 gradients of the sharp SARE softmax underflow).
            with torch.autocast(
                device_type=self.device.type, dtype=torch.bfloat16, enabled=self._amp
            ):
                outputs = forward(flat)
            outputs = outputs.float().view(b, s, *outputs.shape[1:])
            teacher_outputs = None
            if use_soft:
                with torch.no_grad():
                    difficult = images[:, [0] + list(range(easy, s))]
                    t_out = teacher_forward(
                        normalize_batch(difficult.reshape(-1, *images.shape[2:]))
                    )
                    teacher_outputs = t_out.float().view(b, difficult.shape[1], *t_out.shape[1:])
            hard, soft = self._loss(outputs, generation, teacher_outputs)
            loss = hard + (c.soft_weight * soft if use_soft else 0.0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            records.append((float(loss.detach()), float(hard.detach()), float(soft.detach())))
        return records

    def _round_tuples(
        self, model: NetVLADModel, queries: np.ndarray, generation: int, rng: np.random.Generator
    ) -> np.ndarray:
        """Re-embed the training images, mine tuples for ``queries`` (rank 0 mines; all receive)."""
        model.eval()
        query_features = self._encode_part(model, self.train_split, "query", "mine query")
        database_features = self._encode_part(model, self.train_split, "database", "mine database")
        tuples = None
        if self.env.is_main:
            rerank = None
            if self.config.mode == "sfrs" and generation > 0:
                rerank = self._reranker(query_features, database_features)
            tuples = self.miner.mine(queries, query_features, database_features, rng, rerank=rerank)
        else:
            tuples = np.zeros((0, self.miner.tuple_size), dtype=np.int64)
        if self.env.enabled:
            tuples = broadcast_array(self.env, tuples, self.device)
            cache = broadcast_array(self.env, self.miner.negative_cache, self.device)
            self.miner.negative_cache = cache
        return tuples

    def _reranker(self, query_features: torch.Tensor, database_features: torch.Tensor):
        """``(query_row, database_rows) -> re-ranked distances`` over all training images."""
        from methods.train.rerank import build_graph, reranked_distances

        graph = build_graph(
            torch.cat((query_features, database_features)), k1=self.config.rerank_k1
        )
        offset = query_features.shape[0]

        def rerank(query_row: int, database_rows: np.ndarray) -> np.ndarray:
            first = np.full(len(database_rows), query_row)
            return reranked_distances(
                graph, first, offset + database_rows, self.config.rerank_lambda
            )

        return rerank

    def _new_optimizer(self, model: NetVLADModel):
        c = self.config
        parameters = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(
            parameters, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=c.lr_step_epochs, gamma=c.lr_gamma
        )
        return optimizer, scheduler

    def run(self) -> Path:
        """Train to the end (resuming if ``last.pt`` exists); returns ``best.pt``."""
        c = self.config
        self._setup()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.env.is_main:
            write_json_atomic(self.out_dir / "config.json", c.to_dict())
        sfrs = c.mode == "sfrs"
        if agree(self.env, self.init_path.exists(), self.device):
            initial = read_checkpoint(self.init_path)
            model = build_model(self._model_config())
            load_state_dict_strict(model, initial.state_dict, self.init_path)
        else:
            model = self._initial_model()
            if self.env.is_main:
                meta = {**self._model_meta(-1, -1, None, -1.0), **self.init_provenance}
                self._save_model(self.init_path, model, meta)
            barrier(self.env)
        initial_state = copy.deepcopy(model.state_dict())
        model.base_model.freeze(c.train_layers)
        model.to(self.device)
        self._check_even_regions(model)
        if agree(self.env, self.last_path.exists(), self.device):
            state = self._resume(model)
        else:
            state = RunState()
            if self.val_split is not None:
                recalls = self.validate(model)
                state.history.append({"generation": -1, "epoch": -1, **recalls})
                logger.info("initial model: %s", _format(recalls))
        forward = TrainingForward(model, regions=sfrs).to(self.device)
        if self.env.enabled:
            forward = nn.parallel.DistributedDataParallel(
                forward, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        teacher = None
        if sfrs:
            teacher = build_model(self._model_config()).to(self.device).eval()
            for parameter in teacher.parameters():
                parameter.requires_grad = False
            if state.teacher is not None:
                load_state_dict_strict(teacher, state.teacher, self.last_path, what="SFRS teacher")
        teacher_forward = TrainingForward(teacher, regions=True) if teacher is not None else None

        for generation in range(state.generation, c.num_generations):
            epochs = c.epochs_of(generation)
            optimizer, scheduler = self._new_optimizer(model)
            if state.next_epoch is None:
                if sfrs:
                    # The teacher is the previous generation's final model; the student restarts.
                    teacher.load_state_dict(model.state_dict())
                    model.load_state_dict(initial_state)
                first = epochs.start
            else:
                optimizer.load_state_dict(state.optimizer)
                scheduler.load_state_dict(state.scheduler)
                first = state.next_epoch
            for epoch in range(first, epochs.stop):
                self._run_epoch(
                    model, forward, teacher_forward, optimizer, scheduler, state, generation, epoch
                )
                if self.env.is_main:
                    self._save_state(model, teacher, optimizer, scheduler, state, generation, epoch)
                barrier(self.env)
            state.next_epoch = None
        barrier(self.env)
        return self.best_path

    def _run_epoch(
        self,
        model,
        forward,
        teacher_forward,
        optimizer,
        scheduler,
        state: RunState,
        generation: int,
        epoch: int,
    ) -> None:
        c = self.config
        started = time.perf_counter()
        rng = np.random.default_rng([c.seed, generation, epoch])
        order = rng.permutation(len(self.training_set))
        if c.max_queries_per_epoch:
            order = order[: c.max_queries_per_epoch]
        records = []
        for round_index, start in enumerate(range(0, len(order), c.cache_size)):
            queries = order[start : start + c.cache_size]
            tuples = self._round_tuples(model, queries, generation, rng)
            records += self._train_round(
                forward,
                teacher_forward,
                optimizer,
                tuples,
                generation,
                (c.seed, generation, epoch, round_index),
            )
        scheduler.step()
        losses_mean = np.mean(np.asarray(records), axis=0) if records else np.zeros(3)
        entry = {
            "generation": generation,
            "epoch": epoch,
            "loss": all_reduce_mean(self.env, float(losses_mean[0]), self.device),
            "loss_hard": all_reduce_mean(self.env, float(losses_mean[1]), self.device),
            "loss_soft": all_reduce_mean(self.env, float(losses_mean[2]), self.device),
            "first_loss": float(records[0][0]) if records else None,
            "steps": len(records),
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - started,
        }
        last_epoch = (
            generation == c.num_generations - 1 and epoch == c.epochs_of(generation).stop - 1
        )
        recalls = None
        if self.val_split is not None and (
            (epoch + 1) % c.eval_every == 0 or epoch == c.epochs - 1
        ):
            recalls = self.validate(model)
            entry.update(recalls)
        score = recalls["recall@5"] if recalls else None
        is_best = (score is not None and score > state.best_score) or (
            self.val_split is None and last_epoch
        )
        if is_best and score is not None:
            state.best_score = score
        state.history.append(entry)
        logger.info(
            "generation %d epoch %d: loss %.4f (hard %.4f soft %.4f)%s%s",
            generation,
            epoch,
            entry["loss"],
            entry["loss_hard"],
            entry["loss_soft"],
            f", {_format(recalls)}" if recalls else "",
            " *best*" if is_best else "",
        )
        if self.env.is_main:
            meta = self._model_meta(generation, epoch, recalls, state.best_score)
            if c.keep_epoch_checkpoints:
                self._save_model(self.epoch_path(generation, epoch), model, meta)
            if is_best or not self.best_path.exists():
                self._save_model(self.best_path, model, meta)
            write_json_atomic(self.out_dir / "history.json", state.history)



def _format(recalls: dict | None) -> str:
    return " ".join(f"{k} {v:.3f}" for k, v in (recalls or {}).items())


def train(config: TrainConfig, *, query_augment: QueryAugment | None = None) -> Path:
    """Train (or resume) a NetVLAD/SFRS model; returns the best checkpoint (``best.pt``)."""
    return Trainer(config, query_augment=query_augment).run()


@register_training(
    "sfrs",
    TrainConfig,
    defaults={"mode": "sfrs"},
    description="SFRS (generations with soft region labels)",
)
def _train_sfrs(config: TrainConfig) -> Path:
    return train(config)


@register_training(
    "netvlad", TrainConfig, defaults={"mode": "netvlad"}, description="NetVLAD (triplet / SARE)"
)
def _train_netvlad(config: TrainConfig) -> Path:
    return train(config)


def read_history(out_dir) -> list:
    """The per-epoch history of a run folder."""
    return json.loads((Path(out_dir) / "history.json").read_text())
