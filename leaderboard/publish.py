"""Publishing immutable files: written whole under a temporary name, then linked into place.

``os.link`` fails when the target exists, so two submitters can never overwrite each other
(``os.replace`` would let the last one win silently): the first complete file wins, the
other sees :class:`FileExistsError` and adopts it. Readers never see a partial file.
"""

from __future__ import annotations

import contextlib
import io
import os
import zipfile
from pathlib import Path
from typing import Mapping

import numpy as np

_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def publish_bytes(path: str | os.PathLike, data: bytes) -> bool:
    """Create ``path`` holding ``data`` unless it exists; True when this call created it."""
    from harness.errors import HarnessError
    from harness.io import make_temp_file, write_failure

    path = Path(path)
    tmp_name = make_temp_file(path)
    try:
        with open(tmp_name, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)
        try:
            os.link(tmp_name, path)
        except FileExistsError:
            return False
        return True
    except OSError as exc:
        reason = write_failure(exc)
        if reason is None:
            raise
        raise HarnessError(f"cannot write it: {reason} (nothing was written)", path) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """A compressed ``.npz`` with fixed zip timestamps: same arrays, same bytes.

    (``np.savez_compressed`` stamps the current time into the zip entries.) Readable with
    ``np.load(allow_pickle=False)``.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(arrays):
            array = np.ascontiguousarray(arrays[name])
            if array.dtype.hasobject:
                raise ValueError(f"{name}: object arrays are not allowed")
            member = io.BytesIO()
            np.lib.format.write_array(member, array, allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()
