"""State dicts in the key layouts of released VPR checkpoints, with seeded random values.

The layouts are written down here from the authors' module structure (torchvision's parameter
names under each method's prefixes), independently of the harness's modules, so a test that
loads them checks that the harness builds the same names and shapes as the released files.
"""

from __future__ import annotations

import functools

import numpy as np
import torch


@functools.lru_cache(maxsize=None)
def torchvision_shapes(name: str) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Names, shapes and dtypes of torchvision's ``name`` model (``resnet18``, ``vgg16``, ..)."""
    import torchvision.models

    model = getattr(torchvision.models, name)(weights=None)
    return {key: (tuple(value.shape), value.dtype) for key, value in model.state_dict().items()}


def random_values(shapes, seed: int) -> dict[str, torch.Tensor]:
    """Seeded values of a plausible scale for each ``name -> (shape, dtype)``.

    Convolutions and linear weights He-scaled; norm scales in [0.5, 1.5]; biases and running
    means small; running variances in [0.5, 1.5]; batch counters an integer; GeM's ``p`` near 3.
    """
    rng = np.random.default_rng(seed)
    state = {}
    for name, (shape, dtype) in shapes.items():
        if dtype == torch.int64:
            state[name] = torch.tensor(int(rng.integers(1, 10_000)), dtype=dtype).reshape(shape)
            continue
        if name.endswith("running_var"):
            values = rng.uniform(0.5, 1.5, shape)
        elif name.endswith(".p"):
            values = 3.0 + rng.uniform(-0.5, 0.5, shape)
        elif len(shape) > 1:
            values = rng.standard_normal(shape) * np.sqrt(2.0 / int(np.prod(shape[1:])))
        elif name.endswith("weight"):
            values = rng.uniform(0.5, 1.5, shape)
        else:  # biases, running means
            values = rng.standard_normal(shape) * 0.1
        state[name] = torch.from_numpy(np.asarray(values, dtype=np.float32)).to(dtype)
    return state


def cosplace_shapes(backbone: str, dim: int):
    """CosPlace / EigenPlaces: ``backbone.{i}`` (torchvision children) + ``aggregation``."""
    shapes = {}
    if backbone == "VGG16":
        # features[:-2]: the 13 convolutions of configuration D, up to conv5_3 at index 28
        widths = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
        indices = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
        previous = 3
        for index, width in zip(indices, widths):
            shapes[f"backbone.{index}.weight"] = ((width, previous, 3, 3), torch.float32)
            shapes[f"backbone.{index}.bias"] = ((width,), torch.float32)
            previous = width
        channels = 512
    else:
        renamed = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6"}
        renamed["layer4"] = "7"
        for key, value in torchvision_shapes(backbone.lower()).items():
            head, _, rest = key.partition(".")
            if head in renamed:
                shapes[f"backbone.{renamed[head]}.{rest}"] = value
        channels = shapes["backbone.7.0.conv1.weight"][0][0] * (
            4 if "backbone.7.0.conv3.weight" in shapes else 1
        )
    shapes["aggregation.1.p"] = ((1,), torch.float32)
    shapes["aggregation.3.weight"] = ((dim, channels), torch.float32)
    shapes["aggregation.3.bias"] = ((dim,), torch.float32)
    return shapes


def mixvpr_shapes(
    resnet: str, positions: int, out_channels: int, out_rows: int, channels: int, depth: int = 4
):
    """MixVPR: ``backbone.model.*`` (ResNet without layer4/fc) + ``aggregator.*``."""
    shapes = {
        f"backbone.model.{key}": value
        for key, value in torchvision_shapes(resnet).items()
        if not key.startswith(("layer4.", "fc."))
    }
    for block in range(depth):
        prefix = f"aggregator.mix.{block}.mix."
        shapes[prefix + "0.weight"] = ((positions,), torch.float32)  # LayerNorm
        shapes[prefix + "0.bias"] = ((positions,), torch.float32)
        for linear in (1, 3):
            shapes[prefix + f"{linear}.weight"] = ((positions, positions), torch.float32)
            shapes[prefix + f"{linear}.bias"] = ((positions,), torch.float32)
    shapes["aggregator.channel_proj.weight"] = ((out_channels, channels), torch.float32)
    shapes["aggregator.channel_proj.bias"] = ((out_channels,), torch.float32)
    shapes["aggregator.row_proj.weight"] = ((out_rows, positions), torch.float32)
    shapes["aggregator.row_proj.bias"] = ((out_rows,), torch.float32)
    return shapes
