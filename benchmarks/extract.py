"""Extraction throughput of VGG16-NetVLAD (+ PCA 4096) at 480x640: CPU and GPU side by side.

``--compare-openibl`` (CPU): OpenIBL's own extraction loop, written as OpenIBL runs it (a
plain ``DataLoader`` over PIL images with ``Resize((480, 640))``, ``ToTensor``, ``Normalize``
in its workers, the model in eval mode under ``torch.no_grad``, contiguous NCHW fp32), against
``methods.extract.extract`` (uint8 decoding and resizing in worker processes, channels-last,
``inference_mode``, fp32 and bf16 autocast), the same images, model and threads, interleaved
``--repeats`` times; prints the median images/s and the ratio to OpenIBL's loop.

Two measurements per device, printed in one table:

* **model**: random ``uint8`` batches already on the device -> normalise -> descriptors
  (what the network alone sustains);
* **end to end**: ``methods.extract.extract`` on a generated split of 640x480 JPEG files
  (decoding and resizing in data-loader workers, transfer, model, writing the feature file).

On the GPU both run in fp32 and with mixed precision (bf16 autocast, channels-last, cuDNN
autotuning: what ``harness extract`` uses on CUDA). Weights are random (seeded): speed does
not depend on them. The issue's target: >= 400 images/s on one H100 with mixed precision.

Usage::

    python benchmarks/extract.py                       # CPU (2 threads), GPU if present
    python benchmarks/extract.py --gpu-images 2048 --workers 12
    python benchmarks/extract.py --json OUT.json       # also write the figures
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build(device, pca: bool = True):
    import torch

    from methods.netvlad import ModelConfig, build_model

    model = build_model(
        ModelConfig(backbone="vgg16", num_clusters=64, pca_dim=4096 if pca else None), seed=0
    )
    model = model.to(device).eval()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        model = model.to(memory_format=torch.channels_last)
    return model


def time_model(
    model, device, *, batch: int, batches: int, amp: bool, height: int = 480, width: int = 640
) -> dict:
    """images/s of the network on random uint8 batches resident on the device."""
    import torch

    from methods.transforms import normalize_batch

    generator = torch.Generator(device="cpu").manual_seed(0)
    images = torch.randint(
        0, 256, (batch, 3, height, width), dtype=torch.uint8, generator=generator
    ).to(device)
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format

    def step():
        from methods.precision import precision_context

        # the extraction's own precision: fp32 is strict (no TF32) on GPUs too
        with torch.inference_mode(), precision_context(device, "bf16" if amp else "fp32"):
            return model(normalize_batch(images).contiguous(memory_format=memory_format))

    step()  # warm-up (cuDNN autotuning, allocator)
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(batches):
        out = step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    assert out.shape == (batch, 4096)
    return {
        "images": batch * batches,
        "seconds": seconds,
        "images_per_s": batch * batches / seconds,
    }


def make_images(folder: Path, count: int, distinct: int = 64) -> list[str]:
    """``count`` 640x480 JPEGs (``distinct`` different contents, hard-linked beyond that)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    names = []
    for i in range(count):
        name = f"img{i:06d}.jpg"
        if i < distinct:
            # Smooth noise compresses like a photo (random pixels would be unrealistically large).
            small = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
            Image.fromarray(small).resize((640, 480), Image.Resampling.BICUBIC).save(
                folder / name, quality=90
            )
        else:
            os.link(folder / f"img{i % distinct:06d}.jpg", folder / name)
        names.append(name)
    return names


def time_openibl_loop(model, folder: Path, names: list[str], *, batch: int, workers: int) -> dict:
    """images/s of OpenIBL's extraction loop (its test transform, DataLoader and eval loop),
    model already built; data-loader start-up is inside the timing, as in ``extract``."""
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    from methods.transforms import MEAN, STD

    transform = transforms.Compose([transforms.Resize((480, 640)), transforms.ToTensor(),
                                    transforms.Normalize(mean=MEAN, std=STD)])

    class Preprocessor(Dataset):  # OpenIBL's: open, convert to RGB, transform
        def __len__(self):
            return len(names)

        def __getitem__(self, index):
            with Image.open(folder / names[index]) as image:
                return transform(image.convert("RGB")), names[index]

    loader = DataLoader(Preprocessor(), batch_size=batch, num_workers=workers, shuffle=False,
                        pin_memory=False)
    model.eval()
    started = time.perf_counter()
    count = 0
    with torch.no_grad():
        for images, _ in loader:
            outputs = model(images).data.cpu()
            count += outputs.shape[0]
    seconds = time.perf_counter() - started
    assert count == len(names) and outputs.shape[1] == 4096
    return {"images": count, "seconds": seconds, "images_per_s": count / seconds}


