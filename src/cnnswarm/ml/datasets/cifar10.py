"""CIFAR-10 from the official python-format archive, read without running any of its code.

Looked for under ``HOME_DIR/torch_data/``: the archive ``cifar-10-python.tar.gz`` (read in
place, members streamed, nothing extracted) or its extracted folder ``cifar-10-batches-py/``.
When neither is there and downloads are allowed, the archive is downloaded from the official
URL to a temporary file, its MD5 checked, and renamed into place; offline, ``DatasetUnavailable``
says which file to put where.

The batches are Python 2 cPickle dicts with bytes keys. They are unpickled with a restricted
unpickler that only lets numpy rebuild arrays; anything else (``os.system``, ``eval``, ...) is
refused before it can run. The decoded arrays are cached as ``.npz`` next to the archive (keyed
by the source's size and mtime), so the second load is a plain array read.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import io
import pickle
import tarfile
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from cnnswarm.atomic import write_atomically
from cnnswarm.errors import DatasetUnavailable, InvalidInput
from cnnswarm.ml.datasets.base import ArrayDataset, Normalization

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
# The archive's own class names (what ``classes`` holds) ...
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
# ... and the tags the seed's routes answered with, in the same order.
SEED_CIFAR10_TAGS = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# The seed's normalization: (x - 0.5) / 0.5 per channel.
CIFAR10_NORMALIZATION = Normalization(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

_IMAGE_BYTES = 3 * 32 * 32
# A genuine batch file is ~31 MB; anything far larger is not one.
_MAX_MEMBER_BYTES = 64 * 1024 * 1024
_CACHE_PREFIX = "cifar-10-decoded-"


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as Python 3 protocol-2 pickles use it for bytes; latin-1 only."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"refused: _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only callables a CIFAR batch needs: numpy's array and dtype reconstruction."""
    # numpy's own reconstructor, whichever module it lives in for this numpy version.
    reconstruct = np.zeros(0).__reduce__()[0]
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only ``_allowed_globals()``; every other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _allowed_globals()[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused to load global {module}.{name}: a CIFAR-10 batch only holds "
                "numpy arrays, lists, numbers and strings"
            ) from None


