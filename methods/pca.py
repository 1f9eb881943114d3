"""PCA-whitening of NetVLAD descriptors in OpenIBL's layout (``pca_params_<ckpt>.h5``).

The file holds ``U`` ``(D, k)`` (principal directions, columns by decreasing eigenvalue),
``lams`` ``(k,)`` (eigenvalues), ``mu`` ``(D, 1)`` (mean) and ``Utmu`` ``(k, 1)`` (``U.T @ mu``).
At inference the lineage whitens ``U`` by ``1/sqrt(lams)``, recomputes ``Utmu`` and applies
``y = normalize(U.T @ x - U.T @ mu)``, as a 1x1 convolution (weight ``U.T``, bias ``-Utmu``).

Fitting follows Relja Arandjelovic's ``relja_PCA.m`` as OpenIBL does: on at most 10,000
descriptors, with the dual (Gram-matrix) form when there are fewer points than dimensions,
eigenvalues floored at 1e-9; ``torch.linalg.eigh`` replaces the removed ``torch.symeig``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.errors import HarnessError
from harness.io import atomic_path

logger = logging.getLogger(__name__)

MAX_PCA_DESCRIPTORS = 10_000
DEFAULT_PCA_DIM = 4096
_EIGENVALUE_FLOOR = 1e-9


@dataclass(frozen=True, eq=False)
class PCAParams:
    """PCA parameters as OpenIBL stores them (float32)."""

    U: np.ndarray
    lams: np.ndarray
    mu: np.ndarray
    Utmu: np.ndarray

    def __post_init__(self):
        dim, k = self.U.shape
        assert self.lams.shape == (k,), f"lams shape {self.lams.shape} != ({k},)"
        assert self.mu.shape == (dim, 1), f"mu shape {self.mu.shape} != ({dim}, 1)"
        assert self.Utmu.shape == (k, 1), f"Utmu shape {self.Utmu.shape} != ({k}, 1)"

    @property
    def input_dim(self) -> int:
        return int(self.U.shape[0])

    @property
    def num_components(self) -> int:
        return int(self.U.shape[1])


def fit_pca(
    descriptors, num_components: int = DEFAULT_PCA_DIM, *, dtype: str = "float64", device=None
) -> PCAParams:
    """Fit PCA on ``descriptors`` ``(n, D)`` (numpy or torch), keeping ``num_components``.

    Computed in ``dtype`` (float64 by default: whitening divides by the square roots of
    small eigenvalues, where float32 loses digits) and stored as float32 like OpenIBL.
    """
    import torch

    data = torch.as_tensor(
        np.asarray(descriptors) if not isinstance(descriptors, torch.Tensor) else descriptors
    )
    assert data.ndim == 2, f"descriptors must be (n, D), got {tuple(data.shape)}"
    num_points, num_dims = data.shape
    if num_points < 2:
        raise HarnessError(f"PCA needs at least 2 descriptors, got {num_points}")
    rank_limit = min(num_dims, num_points - 1)
    if num_components > rank_limit:
        raise HarnessError(
            f"cannot keep {num_components} PCA components from {num_points} descriptors of "
            f"dimension {num_dims} (at most {rank_limit}: use more training images or a smaller "
            "dimension)"
        )
    torch_dtype = {"float64": torch.float64, "float32": torch.float32}[dtype]
    x = data.to(device=device or "cpu", dtype=torch_dtype).t()  # (D, n)
    mu = x.mean(dim=1, keepdim=True)
    x = x - mu
    dual = num_dims > num_points
    gram = (x.t() @ x if dual else x @ x.t()) / (num_points - 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)  # ascending
    order = torch.argsort(eigenvalues, descending=True)[:num_components]
    lams = eigenvalues[order].clamp_min(_EIGENVALUE_FLOOR)
    U = eigenvectors[:, order]
    if dual:
        # Map Gram-matrix eigenvectors to unit-norm directions in descriptor space.
        U = x @ (U / torch.sqrt(lams).unsqueeze(0)) / np.sqrt(num_points - 1)
    Utmu = U.t() @ mu
    as_np = lambda t: t.detach().cpu().numpy().astype(np.float32)  # noqa: E731
    return PCAParams(U=as_np(U), lams=as_np(lams), mu=as_np(mu), Utmu=as_np(Utmu))


def save_pca(path: str | os.PathLike, params: PCAParams, attrs: dict | None = None) -> Path:
    """Write ``params`` in OpenIBL's h5 layout (datasets ``U``, ``lams``, ``mu``, ``Utmu``)."""
    import h5py

    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as handle:
            for name in ("U", "lams", "mu", "Utmu"):
                handle.create_dataset(name, data=getattr(params, name))
            for key, value in (attrs or {}).items():
                handle.attrs[key] = value
    return path


#: NetVLAD's 32768 x 4096 is the largest PCA in use (134M values); twice that is refused.
MAX_PCA_VALUES = 1 << 28