def compare_openibl(folder: Path, names: list[str], *, batch: int, workers: int,
                    repeats: int, precisions: tuple[str, ...]) -> list[dict]:
    """OpenIBL's loop and ``extract`` at each precision, interleaved ``repeats`` times."""
    import statistics

    import torch

    cpu = torch.device("cpu")
    model = build(cpu)
    runs: dict[str, list[float]] = {}
    for _ in range(repeats):
        label = "OpenIBL loop fp32"
        runs.setdefault(label, []).append(
            time_openibl_loop(model, folder, names, batch=batch, workers=workers)["images_per_s"])
        for precision in precisions:
            result = time_end_to_end(cpu, folder, names, batch=batch, workers=workers,
                                     amp=False, precision=precision)
            runs.setdefault(f"harness extract {precision}", []).append(result["images_per_s"])
    baseline = statistics.median(runs["OpenIBL loop fp32"])
    rows = []
    for label, values in runs.items():
        median = statistics.median(values)
        rows.append({"label": label, "runs": values, "median_images_per_s": median,
                     "x_openibl": median / baseline})
    return rows


def time_end_to_end(
    device, folder: Path, names: list[str], *, batch: int, workers: int, amp: bool,
    precision: str | None = None,
) -> dict:
    """images/s of ``extract()`` (workers decode and resize JPEGs, model, feature file).

    The model is built and warmed up (weights read, cuDNN autotuned) on a first small split,
    outside the timing; worker start-up and file writing are inside it.
    """
    import torch

    from harness.splits import Split
    from methods.checkpoints import save_checkpoint
    from methods.extract import ExtractOptions, build_for_device, extract
    from methods.netvlad import ModelConfig, build_model
    from methods.registry import get_method

    weights = folder / "weights.pt"
    if not weights.exists():
        config = ModelConfig(backbone="vgg16", num_clusters=64, pca_dim=4096)
        state = build_model(config, seed=0).state_dict()
        save_checkpoint(weights, state_dict=state, model_config=config.to_dict())
    method = get_method("netvlad", {}, weights=weights)
    model = build_for_device(method, device)
    options = ExtractOptions(
        device=str(device),
        batch_size=batch,
        workers=workers,
        progress=False,
        overwrite=True,
        dtype="float16",
        precision=precision or ("bf16" if amp else "fp32"),
    )

    def split_of(selected: list[str], name: str) -> Split:
        utm = np.zeros((len(selected), 2))
        return Split(
            name=name,
            query_names=tuple(selected[:1]),
            database_names=tuple(selected),
            query_utm=utm[:1],
            database_utm=utm,
            query_root=str(folder),
            database_root=str(folder),
        )

    label = options.precision
    warm_out = folder / f"warm-{device.type}-{label}.h5"
    out = folder / f"features-{device.type}-{label}.h5"
    warm = names[: min(len(names), 2 * batch)]
    extract(
        method,
        split=split_of(warm, "warm"),
        out=warm_out,
        parts=("database",),
        options=options,
        model=model,
    )
    warm_out.unlink()
    started = time.perf_counter()
    extract(
        method,
        split=split_of(names, "bench"),
        out=out,
        parts=("database",),
        options=options,
        model=model,
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    out.unlink()
    return {"images": len(names), "seconds": seconds, "images_per_s": len(names) / seconds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads", type=int, default=2, help="CPU threads (default 2: a shared machine)"
    )
    parser.add_argument("--cpu-batch", type=int, default=2)
    parser.add_argument("--cpu-batches", type=int, default=2)
    parser.add_argument(
        "--cpu-images", type=int, default=4, help="images for the CPU end-to-end run"
    )
    parser.add_argument("--gpu-batch", type=int, default=64)
    parser.add_argument(
        "--gpu-images", type=int, default=2048, help="images for the GPU end-to-end run"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="data-loader workers (default: cores - 1)"
    )
    parser.add_argument(
        "--no-cpu", action="store_true", help="skip the CPU rows (slow: seconds per image)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    parser.add_argument("--compare-openibl", action="store_true",
                        help="CPU only: OpenIBL's extraction loop vs extract() (fp32, bf16)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved runs (--compare-openibl)")
    parser.add_argument("--precisions", default="fp32,bf16",
                        help="extract() precisions to compare (--compare-openibl)")
    args = parser.parse_args(argv)
    if args.compare_openibl:
        return _compare_main(args)

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    from methods.data import default_workers

    torch.set_num_threads(args.threads)
    workers = default_workers() if args.workers is None else args.workers
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        folder = Path(tmp)
        count = max(args.cpu_images, args.gpu_images if torch.cuda.is_available() else 0)
        names = make_images(folder, count)
        if not args.no_cpu:
            cpu = torch.device("cpu")
            model = build(cpu)
            result = time_model(
                model, cpu, batch=args.cpu_batch, batches=args.cpu_batches, amp=False
            )
            rows.append(
                {
                    "device": "cpu",
                    "precision": "fp32",
                    "kind": "model",
                    "batch": args.cpu_batch,
                    **result,
                }
            )
            del model
            result = time_end_to_end(
                cpu,
                folder,
                names[: args.cpu_images],
                batch=args.cpu_batch,
                workers=min(workers, 1),
                amp=False,
            )
            rows.append(
                {
                    "device": "cpu",
                    "precision": "fp32",
                    "kind": "end to end",
                    "batch": args.cpu_batch,
                    **result,
                }
            )
        if torch.cuda.is_available():
            gpu = torch.device("cuda")
            name = torch.cuda.get_device_name(gpu)
            model = build(gpu)
            for amp in (False, True):
                batches = max(2, args.gpu_images // args.gpu_batch // (4 if not amp else 1))
                result = time_model(model, gpu, batch=args.gpu_batch, batches=batches, amp=amp)
                rows.append(
                    {
                        "device": name,
                        "precision": "amp bf16" if amp else "fp32",
                        "kind": "model",
                        "batch": args.gpu_batch,
                        **result,
                    }
                )
            del model
            torch.cuda.empty_cache()
            for amp in (True,):
                result = time_end_to_end(
                    gpu,
                    folder,
                    names[: args.gpu_images],
                    batch=args.gpu_batch,
                    workers=workers,
                    amp=amp,
                )
                rows.append(
                    {
                        "device": name,
                        "precision": "amp bf16" if amp else "fp32",
                        "kind": "end to end",
                        "batch": args.gpu_batch,
                        "workers": workers,
                        **result,
                    }
                )
        else:
            print("no CUDA device: GPU rows skipped")
    baseline = next(
        (r["images_per_s"] for r in rows if r["device"] == "cpu" and r["kind"] == "model"), None
    )
    print(f"\nVGG16-NetVLAD-PCA4096 at 480x640, {args.threads} CPU threads, {workers} workers")
    print(
        f"{'device':28s} {'precision':10s} {'kind':11s} {'batch':>5s} {'images':>7s} "
        f"{'images/s':>10s} {'x CPU':>8s}"
    )
    for row in rows:
        ratio = f"{row['images_per_s'] / baseline:8.1f}" if baseline else "       -"
        print(
            f"{row['device'][:28]:28s} {row['precision']:10s} {row['kind']:11s} {row['batch']:5d} "
            f"{row['images']:7d} {row['images_per_s']:10.2f} {ratio}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def _compare_main(args) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    from harness.hardware import cpu_model

    torch.set_num_threads(args.threads)
    workers = 1 if args.workers is None else args.workers
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        folder = Path(tmp)
        names = make_images(folder, args.cpu_images)
        rows = compare_openibl(folder, names, batch=args.cpu_batch, workers=workers,
                               repeats=args.repeats,
                               precisions=tuple(p for p in args.precisions.split(",") if p))
    print(f"\nVGG16-NetVLAD-PCA4096 at 480x640 on {cpu_model()}, {args.threads} threads, "
          f"{workers} workers, batch {args.cpu_batch}, {args.cpu_images} images, "
          f"{args.repeats} interleaved runs (median)")
    print(f"{'pipeline':24s} {'images/s':>9s} {'x OpenIBL':>10s}  runs")
    for row in rows:
        runs = " ".join(f"{v:.3f}" for v in row["runs"])
        print(f"{row['label']:24s} {row['median_images_per_s']:9.3f} "
              f"{row['x_openibl']:10.2f}  {runs}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
