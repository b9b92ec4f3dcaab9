"""Finding, verifying and downloading data-set files.

Look-up order (first hit wins): an explicit ``data_dir``, the ``PYWEIGHTSTAT_DATA`` environment
variable, the user cache ``$XDG_CACHE_HOME/pyweightstat`` (default ``~/.cache/pyweightstat``),
then a download from the official mirrors into that cache. Setting ``PYWEIGHTSTAT_OFFLINE=1``
(or ``download=False``) skips the download. Under a root directory the layouts are
``<root>/mnist/*.gz``, ``<root>/fashion-mnist/*.gz`` and ``<root>/cifar-10/cifar-10-batches-py/``
(``<root>/cifar-10-batches-py/`` is accepted too).

Every file is checked before it is parsed, against its canonical checksum or, when a
``SHA256SUMS`` file sits beside the files, against that list (a declared non-canonical copy).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .sources import DatasetSpec

__all__ = [
    "ChecksumError",
    "DataFormatError",
    "DatasetNotFoundError",
    "Located",
    "cache_dir",
    "candidate_roots",
    "download",
    "locate",
    "read_sums",
    "read_verified",
]

SUMS_FILE = "SHA256SUMS"
_CHUNK = 1 << 20
_TIMEOUT_S = 60


class DatasetNotFoundError(FileNotFoundError):
    """A data set was found nowhere; the message lists every place looked."""


class ChecksumError(ValueError):
    """A data file does not match its checksum (corrupted, truncated or replaced)."""


class DataFormatError(ValueError):
    """A data file passed its checksum but does not have the expected layout."""


@dataclass(frozen=True)
class Located:
    """A data-set directory that holds every file, and how to verify them."""

    directory: Path
    expected: dict[str, tuple[str, str]]  # file name -> (algo, hex digest)
    canonical: bool


def cache_dir() -> Path:
    """Return the user cache directory ``$XDG_CACHE_HOME/pyweightstat``.

    Returns
    -------
    pathlib.Path
        ``~/.cache/pyweightstat`` unless ``XDG_CACHE_HOME`` is set.
    """
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "pyweightstat"


def candidate_roots(data_dir: str | os.PathLike[str] | None) -> list[tuple[str, Path]]:
    """Return the root directories to search, in look-up order, each with its origin.

    Parameters
    ----------
    data_dir : path-like or None
        An explicit root, searched first.

    Returns
    -------
    list of (str, pathlib.Path)
        ``(origin, root)`` pairs; ``origin`` is ``"data_dir"``, ``"PYWEIGHTSTAT_DATA"`` or
        ``"cache"``.
    """
    roots: list[tuple[str, Path]] = []
    if data_dir is not None:
        roots.append(("data_dir", Path(data_dir).expanduser()))
    env = os.environ.get("PYWEIGHTSTAT_DATA")
    if env:
        roots.append(("PYWEIGHTSTAT_DATA", Path(env).expanduser()))
    roots.append(("cache", cache_dir()))
    return roots


def read_sums(path: Path) -> dict[str, str]:
    """Parse a ``SHA256SUMS`` file (``<64 hex digits>  <file name>`` per line).

    Parameters
    ----------
    path : pathlib.Path
        The ``SHA256SUMS`` file.

    Returns
    -------
    dict
        File name -> lower-case hex digest.

    Raises
    ------
    DataFormatError
        If a line is malformed.
    """
    sums: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        digest = parts[0].lower()
        if len(parts) != 2 or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise DataFormatError(
                f"{path}:{lineno}: expected '<sha256>  <file name>', got {line!r}"
            )
        sums[parts[1].lstrip("*").strip()] = digest
    return sums


def locate(spec: DatasetSpec, roots: list[tuple[str, Path]]) -> tuple[Located | None, list[str]]:
    """Find the first directory under ``roots`` that holds every file of ``spec``.

    Parameters
    ----------
    spec : DatasetSpec
        The data set.
    roots : list of (str, pathlib.Path)
        From :func:`candidate_roots`.

    Returns
    -------
    located : Located or None
        The directory found, with the checksums to verify against.
    looked : list of str
        One line per place looked and why it was not used (for the error message).
    """
    looked: list[str] = []
    for origin, root in roots:
        for sub in spec.subdirs:
            d = root / sub
            if not d.is_dir():
                looked.append(f"{d} ({origin}: no such directory)")
                continue
            missing = [f.name for f in spec.files if not (d / f.name).is_file()]
            if missing:
                looked.append(f"{d} ({origin}: missing {', '.join(missing)})")
                continue
            sums_path = d / SUMS_FILE
            if sums_path.is_file():
                sums = read_sums(sums_path)
                unlisted = [f.name for f in spec.files if f.name not in sums]
                if unlisted:
                    raise ChecksumError(
                        f"{sums_path} declares a non-canonical copy but lists no checksum for "
                        f"{', '.join(unlisted)}"
                    )
                expected = {f.name: ("sha256", sums[f.name]) for f in spec.files}
                return Located(d, expected, canonical=False), looked
            expected = {f.name: (f.algo, f.digest) for f in spec.files}
            return Located(d, expected, canonical=True), looked
    return None, looked


def _hasher(algo: str) -> hashlib._Hash:
    if algo == "md5":
        return hashlib.md5(usedforsecurity=False)
    return hashlib.new(algo)


def read_verified(path: Path, algo: str, digest: str) -> bytes:
    """Read ``path`` whole and return its bytes only if they match the checksum.

    The bytes that are returned are the bytes that were hashed, so nothing unverified is ever
    parsed.

    Parameters
    ----------
    path : pathlib.Path
        The file.
    algo : str
        ``"sha256"`` or ``"md5"``.
    digest : str
        Expected hex digest.

    Returns
    -------
    bytes

    Raises
    ------
    ChecksumError
        Naming the file, the expected and the actual checksum.
    """
    raw = path.read_bytes()
    actual = _hasher(algo)
    actual.update(raw)
    got = actual.hexdigest()
    if got != digest.lower():
        raise ChecksumError(
            f"{path}: {algo} checksum mismatch (file corrupted, truncated or replaced; "
            f"{len(raw)} bytes): expected {digest.lower()}, got {got}"
        )
    return raw


def _fetch(url: str, dest: Path, algo: str, digest: str, progress: bool) -> None:
    """Download ``url`` to ``dest`` (through ``dest.part``), verifying the checksum."""
    from tqdm.auto import tqdm

    part = dest.with_name(dest.name + ".part")
    h = _hasher(algo)
    with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as resp:  # fixed official URLs
        total = int(resp.headers.get("Content-Length") or 0) or None
        with (
            open(part, "wb") as out,
            tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                desc=dest.name,
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            while chunk := resp.read(_CHUNK):
                out.write(chunk)
                h.update(chunk)
                bar.update(len(chunk))
    if h.hexdigest() != digest:
        part.unlink(missing_ok=True)
        raise ChecksumError(f"{url}: downloaded file has {algo} {h.hexdigest()}, expected {digest}")
    part.replace(dest)


def _extract_archive(archive: Path, prefix: str, names: set[str], target: Path) -> None:
    """Copy the regular files ``prefix + name`` out of a tar archive into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    found: set[str] = set()
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            if not member.isfile() or not member.name.startswith(prefix):
                continue
            name = member.name[len(prefix) :]
            if name not in names:  # only the known files; nothing else, no path traversal
                continue
            src = tar.extractfile(member)
            assert src is not None
            part = target / (name + ".part")
            with src, open(part, "wb") as out:
                shutil.copyfileobj(src, out, _CHUNK)
            part.replace(target / name)
            found.add(name)
    if found != names:
        raise DataFormatError(f"{archive}: archive lacks {sorted(names - found)}")


