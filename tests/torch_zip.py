"""Writing zip files laid out like torch.save's, for tests that craft their contents."""

from __future__ import annotations

import zipfile
from pathlib import Path


def write_torch_zip(path: Path, payload: bytes, storages: dict[str, bytes] | None = None) -> Path:
    """A zip laid out like torch.save's: archive/data.pkl, archive/data/<key>, byteorder."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/byteorder", "little")
        for key, raw in (storages or {}).items():
            z.writestr(f"archive/data/{key}", raw)
        z.writestr("archive/version", "3\n")
    return path