def load_pca(path: str | os.PathLike) -> PCAParams:
    """Read an OpenIBL ``pca_params_*.h5``; a malformed file is a HarnessError naming it."""
    import h5py

    from harness.hdf5_policy import check_hdf5_contents
    from harness.io import require_regular_file

    path = require_regular_file(path, "PCA parameter file")
    try:
        with h5py.File(path, "r") as handle:
            check_hdf5_contents(handle, path)  # its own bytes, sane chunks, no bombs
            missing = [n for n in ("U", "lams", "mu") if n not in handle]
            if missing:
                raise HarnessError(
                    f"PCA file lacks dataset(s) {', '.join(missing)} (expected U, lams, mu, Utmu)",
                    path,
                )
            shapes = {n: tuple(handle[n].shape or ()) for n in ("U", "lams", "mu")}
            size = 1
            for extent in shapes["U"]:
                size *= int(extent)
            if len(shapes["U"]) != 2 or size > MAX_PCA_VALUES:
                # Checked from the declared shape, before a value is read.
                raise HarnessError(
                    f"PCA matrix U has shape {shapes['U']} (2-D, at most {MAX_PCA_VALUES} "
                    "values)", path)
            arrays = {n: np.asarray(handle[n][()]) for n in ("U", "lams", "mu")}
    except HarnessError:
        raise
    except OSError as exc:
        raise HarnessError(f"not a readable HDF5 file ({exc})", path) from None
    U, lams, mu = arrays["U"], arrays["lams"].reshape(-1), arrays["mu"]
    if U.ndim != 2 or lams.shape[0] != U.shape[1] or mu.size != U.shape[0]:
        raise HarnessError(
            f"inconsistent PCA shapes: U {U.shape}, lams {arrays['lams'].shape}, mu {mu.shape}",
            path,
        )
    if not (np.all(np.isfinite(U)) and np.all(np.isfinite(lams)) and np.all(np.isfinite(mu))):
        raise HarnessError("PCA parameters hold NaN or Inf", path)
    U = U.astype(np.float32)
    mu = mu.reshape(-1, 1).astype(np.float32)
    return PCAParams(U=U, lams=lams.astype(np.float32), mu=mu, Utmu=(U.T @ mu).astype(np.float32))


def pca_conv_parameters(params: PCAParams, num_components: int | None = None, whiten: bool = True):
    """Weight ``(k, D, 1, 1)`` and bias ``(k,)`` tensors of the lineage's PCA 1x1 conv."""
    import torch

    k = params.num_components if num_components is None else int(num_components)
    if not 1 <= k <= params.num_components:
        raise HarnessError(
            f"PCA dimension {k} is not within 1..{params.num_components} components of the file"
        )
    U = params.U[:, :k].astype(np.float64)
    if whiten:
        U = U @ np.diag(1.0 / np.sqrt(params.lams[:k].astype(np.float64)))
    Utmu = U.T @ params.mu.astype(np.float64)
    weight = torch.from_numpy(U.T.astype(np.float32)).reshape(k, -1, 1, 1)
    bias = torch.from_numpy((-Utmu).reshape(-1).astype(np.float32))
    return weight, bias


def default_pca_path(weights: str | os.PathLike) -> Path:
    """OpenIBL's name beside the checkpoint: ``pca_params_<checkpoint stem>.h5``."""
    weights = Path(weights)
    stem = weights.name
    for suffix in (".pth.tar", ".pth", ".pt", ".tar", ".ckpt"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return weights.with_name(f"pca_params_{stem}.h5")


def fit_method_pca(
    method,
    split,
    out: str | os.PathLike | None = None,
    *,
    num_components: int = DEFAULT_PCA_DIM,
    max_images: int = MAX_PCA_DESCRIPTORS,
    seed: int = 43,
    options=None,
) -> Path:
    """Fit PCA-whitening for ``method`` on at most ``max_images`` images of a training split.

    Images are drawn (seeded) from the union of the split's queries and database, as the
    lineage draws 10,000 of its training descriptors; descriptors are the NetVLAD vectors
    before any PCA layer. Writes OpenIBL's h5 layout and returns its path.
    """
    from methods.data import sample_split_images
    from methods.extract import (
        ExtractOptions,
        batching_for,
        build_for_device,
        encode_rows,
        part_context,
        resolve_device,
    )

    options = options or ExtractOptions()
    if getattr(method.config, "pca", None) is not None:
        raise HarnessError(
            "fit PCA on the method without option pca (the descriptors must be pre-PCA)"
        )
    out = Path(out) if out is not None else default_pca_path(method.weights)
    device = resolve_device(options.device)
    batch_size, workers = batching_for(options, device)
    model = build_for_device(method, device)
    model.pca_layer = None  # a released hub file carries one: fit on the vectors before it
    blocks = []
    for sample in sample_split_images(split, max_images, np.random.default_rng(seed)):
        context = part_context(sample.part, sample.names, sample.root, split.name, device,
                               batch_size, workers, None)
        for _, descriptors in encode_rows(
            method,
            model,
            context,
            device=device,
            rows=sample.rows.tolist(),
            precision=options.precision,
            progress=options.progress,
            description=f"pca {sample.part}",
        ):
            blocks.append(descriptors)
    descriptors = np.concatenate(blocks)
    logger.info("fitting PCA on %d descriptors of dimension %d", *descriptors.shape)
    params = fit_pca(descriptors, num_components)
    attrs = {
        "split": split.name,
        "split_sha256": split.sha256,
        "num_descriptors": int(descriptors.shape[0]),
        "seed": int(seed),
        "method": method.name,
        "extraction_precision": options.precision,
    }
    if method.weights is not None:
        from harness.io import sha256_file

        attrs["weights_sha256"] = sha256_file(method.weights)
    return save_pca(out, params, attrs)