def restricted_unpickle(data: bytes, *, name: str) -> Any:
    """Unpickle a CIFAR batch (bytes keys kept as bytes); ``InvalidInput`` naming ``name``."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:
        raise InvalidInput(f"CIFAR-10 file {name} is not a valid batch: {exc}") from exc


def _get(batch: dict[Any, Any], key: str) -> Any:
    """``batch[key]`` whether the pickle stored the key as bytes (Python 2) or str."""
    if key.encode() in batch:
        return batch[key.encode()]
    if key in batch:
        return batch[key]
    raise KeyError(key)


def _decode_batch(raw: bytes, *, name: str) -> tuple[np.ndarray, np.ndarray]:
    """One data/test batch -> ``(uint8 (N, 3, 32, 32), int64 (N,))``, structure checked."""
    batch = restricted_unpickle(raw, name=name)
    try:
        if not isinstance(batch, dict):
            raise TypeError(f"expected a dict, got {type(batch).__name__}")
        data = _get(batch, "data")
        labels = np.asarray(_get(batch, "labels"))
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
            raise TypeError("'data' must be a uint8 (N, 3072) array")
        if data.shape[1] != _IMAGE_BYTES or labels.shape != (data.shape[0],):
            raise ValueError(f"shapes data {data.shape} / labels {labels.shape} do not match")
        if labels.dtype.kind not in "iu" or (
            len(labels) and not 0 <= labels.min() <= labels.max() < 10
        ):
            raise ValueError("labels must be integers 0..9")
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(f"CIFAR-10 file {name} is not a valid batch: {exc!r}") from exc
    # Rows are 1024 red, 1024 green, 1024 blue values, each plane row-major.
    return data.reshape(-1, 3, 32, 32).copy(), labels.astype(np.int64)


def _decode_meta(raw: bytes) -> list[str]:
    """``batches.meta`` -> the ten class names."""
    meta = restricted_unpickle(raw, name=META)
    try:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in _get(meta, "label_names")]
    except (KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"CIFAR-10 file {META} has no label_names: {exc!r}") from exc
    if len(names) != 10:
        raise InvalidInput(f"CIFAR-10 file {META} lists {len(names)} classes, expected 10")
    return names


def _iter_archive(archive: Path) -> Iterator[tuple[str, bytes]]:
    """``(file name, bytes)`` of the wanted regular members, streamed from the tar.gz."""
    wanted = {*TRAIN_BATCHES, TEST_BATCH, META}
    try:
        with tarfile.open(archive, mode="r|gz") as tar:
            for member in tar:
                parts = member.name.replace("\\", "/").split("/")
                if len(parts) != 2 or parts[0] != CIFAR10_FOLDER or parts[1] not in wanted:
                    continue
                if not member.isfile() or member.size > _MAX_MEMBER_BYTES:
                    raise InvalidInput(f"{archive}: {member.name} is not a regular batch file")
                fh = tar.extractfile(member)
                if fh is None:
                    raise InvalidInput(f"{archive}: cannot read {member.name}")
                yield parts[1], fh.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InvalidInput(f"{archive} is not a readable tar.gz: {exc}") from exc


def _iter_folder(folder: Path) -> Iterator[tuple[str, bytes]]:
    """``(file name, bytes)`` of the batch files in an extracted folder."""
    for file_name in (*TRAIN_BATCHES, TEST_BATCH, META):
        path = folder / file_name
        if path.is_file() and path.stat().st_size <= _MAX_MEMBER_BYTES:
            yield file_name, path.read_bytes()


def decode_cifar10(files: Iterator[tuple[str, bytes]], *, source: str) -> ArrayDataset:
    """Build the dataset from ``(file name, bytes)`` pairs; every batch must be present."""
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    classes: list[str] | None = None
    for file_name, raw in files:
        if file_name == META:
            classes = _decode_meta(raw)
        else:
            found[file_name] = _decode_batch(raw, name=file_name)
    missing = [n for n in (*TRAIN_BATCHES, TEST_BATCH, META) if n not in found and n != META]
    if classes is None:
        missing.append(META)
    if missing:
        raise InvalidInput(f"{source} is incomplete: missing {', '.join(missing)}")
    assert classes is not None
    x_test, y_test = found[TEST_BATCH]
    return ArrayDataset(
        name="cifar10",
        classes=classes,
        x_train=np.concatenate([found[n][0] for n in TRAIN_BATCHES]),
        y_train=np.concatenate([found[n][1] for n in TRAIN_BATCHES]),
        x_test=x_test,
        y_test=y_test,
        normalization=CIFAR10_NORMALIZATION,
    )


def _fingerprint(source: Path) -> str:
    """Changes whenever the archive (or a batch file of the folder) is replaced."""
    paths = [source] if source.is_file() else sorted(p for p in source.iterdir() if p.is_file())
    digest = hashlib.sha256()
    for path in paths:
        st = path.stat()
        digest.update(f"{path.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def _load_cached(cache: Path) -> ArrayDataset | None:
    """The cached dataset, or None when absent or unreadable (it is then rebuilt)."""
    if not cache.is_file():
        return None
    try:
        return ArrayDataset.load_npz(cache)
    except Exception:
        return None


def _write_cache(dataset: ArrayDataset, cache: Path) -> None:
    """Write the cache atomically; a read-only data folder only costs the speed-up."""
    with contextlib.suppress(OSError):
        for stale in cache.parent.glob(f"{_CACHE_PREFIX}*.npz"):
            if stale != cache:
                stale.unlink(missing_ok=True)
        dataset.save_npz(cache)  # atomic, unique temp name: concurrent cachers never clash


def download_archive(url: str, target: Path, *, md5: str) -> None:
    """Download ``url`` to ``target`` via a temporary file, kept only if its MD5 is ``md5``."""

    def download(out: IO[bytes]) -> None:
        digest = hashlib.md5()
        with urllib.request.urlopen(url, timeout=60) as response:
            _copy_hashing(response, out, digest.update)
        if digest.hexdigest() != md5:
            raise DatasetUnavailable(
                f"downloaded {url} has MD5 {digest.hexdigest()}, expected {md5}; not kept. "
                f"Put the genuine {target.name} at {target}"
            )

    try:
        write_atomically(target, download)  # a failed or mismatching download leaves nothing
    except OSError as exc:
        raise DatasetUnavailable(
            f"could not download {url} ({exc}); put {target.name} at {target}"
        ) from exc


def _copy_hashing(src: IO[bytes], dst: IO[bytes], update: Callable[[bytes], None]) -> None:
    """Copy ``src`` to ``dst`` in chunks, feeding each chunk to ``update``."""
    while chunk := src.read(1 << 20):
        update(chunk)
        dst.write(chunk)


def load_cifar10(
    home_dir: Path,
    *,
    allow_downloads: bool = False,
    url: str = CIFAR10_URL,
    md5: str = CIFAR10_MD5,
) -> ArrayDataset:
    """CIFAR-10 (50,000 train / 10,000 test, 3x32x32, mean = std = 0.5) from ``home_dir``.

    ``DatasetUnavailable`` when the data is absent and ``allow_downloads`` is false (or the
    download fails or does not match ``md5``); ``InvalidInput`` when the files are malformed.
    """
    data_dir = Path(home_dir) / "torch_data"
    archive = data_dir / CIFAR10_ARCHIVE
    folder = data_dir / CIFAR10_FOLDER
    if not archive.is_file() and not folder.is_dir():
        if not allow_downloads:
            raise DatasetUnavailable(
                f"CIFAR-10 is not available offline: put {CIFAR10_ARCHIVE} (from {url}, "
                f"MD5 {md5}) at {archive}, or its extracted folder {CIFAR10_FOLDER}/ at {folder}"
            )
        download_archive(url, archive, md5=md5)
    source = archive if archive.is_file() else folder
    cache = data_dir / f"{_CACHE_PREFIX}{_fingerprint(source)}.npz"
    cached = _load_cached(cache)
    if cached is not None:
        return cached
    files = _iter_archive(archive) if source == archive else _iter_folder(folder)
    dataset = decode_cifar10(files, source=str(source))
    _write_cache(dataset, cache)
    return dataset
