"""The (t, b, pool) search: auto finds a known best setting, scores no setting twice at one subset size, and
the on-demand source never runs an (image, t) twice."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from difrep.data import TensorImageDataset, build_transform
from difrep.evaluation.search import SearchSpace, best_values, search_settings
from difrep.evaluation.sources import ExtractingSource
from difrep.features.cache import FeatureKey
from difrep.features.extractor import FeatureExtractor
from difrep.models import create_model

TIMESTEPS = (5, 10, 25, 50, 100, 200, 400)
BLOCKS = tuple(range(1, 12))
BEST = FeatureKey(50, 6, 2)  # off the coarse lattice in t and in b: only the refinement can reach it


class Synthetic:
    """Features whose class signal has a known strength per setting: a smooth bump over the (t, b) grid,
    peaked at BEST, weaker at pool 1. x = strength x class mean + N(0, 1), so held-out accuracy falls
    with the distance from BEST; every setting's features are a fixed function of the image row."""

    def __init__(self, n: int, classes: int, seed: int, best: FeatureKey = BEST) -> None:
        self.labels = torch.arange(n) % classes
        self.classes, self.seed, self.best = classes, seed, best
        self.forward_passes = 0
        self.asked: Counter[FeatureKey] = Counter()

    def strength(self, key: FeatureKey) -> float:
        dt = TIMESTEPS.index(key.t) - TIMESTEPS.index(self.best.t)
        db = BLOCKS.index(key.b) - BLOCKS.index(self.best.b)
        return math.exp(-(dt**2 + db**2) / 4) * (1.0 if key.pool == self.best.pool else 0.8)

    def _all(self, key: FeatureKey) -> torch.Tensor:
        dim = 4 * key.pool**2
        gen = torch.Generator().manual_seed(hash((self.seed, key.t, key.b, key.pool)) % 2**31)
        means = 3.0 * torch.linalg.qr(torch.randn(dim, dim, generator=gen))[0][: self.classes]
        return self.strength(key) * means[self.labels] + torch.randn(len(self.labels), dim, generator=gen)

    def features(self, rows: torch.Tensor, keys) -> dict[FeatureKey, torch.Tensor]:
        self.asked.update(keys)
        return {k: self._all(k)[rows] for k in keys}

    def retain(self, keys) -> None:
        pass


SPACE = SearchSpace(TIMESTEPS, BLOCKS, (1, 2))


def _search(mode: str, **options):
    return search_settings(Synthetic(2400, 4, 0), Synthetic(400, 4, 1), SPACE, mode=mode, solver="lbfgs",
                           progress=False, **options)


def test_auto_finds_the_known_best_setting_off_the_coarse_lattice_at_a_fraction_of_the_grid():
    assert BEST not in SPACE.coarse()
    grid, auto = _search("grid"), _search("auto")
    for result in (grid, auto):
        c = result.choice
        assert (c["timestep"], c["block"], c["pool"]) == (BEST.t, BEST.b, BEST.pool)
        assert c["held_out_top1"] == pytest.approx(result.final.probe_val_top1, abs=1e-3)
    assert grid.choice["settings_scored"] == len(SPACE.keys) == 154
    assert auto.choice["settings_scored"] == len(auto.scored) < len(SPACE.keys), "scores at every rung, in all"
    assert len({(s.t, s.b, s.pool) for s in auto.scored}) < len(SPACE.keys) / 2, "most of the grid never scored"
    assert auto.ranking()[0] == BEST
    for which, fixed in (("t", {"b": BEST.b, "pool": BEST.pool}), ("b", {"t": BEST.t, "pool": BEST.pool})):
        values = best_values(auto.ranking(), which, 3, **fixed)
        assert len(values) == 3 and getattr(BEST, which) in values, "DifFormer's T and B from the search's ranking"
    final = [s for s in auto.scored if FeatureKey(s.t, s.b, s.pool) == BEST][-1]
    assert final.fit_images == auto.choice["fit_images"] == 2160, "the winner is scored on every fitting image"
    assert auto.choice["test_top1"] == pytest.approx(grid.choice["test_top1"], abs=1e-6), "same setting, same score"


