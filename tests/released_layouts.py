"""State dicts in the key layouts of the authors' released files, with seeded random values.

The key lists are written out here from the authors' code (facebookresearch/dinov2's ViT as
``torch.hub`` builds it, serizba/salad's ``VPRModel``, gmberton/MegaLoc's ``MegaLoc``,
amaralibey/Bag-of-Queries' ``VPRModel``, gmberton/CosPlace's ``GeoLocalizationNet``,
amaralibey/MixVPR's ``VPRModel``), not taken from the models under test, so that a
renamed module in the harness fails these tests. Sizes are parameters: the tests use a
2-block, 128-wide ViT (2 heads of 64, as DINOv2's head size) under the released key names.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

TINY_VIT = {"dim": 128, "depth": 2, "mlp": 512}


def dinov2_shapes(dim: int, depth: int, mlp: int, *, mask_token: bool, norm: bool = True):
    """facebookresearch/dinov2 ``DinoVisionTransformer`` (patch 14, 518 px) parameter shapes."""
    shapes = {
        "cls_token": (1, 1, dim),
        "pos_embed": (1, 37 * 37 + 1, dim),
        "patch_embed.proj.weight": (dim, 3, 14, 14),
        "patch_embed.proj.bias": (dim,),
    }
    if mask_token:
        shapes["mask_token"] = (1, dim)
    for i in range(depth):
        block = f"blocks.{i}."
        shapes.update(
            {
                block + "norm1.weight": (dim,),
                block + "norm1.bias": (dim,),
                block + "attn.qkv.weight": (3 * dim, dim),
                block + "attn.qkv.bias": (3 * dim,),
                block + "attn.proj.weight": (dim, dim),
                block + "attn.proj.bias": (dim,),
                block + "ls1.gamma": (dim,),
                block + "norm2.weight": (dim,),
                block + "norm2.bias": (dim,),
                block + "mlp.fc1.weight": (mlp, dim),
                block + "mlp.fc1.bias": (mlp,),
                block + "mlp.fc2.weight": (dim, mlp),
                block + "mlp.fc2.bias": (dim,),
                block + "ls2.gamma": (dim,),
            }
        )
    if norm:
        shapes.update({"norm.weight": (dim,), "norm.bias": (dim,)})
    return shapes


def salad_shapes(channels: int, clusters=64, cluster_dim=128, token=256, mlp=512):
    """serizba/salad ``SALAD`` aggregator parameter shapes."""
    return {
        "token_features.0.weight": (mlp, channels),
        "token_features.0.bias": (mlp,),
        "token_features.2.weight": (token, mlp),
        "token_features.2.bias": (token,),
        "cluster_features.0.weight": (mlp, channels, 1, 1),
        "cluster_features.0.bias": (mlp,),
        "cluster_features.3.weight": (cluster_dim, mlp, 1, 1),
        "cluster_features.3.bias": (cluster_dim,),
        "score.0.weight": (mlp, channels, 1, 1),
        "score.0.bias": (mlp,),
        "score.3.weight": (clusters, mlp, 1, 1),
        "score.3.bias": (clusters,),
        "dust_bin": (),
    }


def boq_shapes(in_channels: int, proj: int, queries=64, layers=2, row_dim=32):
    """amaralibey/Bag-of-Queries ``BoQ`` aggregator parameter shapes."""
    shapes = {
        "proj_c.weight": (proj, in_channels, 3, 3),
        "proj_c.bias": (proj,),
        "norm_input.weight": (proj,),
        "norm_input.bias": (proj,),
        "fc.weight": (row_dim, layers * queries),
        "fc.bias": (row_dim,),
    }
    for i in range(layers):
        block = f"boqs.{i}."
        shapes[block + "queries"] = (1, queries, proj)
        for attn in ("encoder.self_attn", "self_attn", "cross_attn"):
            shapes.update(
                {
                    f"{block}{attn}.in_proj_weight": (3 * proj, proj),
                    f"{block}{attn}.in_proj_bias": (3 * proj,),
                    f"{block}{attn}.out_proj.weight": (proj, proj),
                    f"{block}{attn}.out_proj.bias": (proj,),
                }
            )
        shapes.update(
            {
                block + "encoder.linear1.weight": (4 * proj, proj),
                block + "encoder.linear1.bias": (4 * proj,),
                block + "encoder.linear2.weight": (proj, 4 * proj),
                block + "encoder.linear2.bias": (proj,),
            }
        )
        for norm in ("encoder.norm1", "encoder.norm2", "norm_q", "norm_out"):
            shapes.update({f"{block}{norm}.weight": (proj,), f"{block}{norm}.bias": (proj,)})
    return shapes


def resnet50_layer3_shapes():
    """torchvision ResNet-50 up to layer3 as BoQ's ``net`` Sequential: ``{0,1,4,5,6}.*``.

    Taken from torchvision's own ``resnet50`` (the authors' source of the backbone), renamed
    the way ``nn.Sequential(conv1, bn1, relu, maxpool, layer1, layer2, layer3)`` names them.
    """
    from torchvision.models import resnet50

    with torch.device("meta"):
        reference = resnet50(weights=None).state_dict()
    index = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6"}
    shapes = {}
    for key, tensor in reference.items():
        head, _, rest = key.partition(".")
        if head in index:
            shapes[f"{index[head]}.{rest}"] = (tuple(tensor.shape), tensor.dtype)
    return shapes


def random_state(shapes, prefix: str, seed: int) -> dict:
    """Seeded values: weights ~ N(0, 1/fan_in), norm scales ~ 1, LayerScale ~ 0.1, BN stats."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, spec in sorted(shapes.items()):
        # A spec is a shape, or (shape, dtype) for torchvision's integer BatchNorm counters.
        has_dtype = bool(spec) and isinstance(spec[0], tuple)
        shape, dtype = spec if has_dtype else (spec, torch.float32)
        name = key.rsplit(".", 1)[-1]
        if dtype == torch.int64:
            value = torch.tensor(int(rng.integers(1, 10_000)), dtype=torch.int64)
        elif name == "running_var":
            value = torch.from_numpy(rng.uniform(0.5, 2.0, shape).astype(np.float32))
        elif name == "running_mean" or name.endswith("bias") or key.endswith("dust_bin"):
            value = torch.tensor(0.1 * rng.standard_normal(shape), dtype=torch.float32)
        elif name == "gamma":
            value = torch.from_numpy((0.1 + 0.02 * rng.standard_normal(shape)).astype(np.float32))
        elif name == "weight" and len(shape) == 1:  # LayerNorm / BatchNorm scales
            value = torch.from_numpy((1 + 0.1 * rng.standard_normal(shape)).astype(np.float32))
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            scale = 0.02 if name in ("cls_token", "pos_embed", "mask_token", "queries") else 1.0
            values = rng.standard_normal(shape) * scale / np.sqrt(max(fan_in, 1))
            value = torch.from_numpy(values.astype(np.float32))
        state[prefix + key] = value
    return state


