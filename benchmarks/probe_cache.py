"""28 epochs of linear probing: from the feature cache vs the online protocol, in one run.

Online (the authors' release): every epoch runs the frozen U-Net on every training image (fresh
noise, random flip) and trains the linear head on the pooled features. Cached: the U-Net runs once
per image, then the head trains on the cached features for 28 epochs. Both use the paper's SGD
protocol (lr 1e-2, StepLR 7 epochs x 0.1). Real Fashion-MNIST images, a small ADM (random weights).

    python benchmarks/probe_cache.py --per-class 50
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from difrep import FeatureExtractor, create_model
from difrep.data import DEBIAN_FASHION_MNIST, balanced_subset, build_loader, build_transform, create_dataset
from difrep.evaluation import sgd_linear_probe, topk_accuracy
from difrep.features.cache import CacheWriter, FeatureCache

T, B, POOL, EPOCHS = 100, 6, 2, 28


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return create_model("adm", image_size=32, num_channels=32, channel_mult="1,2,2", attention_resolutions="16,8",
                        num_head_channels=8)


def split(per_class: int, name: str, train: bool):
    data = create_dataset("fashion-mnist", DEBIAN_FASHION_MNIST, name, transform=build_transform(32, train=train),
                          check=False)
    return Subset(data, balanced_subset(data.targets, per_class=per_class))


def online(model: nn.Module, per_class: int, batch: int) -> tuple[float, float]:
    start = time.perf_counter()
    train = split(per_class, "train", train=True)
    fresh = FeatureExtractor(model, [T], [B], pool=POOL, noise="fresh")
    fixed = FeatureExtractor(model, [T], [B], pool=POOL)
    dim = model.feature_info[B - 1].num_chs * POOL * POOL
    head = nn.Linear(dim, 10)
    opt = torch.optim.SGD(head.parameters(), lr=1e-2, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, 7, 0.1)
    loader = build_loader(train, batch, train=True, workers=0)
    norm = None
    for _ in range(EPOCHS):
        for images, labels, _ in loader:
            feats = fresh(images)[(T, B)].flatten(1)
            if norm is None:
                norm = (feats.mean(0), feats.std(0).clamp_min(1e-6))
            loss = F.cross_entropy(head((feats - norm[0]) / norm[1]), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    test = split(per_class, "test", train=False)
    xs, ys = [], []
    for images, labels, idx in build_loader(test, batch, workers=0):
        xs.append(fixed(images, indices=idx.tolist())[(T, B)].flatten(1))
        ys.append(labels)
    with torch.no_grad():
        acc = topk_accuracy(head((torch.cat(xs) - norm[0]) / norm[1]), torch.cat(ys))[1]
    return time.perf_counter() - start, acc


def cached(model: nn.Module, per_class: int, batch: int) -> tuple[float, float]:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        caches = {}
        for name in ("train", "test"):
            writer = CacheWriter(f"{tmp}/{name}", model, [T], [B], [POOL], {"data": name})
            writer.run(split(per_class, name, train=False), batch, workers=0, progress=False)
            caches[name] = FeatureCache(f"{tmp}/{name}")
        key = caches["train"].keys[0]
        res = sgd_linear_probe(caches["train"].features(key).to_tensor(), caches["train"].labels,
                               caches["test"].features(key).to_tensor(), caches["test"].labels, 10,
                               epochs=EPOCHS, batch_size=batch, standardize=True)  # as the online path above
    return time.perf_counter() - start, res.top1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=50, help="training and test images per class")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    model = small_model()
    t_online, acc_online = online(model, args.per_class, args.batch_size)
    t_cache, acc_cache = cached(model, args.per_class, args.batch_size)
    n = 10 * args.per_class
    print(f"linear probe, {EPOCHS} epochs, {n} train / {n} test Fashion-MNIST images, t={T} b={B} pool={POOL}, "
          f"threads={torch.get_num_threads()}")
    print("| protocol | U-Net passes | seconds | test top-1 | speed-up |")
    print("|---|---|---|---|---|")
    print(f"| online (forward every epoch) | {EPOCHS * n + n} | {t_online:.1f} | {acc_online:.1f}% | 1.00x |")
    print(f"| cached features | {2 * n} | {t_cache:.1f} | {acc_cache:.1f}% | {t_online / t_cache:.1f}x |")


if __name__ == "__main__":
    main()