@pytest.mark.parametrize("options", [{}, {"growth": 2.0, "keep": 0.5}, {"first_per_class": 5, "refine_top": 1}])
def test_auto_never_scores_a_setting_twice_at_one_subset_size(options):
    result = _search("auto", **options)
    seen = Counter((s.t, s.b, s.pool, s.fit_images) for s in result.scored)
    assert max(seen.values()) == 1
    sizes = sorted({s.fit_images for s in result.scored})
    assert sizes[-1] == result.choice["fit_images"] and len(sizes) >= 2, "subsets grow up to the whole fitting part"
    by_rung = Counter(s.rung for s in result.scored)
    assert all(by_rung[r] >= by_rung.get(r + 1, 0) for r in by_rung), "each rung keeps fewer settings"


def test_auto_stops_early_when_one_setting_leads_by_far():
    result = search_settings(Synthetic(6000, 4, 0), Synthetic(400, 4, 1), SPACE, mode="auto", solver="lbfgs",
                             first_per_class=60, progress=False)
    assert result.choice["timestep"] == BEST.t and result.choice["block"] == BEST.b
    assert "stopped_after_rung" in result.choice["timing"]
    sizes = {s.fit_images for s in result.scored}
    assert max(sizes) == result.choice["fit_images"] and len(sizes) < 4, "rungs in between were skipped"


def test_the_test_split_never_decides():
    train, test = Synthetic(2400, 4, 0), Synthetic(400, 4, 1, best=FeatureKey(200, 2, 1))
    result = search_settings(train, test, SPACE, mode="auto", solver="lbfgs", progress=False)
    assert (result.choice["timestep"], result.choice["block"]) == (BEST.t, BEST.b)
    assert set(test.asked) == {BEST}, "the test split is read for the chosen setting alone"


def test_bad_search_options_are_refused():
    with pytest.raises(ValueError, match="keep=1.5"):
        _search("auto", keep=1.5)
    with pytest.raises(ValueError, match="search='fast'"):
        _search("fast")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = create_model("adm", image_size=16, num_channels=32, channel_mult="1,2").eval()  # 13 blocks
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (10, 28, 28), dtype=torch.uint8, generator=gen)
    data = TensorImageDataset(images, torch.arange(10) % 2, ["a", "b"], build_transform(16))
    return model, data


def test_extracting_source_equals_the_extractor_and_runs_each_image_once_a_step(tiny, device):
    model, data = tiny
    model = model.to(device)
    keys = [FeatureKey(t, b, p) for t in (10, 300) for b in (3, 9) for p in (1, 2)]
    source = ExtractingSource(model, data, seed=3, batch_size=4, device=device, keep=keys)
    rows = torch.tensor([7, 1, 4])
    first = source.features(rows, [FeatureKey(10, 3, 1)])
    assert source.forward_passes == 3 and source.passes_at_depth == {9: 3}, "one pass to the deepest kept block"
    again = source.features(torch.tensor([1, 4, 7, 0]), keys)
    assert source.forward_passes == 3 + 1 + 4, "t=10: only row 0 is new; t=300: four new images"
    torch.testing.assert_close(again[FeatureKey(10, 3, 1)][:3], first[FeatureKey(10, 3, 1)][[1, 2, 0]])

    images = torch.stack([data[i][0] for i in (1, 4, 7, 0)]).to(device)
    expected = FeatureExtractor(model, [10, 300], [3, 9], pool=None, noise="fixed", seed=3)(images, indices=[1, 4, 7, 0])
    for key in keys:
        ref = F.adaptive_avg_pool2d(expected[(key.t, key.b)], key.pool).flatten(1).cpu()
        torch.testing.assert_close(again[key], ref, rtol=1e-4, atol=1e-5)

    source.retain([FeatureKey(10, 9, 2)])
    assert set(source.store) == {FeatureKey(10, 9, 2)}, "dropped settings free their features"
    with pytest.raises(RuntimeError, match="second forward"):
        source.features(rows, [FeatureKey(10, 3, 1)])


def test_best_values_relax_the_fixed_settings_in_order_when_too_few_match():
    ranking = [FeatureKey(50, 6, 2), FeatureKey(25, 4, 2), FeatureKey(50, 7, 2), FeatureKey(10, 9, 1),
               FeatureKey(25, 3, 2)]
    assert best_values(ranking, "b", 2, t=50, pool=2) == [6, 7], "enough at the chosen t"
    assert best_values(ranking, "b", 3, t=50, pool=2) == [4, 6, 7], "then the best at the chosen pool, any t"
    assert best_values(ranking, "b", 5, t=50, pool=2) == [3, 4, 6, 7, 9], "then at any pool"
    assert best_values(ranking, "t", 3, b=6, pool=2) == [10, 25, 50], "pool 2 has two timesteps, pool 1 adds 10"
