"""The IDX reader on generated files and on Debian's Fashion-MNIST."""

from __future__ import annotations

import gzip

import pytest
import torch
from fakes import make_fashion_mnist

from difrep.data import DEBIAN_FASHION_MNIST, load_fashion_mnist, read_idx


def test_round_trip_gzipped_and_plain(tmp_path):
    images, labels = make_fashion_mnist(tmp_path)
    got_images, got_labels = load_fashion_mnist(tmp_path, "test")
    assert torch.equal(got_images, images) and torch.equal(got_labels, labels)
    assert got_labels.dtype == torch.int64


def test_truncated_and_missing_files_are_named(tmp_path):
    make_fashion_mnist(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[:-10]))
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz: .*truncated"):
        read_idx(path)
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path, "train")


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_debian_package_has_the_known_test_split():
    images, labels = load_fashion_mnist(DEBIAN_FASHION_MNIST, "test")
    assert images.shape == (10000, 28, 28)
    assert torch.equal(torch.bincount(labels), torch.full((10,), 1000))