def salad_state(seed: int = 0, **vit) -> dict:
    """``dino_salad.ckpt`` layout: ``backbone.model.*`` (hub DINOv2) + ``aggregator.*``."""
    vit = {**TINY_VIT, **vit}
    state = random_state(dinov2_shapes(**vit, mask_token=True), "backbone.model.", seed)
    state.update(random_state(salad_shapes(vit["dim"]), "aggregator.", seed + 1))
    return state


def megaloc_state(seed: int = 0, *, out_dim=64, clusters=8, cluster_dim=16, token=16):
    """``model.safetensors`` layout: MegaLoc's own ViT (no ``mask_token``) at ``backbone.*``."""
    state = random_state(dinov2_shapes(**TINY_VIT, mask_token=False), "backbone.", seed)
    agg = salad_shapes(TINY_VIT["dim"], clusters, cluster_dim, token)
    state.update(random_state(agg, "aggregator.agg.", seed + 1))
    linear = {"weight": (out_dim, clusters * cluster_dim + token), "bias": (out_dim,)}
    state.update(random_state(linear, "aggregator.linear.", seed + 2))
    return state


def megaloc_old_layout(state: dict) -> dict:
    """The same weights as the older ``megaloc.torch``: hub DINOv2 at ``backbone.model.*``."""
    old = {
        ("backbone.model." + key[len("backbone.") :] if key.startswith("backbone.") else key): value
        for key, value in state.items()
    }
    old["backbone.model.mask_token"] = torch.zeros(1, TINY_VIT["dim"])
    return old


def boq_resnet_state(seed: int = 0, proj: int = 128, row_dim: int = 4) -> dict:
    """``resnet50_16384.pth`` layout (with a smaller aggregator by default)."""
    state = random_state(resnet50_layer3_shapes(), "backbone.net.", seed)
    state.update(random_state(boq_shapes(1024, proj, row_dim=row_dim), "aggregator.", seed + 1))
    return state


