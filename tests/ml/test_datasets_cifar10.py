"""CIFAR-10 from a small archive written in the official python format by the test itself."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from cnnswarm.errors import DatasetUnavailable, InvalidInput
from cnnswarm.ml.datasets import load_builtin
from cnnswarm.ml.datasets.cifar10 import (
    CIFAR10_ARCHIVE,
    CIFAR10_CLASSES,
    SEED_CIFAR10_TAGS,
    load_cifar10,
    restricted_unpickle,
)
from support import MarkerPayload


def _archive(home: Path) -> Path:
    return home / "torch_data" / CIFAR10_ARCHIVE


def test_reads_official_format_archive(tmp_path: Path, cifar_fixtures: ModuleType) -> None:
    expected = cifar_fixtures.write_cifar10_archive(_archive(tmp_path), n_per_batch=12, n_test=7)
    ds = load_cifar10(tmp_path)
    assert ds.name == "cifar10"
    assert ds.classes == list(CIFAR10_CLASSES) == expected["classes"]
    assert ds.input_shape == (3, 32, 32)
    assert len(ds.x_train) == 60 and len(ds.x_test) == 7
    np.testing.assert_array_equal(ds.x_train, expected["x_train"])
    np.testing.assert_array_equal(ds.y_train, expected["y_train"])
    np.testing.assert_array_equal(ds.x_test, expected["x_test"])
    assert ds.normalization.mean == (0.5, 0.5, 0.5) and ds.normalization.std == (0.5, 0.5, 0.5)
    assert len(SEED_CIFAR10_TAGS) == len(ds.classes) and SEED_CIFAR10_TAGS[0] == "plane"


def test_channel_planes_are_decoded_row_major(tmp_path: Path, cifar_fixtures: ModuleType) -> None:
    # Row layout: 1024 red, 1024 green, 1024 blue, each 32x32 row-major.
    expected = cifar_fixtures.write_cifar10_archive(_archive(tmp_path), n_per_batch=2, n_test=2)
    ds = load_cifar10(tmp_path)
    flat = expected["x_train"][0].reshape(-1)
    assert ds.x_train[0, 1, 0, 5] == flat[1024 + 5]
    assert ds.x_train[0, 2, 3, 0] == flat[2048 + 3 * 32]


def test_second_load_uses_the_npz_cache(tmp_path: Path, cifar_fixtures: ModuleType) -> None:
    archive = _archive(tmp_path)
    cifar_fixtures.write_cifar10_archive(archive, n_per_batch=3, n_test=3)
    first = load_cifar10(tmp_path)
    caches = list(archive.parent.glob("cifar-10-decoded-*.npz"))
    assert len(caches) == 1
    # Corrupting the archive in place while keeping size/mtime would be a lie; instead show
    # the cache is what is read: the archive can become unreadable and the load still works.
    stat = archive.stat()
    archive.write_bytes(b"\0" * stat.st_size)
    import os

    os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = load_cifar10(tmp_path)
    np.testing.assert_array_equal(second.x_train, first.x_train)
    assert second.classes == first.classes
    assert not list(archive.parent.glob(".cifar-cache-*"))


def test_replaced_archive_invalidates_cache(tmp_path: Path, cifar_fixtures: ModuleType) -> None:
    archive = _archive(tmp_path)
    cifar_fixtures.write_cifar10_archive(archive, n_per_batch=3, n_test=3, seed=1)
    load_cifar10(tmp_path)
    expected = cifar_fixtures.write_cifar10_archive(archive, n_per_batch=4, n_test=3, seed=2)
    ds = load_cifar10(tmp_path)
    np.testing.assert_array_equal(ds.x_train, expected["x_train"])
    assert len(list(archive.parent.glob("cifar-10-decoded-*.npz"))) == 1


def test_extracted_folder_is_read(tmp_path: Path, cifar_fixtures: ModuleType) -> None:
    scratch = tmp_path / "scratch" / CIFAR10_ARCHIVE
    expected = cifar_fixtures.write_cifar10_archive(scratch, n_per_batch=2, n_test=2)
    with tarfile.open(scratch) as tar:
        tar.extractall(tmp_path / "torch_data", filter="data")
    ds = load_cifar10(tmp_path)
    np.testing.assert_array_equal(ds.x_test, expected["x_test"])


def test_python3_protocol2_pickles_load_too(tmp_path: Path, cifar_fixtures: ModuleType) -> None:
    # Re-created archives pickled by Python 3 use _codecs.encode for bytes; that is allowed.
    rng = np.random.default_rng(3)
    batch, images = cifar_fixtures.make_batch(4, rng, "b")
    raw = pickle.dumps(batch, protocol=2)
    assert b"_codecs" in raw
    loaded = restricted_unpickle(raw, name="data_batch_1")
    np.testing.assert_array_equal(loaded[b"data"].reshape(4, 3, 32, 32), images)


@pytest.mark.parametrize("member", ["data_batch_2", "batches.meta", "test_batch"])
def test_malicious_pickle_is_refused_and_never_runs(
    tmp_path: Path, cifar_fixtures: ModuleType, member: str
) -> None:
    marker = tmp_path / "pwned"
    evil = pickle.dumps({b"data": MarkerPayload(marker), b"labels": []}, protocol=2)
    cifar_fixtures.write_cifar10_archive(_archive(tmp_path), n_per_batch=2, replace={member: evil})
    with pytest.raises(InvalidInput, match=r"refused to load global (builtins|io)\.open"):
        load_cifar10(tmp_path)
    assert not marker.exists()
    # the payload is real: an ordinary unpickler would have run it
    pickle.loads(evil)
    assert marker.exists()


@pytest.mark.parametrize(
    "global_name", [b"builtins\neval\n", b"__builtin__\neval\n", b"numpy\nload\n"]
)
def test_any_other_global_is_refused(global_name: bytes) -> None:
    raw = b"\x80\x02c" + global_name + b"X\x01\x00\x00\x001\x85R."
    with pytest.raises(InvalidInput, match="refused to load global"):
        restricted_unpickle(raw, name="data_batch_1")


def test_codecs_encode_only_latin1() -> None:
    raw = b"\x80\x02c_codecs\nencode\nX\x02\x00\x00\x00abX\x04\x00\x00\x00zlib\x86R."
    with pytest.raises(InvalidInput, match="zlib"):
        restricted_unpickle(raw, name="data_batch_1")


def test_wrong_structure_and_missing_batch(tmp_path: Path, cifar_fixtures: ModuleType) -> None:
    bad = cifar_fixtures.py2_pickle({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]})
    cifar_fixtures.write_cifar10_archive(_archive(tmp_path), replace={"data_batch_4": bad})
    with pytest.raises(InvalidInput, match="data_batch_4"):
        load_cifar10(tmp_path)

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/batches.meta")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    _archive(tmp_path).write_bytes(buf.getvalue())
    with pytest.raises(InvalidInput):
        load_cifar10(tmp_path)


def test_not_a_tar_gz(tmp_path: Path) -> None:
    archive = _archive(tmp_path)
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"this is not an archive")
    with pytest.raises(InvalidInput, match=r"not a readable tar\.gz"):
        load_cifar10(tmp_path)


def test_absent_offline_says_what_to_put_where(tmp_path: Path) -> None:
    with pytest.raises(DatasetUnavailable) as info:
        load_builtin("cifar10", tmp_path)
    message = str(info.value)
    assert f"put {CIFAR10_ARCHIVE}" in message
    assert str(tmp_path / "torch_data" / CIFAR10_ARCHIVE) in message
    assert info.value.status == 409


def test_download_verifies_checksum(tmp_path: Path, cifar_fixtures: ModuleType) -> None:
    source = tmp_path / "mirror" / CIFAR10_ARCHIVE
    expected = cifar_fixtures.write_cifar10_archive(source, n_per_batch=2, n_test=2)
    home = tmp_path / "home"
    url = source.as_uri()
    with pytest.raises(DatasetUnavailable, match="MD5"):
        load_cifar10(home, allow_downloads=True, url=url, md5="0" * 32)
    data_dir = home / "torch_data"
    assert not _archive(home).exists() and list(data_dir.iterdir()) == []

    md5 = hashlib.md5(source.read_bytes()).hexdigest()
    ds = load_cifar10(home, allow_downloads=True, url=url, md5=md5)
    np.testing.assert_array_equal(ds.x_train, expected["x_train"])
    assert _archive(home).read_bytes() == source.read_bytes()


def test_download_failure_is_unavailable(tmp_path: Path) -> None:
    url = (tmp_path / "nowhere.tar.gz").as_uri()
    with pytest.raises(DatasetUnavailable, match="could not download"):
        load_cifar10(tmp_path, allow_downloads=True, url=url)


def test_example_idxs_subset(tmp_path: Path, cifar_fixtures: ModuleType) -> None:
    expected = cifar_fixtures.write_cifar10_archive(_archive(tmp_path), n_per_batch=4, n_test=2)
    sub = load_builtin("cifar10", tmp_path).subset([3, 9])
    np.testing.assert_array_equal(sub.x_train, expected["x_train"][3:9])
    assert len(sub.x_test) == 2
    with pytest.raises(InvalidInput):
        load_builtin("cifar10", tmp_path).subset([0, 21])
