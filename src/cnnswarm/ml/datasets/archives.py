"""Reading uploaded zip and tar archives safely, entry by entry, without extracting anything.

Every entry name is checked before anything is read: no absolute paths, drive letters, ``..``
components or NUL bytes, no symlinks or hardlinks, no device files, fifos or other specials --
one such entry refuses the whole archive, naming it. Reading is bounded: number of entries, size
of each file, total uncompressed bytes, and the compression ratio (per zip entry, and of the
whole decompressed tar stream), so a zip or tar bomb is refused before it fills memory.
Nothing is written to disk, so nothing can escape a target folder or be left behind.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cnnswarm.errors import InvalidInput

# Below this many uncompressed bytes the ratio guard does not apply (small files compress well).
RATIO_FLOOR_BYTES = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class UploadLimits:
    """Bounds on what an upload may hold; every default is sane for a small image dataset."""

    max_total_bytes: int = 1 << 30  # uncompressed bytes of all entries together
    max_files: int = 100_000  # entries in the archive, folders included
    max_file_bytes: int = 32 << 20  # one image file
    max_ratio: float = 100.0  # uncompressed / compressed, past RATIO_FLOOR_BYTES
    max_image_pixels: int = 4096 * 4096  # one decoded image
    max_array_bytes: int = 2 << 30  # the decoded dataset (and the decoded images on the way)
    max_classes: int = 1000


@dataclass(frozen=True)
class Entry:
    """One archive entry: its path components, and its bytes (None for a folder)."""

    parts: tuple[str, ...]
    data: bytes | None

    @property
    def path(self) -> str:
        """The entry's normalized path, as named in error messages."""
        return "/".join(self.parts)