def download(spec: DatasetSpec, root: Path, *, progress: bool = True) -> Path:
    """Download ``spec`` from its official mirrors into ``root / spec.subdirs[0]``.

    Each file is verified against its canonical checksum as it arrives.

    Parameters
    ----------
    spec : DatasetSpec
        The data set.
    root : pathlib.Path
        The cache root.
    progress : bool
        Show a tqdm progress bar per file.

    Returns
    -------
    pathlib.Path
        The data-set directory.

    Raises
    ------
    OSError
        When no mirror could deliver a file (the message lists every URL tried and why).
    """
    target = root / spec.subdirs[0]
    target.mkdir(parents=True, exist_ok=True)
    if spec.archive is not None:
        a = spec.archive
        archive_path = target.parent / a.filename
        try:
            _fetch(a.url, archive_path, a.algo, a.digest, progress)
        except OSError as exc:
            raise OSError(f"download of {a.url} failed: {exc}") from exc
        try:
            _extract_archive(archive_path, a.member_prefix, {f.name for f in spec.files}, target)
        finally:
            archive_path.unlink(missing_ok=True)
        return target
    for f in spec.files:
        dest = target / f.name
        if dest.is_file():
            continue
        errors = []
        for base in spec.mirrors:
            url = base + f.name
            try:
                _fetch(url, dest, f.algo, f.digest, progress)
                break
            except (OSError, ChecksumError) as exc:
                errors.append(f"{url}: {exc}")
        else:
            raise OSError(f"could not download {f.name}: " + "; ".join(errors))
    return target
