"""The feature cache: round trip, multi-pool, resume, sharding across processes, corruption."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from difrep import FeatureExtractor
from difrep.data import TensorImageDataset, build_transform
from difrep.features.cache import CacheError, CacheWriter, FeatureCache, FeatureKey

N = 10


@pytest.fixture(scope="module")
def dataset():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (N, 20, 20), dtype=torch.uint8, generator=gen)
    return TensorImageDataset(images, torch.arange(N) % 3, ["a", "b", "c"], build_transform(32))


def _writer(unet, out, **kw):
    opts = dict(timesteps=[50, 300], blocks=[6, 13], pools=[1, 2], description={"data": {"name": "fake"}},
                shard_size=4, storage_dtype="float32")
    opts.update(kw)
    return CacheWriter(out, unet, **opts)


def test_round_trip_equals_the_extractor(unet, dataset, tmp_path):
    _writer(unet, tmp_path / "c").run(dataset, batch_size=3, workers=0, progress=False)
    cache = FeatureCache(tmp_path / "c")
    assert cache.num_shards == 3
    assert cache.labels.tolist() == (torch.arange(N) % 3).tolist()
    assert cache.indices.tolist() == list(range(N))
    images = torch.stack([dataset[i][0] for i in range(N)])
    full = FeatureExtractor(unet, timesteps=[50, 300], blocks=[6, 13])(images, indices=list(range(N)))
    for key in cache.keys:
        expected = F.adaptive_avg_pool2d(full[(key.t, key.b)], key.pool).flatten(1)
        torch.testing.assert_close(cache.features(key).to_tensor(), expected, rtol=1e-5, atol=1e-5)
    rows = cache.features("t50_b6_p2")[[9, 0, 5]]
    torch.testing.assert_close(rows, cache.features("t50_b6_p2").to_tensor()[[9, 0, 5]])
    with pytest.raises(KeyError, match="t90_b6_p2 is not in the cache"):
        cache.features(FeatureKey(90, 6, 2))


def test_float16_storage_is_close(unet, dataset, tmp_path):
    _writer(unet, tmp_path / "a").run(dataset, workers=0, progress=False)
    _writer(unet, tmp_path / "h", storage_dtype="float16").run(dataset, workers=0, progress=False)
    a, h = FeatureCache(tmp_path / "a"), FeatureCache(tmp_path / "h")
    x, y = a.features("t300_b13_p2").to_tensor(), h.features("t300_b13_p2").to_tensor()
    assert (x - y).abs().max() <= 1e-3 * x.abs().max()
    assert (tmp_path / "h" / "shard-00000.t300_b13_p2.npy").stat().st_size < (tmp_path / "a" / "shard-00000.t300_b13_p2.npy").stat().st_size


def test_killed_extraction_resumes_without_redoing_shards(unet, dataset, tmp_path, monkeypatch):
    _writer(unet, tmp_path / "ref").run(dataset, workers=0, progress=False)
    calls = {"n": 0}
    original = CacheWriter._write_shard

    def dies_on_second(self, *args):
        calls["n"] += 1
        if calls["n"] == 2:
            (self.out_dir / ".shard-00001.labels.npy.tmp-1").write_bytes(b"half written")
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(CacheWriter, "_write_shard", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        _writer(unet, tmp_path / "c").run(dataset, workers=0, progress=False)
    with pytest.raises(CacheError, match="2 of 3 shards are incomplete"):
        FeatureCache(tmp_path / "c")
    first = (tmp_path / "c" / "shard-00000.done.json").stat().st_mtime_ns
    monkeypatch.setattr(CacheWriter, "_write_shard", original)
    written = _writer(unet, tmp_path / "c").run(dataset, workers=0, progress=False)
    assert written == [1, 2]
    assert (tmp_path / "c" / "shard-00000.done.json").stat().st_mtime_ns == first
    ref, resumed = FeatureCache(tmp_path / "ref"), FeatureCache(tmp_path / "c")
    for key in ref.keys:
        assert torch.equal(ref.features(key).to_tensor(), resumed.features(key).to_tensor())


def test_two_processes_write_one_cache(unet, dataset, tmp_path):
    _writer(unet, tmp_path / "one").run(dataset, workers=0, progress=False)
    assert _writer(unet, tmp_path / "two").run(dataset, workers=0, rank=0, world_size=2, progress=False) == [0, 2]
    assert _writer(unet, tmp_path / "two").run(dataset, workers=0, rank=1, world_size=2, progress=False) == [1]
    one, two = FeatureCache(tmp_path / "one"), FeatureCache(tmp_path / "two")
    for key in one.keys:
        assert torch.equal(one.features(key).to_tensor(), two.features(key).to_tensor())


def test_truncated_and_altered_files_are_detected(unet, dataset, tmp_path):
    _writer(unet, tmp_path / "c").run(dataset, workers=0, progress=False)
    victim = tmp_path / "c" / "shard-00001.t50_b13_p1.npy"
    data = victim.read_bytes()
    victim.write_bytes(data[:-8])
    with pytest.raises(CacheError, match=r"shard-00001.t50_b13_p1.npy: \d+ bytes on disk, \d+ written"):
        FeatureCache(tmp_path / "c")
    victim.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    cache = FeatureCache(tmp_path / "c")
    with pytest.raises(CacheError, match="content differs from the recorded SHA-256"):
        cache.verify()
    with pytest.raises(CacheError, match="not a feature cache"):
        FeatureCache(tmp_path)


def test_a_cache_made_with_other_settings_is_refused(unet, dataset, tmp_path):
    _writer(unet, tmp_path / "c").run(dataset, workers=0, progress=False)
    with pytest.raises(CacheError, match=r"keys: cache has .* asked for"):
        _writer(unet, tmp_path / "c", timesteps=[50, 301]).run(dataset, workers=0, progress=False)
    with pytest.raises(CacheError, match=r"noise.seed: cache has 0, asked for 1"):
        _writer(unet, tmp_path / "c", seed=1).run(dataset, workers=0, progress=False)


def test_shards_are_written_while_the_model_runs_on(unet, dataset, tmp_path, monkeypatch):
    """The writer thread writes shard 0 while the model computes shard 1: were the stages serial, the write
    below would wait for a batch that is never computed and time out."""
    import threading

    second_batch = threading.Event()
    overlapped = []
    features, write = CacheWriter._features, CacheWriter._write_shard
    calls = {"n": 0}

    def counting_features(self, images, indices):
        calls["n"] += 1
        if calls["n"] == 2:
            second_batch.set()
        return features(self, images, indices)

    def waiting_write(self, shard, *args):
        if shard == 0:
            overlapped.append(second_batch.wait(timeout=20))
        return write(self, shard, *args)

    monkeypatch.setattr(CacheWriter, "_features", counting_features)
    monkeypatch.setattr(CacheWriter, "_write_shard", waiting_write)
    _writer(unet, tmp_path / "c").run(dataset, batch_size=4, workers=0, progress=False)
    assert overlapped == [True]
    monkeypatch.undo()
    _writer(unet, tmp_path / "ref").run(dataset, batch_size=4, workers=0, progress=False)
    ref, c = FeatureCache(tmp_path / "ref"), FeatureCache(tmp_path / "c")
    for key in ref.keys:
        assert torch.equal(ref.features(key).to_tensor(), c.features(key).to_tensor())


def test_an_overflow_found_by_the_writer_thread_stops_the_extraction(unet, dataset, tmp_path, monkeypatch):
    features = CacheWriter._features

    def huge(self, images, indices):
        return {name: f * 1e6 for name, f in features(self, images, indices).items()}

    monkeypatch.setattr(CacheWriter, "_features", huge)
    with pytest.raises(CacheError, match="overflows float16: use storage_dtype float32"):
        _writer(unet, tmp_path / "c", storage_dtype="float16").run(dataset, batch_size=4, workers=0, progress=False)
    assert not (tmp_path / "c" / "shard-00000.done.json").exists()