def sniff_format(path: Path) -> str:
    """``"zip"``, ``"tar"``, ``"gz"``, ``"bz2"`` or ``"xz"``, from magic bytes, never the name."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "gz"
    if head.startswith(b"BZh"):
        return "bz2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head[257:262] == b"ustar":
        return "tar"
    if head.startswith(b"\x93NUMPY"):
        raise InvalidInput("a bare .npy file is not accepted: send an .npz with x, y and classes")
    raise InvalidInput(
        "unrecognized upload: expected a zip, a tar (plain, .gz, .bz2 or .xz) of "
        "class_name/image folders, or an .npz with x, y and classes"
    )


def safe_parts(name: str) -> tuple[str, ...]:
    """An entry name's components; ``InvalidInput`` if it could escape the archive's root."""
    if "\x00" in name:
        raise InvalidInput(f"unsafe entry {name!r}: NUL byte in the name")
    # Backslashes count as separators: "..\\evil" escapes when extracted on Windows.
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or _DRIVE.match(normalized):
        raise InvalidInput(f"unsafe entry {name!r}: absolute path")
    parts = tuple(p for p in normalized.split("/") if p not in ("", "."))
    if ".." in parts:
        raise InvalidInput(f"unsafe entry {name!r}: '..' would escape the archive")
    if not parts:
        raise InvalidInput(f"unsafe entry {name!r}: empty name")
    return parts


class _Budget:
    """Counts entries and uncompressed bytes against the limits."""

    def __init__(self, limits: UploadLimits) -> None:
        self.limits = limits
        self.entries = 0
        self.total_bytes = 0

    def count_entry(self) -> None:
        self.entries += 1
        if self.entries > self.limits.max_files:
            raise InvalidInput(f"upload has more than {self.limits.max_files} entries")

    def check_file_size(self, path: str, size: int) -> None:
        if size > self.limits.max_file_bytes:
            raise InvalidInput(
                f"{path}: {size} bytes is over the per-file limit of {self.limits.max_file_bytes}"
            )
        if self.total_bytes + size > self.limits.max_total_bytes:
            raise InvalidInput(
                f"upload is over the limit of {self.limits.max_total_bytes} uncompressed bytes"
            )

    def add_bytes(self, size: int) -> None:
        self.total_bytes += size


def iter_zip(
    zf: zipfile.ZipFile, limits: UploadLimits, wanted: Callable[[tuple[str, ...]], bool]
) -> Iterator[Entry]:
    """Entries of an open zip; files for which ``wanted(parts)`` is false are not read."""
    budget = _Budget(limits)
    infos = zf.infolist()
    seen: set[tuple[str, ...]] = set()
    for info in infos:  # every name checked before any byte is read
        budget.count_entry()
        parts = safe_parts(info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise InvalidInput(f"unsafe entry {info.filename!r}: symbolic link")
        if info.flag_bits & 0x1:
            raise InvalidInput(f"{info.filename}: encrypted entries are not accepted")
        if parts in seen and not info.is_dir():
            raise InvalidInput(f"{info.filename}: duplicate entry")
        seen.add(parts)
    for info in infos:
        parts = safe_parts(info.filename)
        if info.is_dir():
            yield Entry(parts, None)
            continue
        if not wanted(parts):
            continue
        name = "/".join(parts)
        budget.check_file_size(name, info.file_size)
        if info.file_size > RATIO_FLOOR_BYTES and info.file_size > limits.max_ratio * max(
            info.compress_size, 1
        ):
            raise InvalidInput(
                f"{name}: compression ratio {info.file_size / max(info.compress_size, 1):.0f} "
                f"is over {limits.max_ratio:.0f} (zip bomb?)"
            )
        try:
            with zf.open(info) as fh:
                # zipfile never returns more than the declared size, and checks the CRC.
                data = fh.read(limits.max_file_bytes + 1)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as exc:
            raise InvalidInput(f"{name}: cannot be read from the zip ({exc})") from exc
        budget.check_file_size(name, len(data))
        budget.add_bytes(len(data))
        yield Entry(parts, data)


class _CappedReader:
    """A read-only stream that refuses to deliver past a byte cap or a compression ratio."""

    def __init__(self, raw: io.BufferedIOBase, *, cap: int, compressed_size: int, max_ratio: float):
        self.raw = raw
        self.cap = cap
        self.ratio_cap = max(RATIO_FLOOR_BYTES, int(max_ratio * max(compressed_size, 1)))
        self.delivered = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self.raw.read(size)
        self.delivered += len(chunk)
        if self.delivered > self.cap:
            raise InvalidInput(f"upload is over the limit of {self.cap} uncompressed bytes")
        if self.delivered > self.ratio_cap:
            raise InvalidInput(
                f"upload decompresses to more than {self.ratio_cap} bytes, over the allowed "
                "compression ratio (tar bomb?)"
            )
        return chunk


def _open_decompressed(path: Path, compression: str) -> io.BufferedIOBase:
    """``path`` opened for reading with its compression undone."""
    if compression == "gz":
        return gzip.open(path, "rb")
    if compression == "bz2":
        return bz2.open(path, "rb")
    if compression == "xz":
        return lzma.open(path, "rb")
    return open(path, "rb")


def iter_tar(
    path: Path, compression: str, limits: UploadLimits, wanted: Callable[[tuple[str, ...]], bool]
) -> Iterator[Entry]:
    """Entries of a tar stream (``compression`` as from ``sniff_format``), read in one pass."""
    budget = _Budget(limits)
    # Headers and padding take up to 1 KiB per entry on top of the file bytes.
    cap = limits.max_total_bytes + 1024 * (limits.max_files + 2)
    try:
        with _open_decompressed(path, compression) as raw:
            stream = _CappedReader(
                raw, cap=cap, compressed_size=path.stat().st_size, max_ratio=limits.max_ratio
            )
            with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
                for member in tar:
                    entry = _tar_entry(tar, member, budget, wanted)
                    if entry is not None:
                        yield entry
    except (tarfile.TarError, OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
        raise InvalidInput(f"not a readable tar archive ({exc})") from exc


def _tar_entry(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    budget: _Budget,
    wanted: Callable[[tuple[str, ...]], bool],
) -> Entry | None:
    """One checked tar member as an ``Entry``; None for an unwanted file (skipped unread)."""
    budget.count_entry()
    parts = safe_parts(member.name)
    if member.issym() or member.islnk():
        kind = "symbolic link" if member.issym() else "hard link"
        raise InvalidInput(f"unsafe entry {member.name!r}: {kind} to {member.linkname!r}")
    if member.isdir():
        return Entry(parts, None)
    if not member.isreg():
        raise InvalidInput(f"unsafe entry {member.name!r}: device, fifo or special file")
    if not wanted(parts):
        return None
    name = "/".join(parts)
    budget.check_file_size(name, member.size)
    fh = tar.extractfile(member)
    if fh is None:
        raise InvalidInput(f"{name}: cannot be read from the tar")
    data = fh.read()
    budget.add_bytes(len(data))
    return Entry(parts, data)