def boq_dino_state(seed: int = 0, proj: int = 64, row_dim: int = 4) -> dict:
    """``dinov2_12288.pth`` layout: hub DINOv2 with its unused final norm, + aggregator."""
    state = random_state(dinov2_shapes(**TINY_VIT, mask_token=True), "backbone.dino.", seed)
    state.update(
        random_state(boq_shapes(TINY_VIT["dim"], proj, row_dim=row_dim), "aggregator.", seed + 1)
    )
    return state


@functools.cache
def torchvision_shapes(name: str) -> dict:
    """``key -> (shape, dtype)`` of torchvision's ``name`` (``resnet18``, ..), via meta tensors."""
    import torchvision.models

    with torch.device("meta"):
        reference = getattr(torchvision.models, name)(weights=None).state_dict()
    return {key: (tuple(tensor.shape), tensor.dtype) for key, tensor in reference.items()}


def cosplace_shapes(backbone: str, dim: int) -> dict:
    """CosPlace / EigenPlaces ``GeoLocalizationNet``: ``backbone.{i}`` + ``aggregation``.

    ``backbone`` is ``nn.Sequential(*list(resnet.children())[:-2])`` (0 conv1, 1 bn1, 4-7
    layer1-4) or VGG16 ``features[:-2]`` (13 convolutions up to conv5_3 at index 28);
    ``aggregation`` is ``Sequential(L2Norm, GeM, Flatten, Linear, L2Norm)``.
    """
    shapes = {}
    if backbone == "VGG16":
        widths = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
        indices = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
        previous = 3
        for index, width in zip(indices, widths, strict=True):
            shapes[f"backbone.{index}.weight"] = (width, previous, 3, 3)
            shapes[f"backbone.{index}.bias"] = (width,)
            previous = width
        channels = 512
    else:
        index = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6"}
        index["layer4"] = "7"
        for key, spec in torchvision_shapes(backbone.lower()).items():
            head, _, rest = key.partition(".")
            if head in index:
                shapes[f"backbone.{index[head]}.{rest}"] = spec
        channels = 512 if backbone == "ResNet18" else 2048
    shapes["aggregation.1.p"] = (1,)
    shapes["aggregation.3.weight"] = (dim, channels)
    shapes["aggregation.3.bias"] = (dim,)
    return shapes


def cosplace_state(backbone: str, dim: int, seed: int = 0) -> dict:
    """``{backbone}_{dim}_cosplace.pth`` layout with seeded values (GeM's p near 3)."""
    state = random_state(cosplace_shapes(backbone, dim), "", seed)
    state["aggregation.1.p"] = torch.tensor([3.0 + 0.5 * np.random.default_rng(seed).random()])
    return state


def mixvpr_shapes(resnet: str, positions: int, out_channels: int, out_rows: int,
                  channels: int, depth: int = 4) -> dict:
    """MixVPR ``VPRModel``: ``backbone.model`` (torchvision ResNet, layer4/avgpool/fc set to
    None) + ``aggregator`` (``mix.{i}.mix`` = LayerNorm, Linear, ReLU, Linear; projections)."""
    shapes = {
        f"backbone.model.{key}": spec
        for key, spec in torchvision_shapes(resnet).items()
        if not key.startswith(("layer4.", "fc."))
    }
    for block in range(depth):
        prefix = f"aggregator.mix.{block}.mix."
        shapes[prefix + "0.weight"] = (positions,)  # LayerNorm
        shapes[prefix + "0.bias"] = (positions,)
        for linear in (1, 3):
            shapes[prefix + f"{linear}.weight"] = (positions, positions)
            shapes[prefix + f"{linear}.bias"] = (positions,)
    shapes["aggregator.channel_proj.weight"] = (out_channels, channels)
    shapes["aggregator.channel_proj.bias"] = (out_channels,)
    shapes["aggregator.row_proj.weight"] = (out_rows, positions)
    shapes["aggregator.row_proj.bias"] = (out_rows,)
    return shapes


def mixvpr_state(resnet: str, positions: int, out_channels: int, out_rows: int,
                 channels: int, seed: int = 0) -> dict:
    """``resnet50_MixVPR_{dim}_channels({c})_rows({r}).ckpt`` layout with seeded values."""
    shapes = mixvpr_shapes(resnet, positions, out_channels, out_rows, channels)
    return random_state(shapes, "", seed)


def meta_state(shapes) -> dict:
    """Shape-only tensors (meta device) of a layout, for tests of shape inference."""
    state = {}
    for key, spec in shapes.items():
        has_dtype = bool(spec) and isinstance(spec[0], tuple)
        shape, dtype = spec if has_dtype else (spec, torch.float32)
        state[key] = torch.empty(shape, dtype=dtype, device="meta")
    return state
