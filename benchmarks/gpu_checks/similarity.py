"""knn / cka: ``knn_accuracy`` and ``cka_matrix`` on device tensors give what they give on CPU tensors."""

from __future__ import annotations

from typing import Any

from .common import Setup, timed


def check_knn(setup: Setup) -> dict[str, Any]:
    import torch

    from difrep.evaluation import knn_accuracy

    gen = torch.Generator().manual_seed(3)
    classes, dim = 10, 256
    centres = torch.randn(classes, dim, generator=gen)
    ytr, yte = torch.randint(0, classes, (4000,), generator=gen), torch.randint(0, classes, (1000,), generator=gen)
    xtr = centres[ytr] + 2.0 * torch.randn(len(ytr), dim, generator=gen)
    xte = centres[yte] + 2.0 * torch.randn(len(yte), dim, generator=gen)
    cpu = knn_accuracy(xtr, ytr, xte, yte, classes, ks=(20, 200))
    d = setup.dev
    seconds, dev = timed(setup, lambda: knn_accuracy(xtr.to(d), ytr.to(d), xte.to(d), yte.to(d), classes,
                                                      ks=(20, 200)), 1)
    worst = 0.0
    for k in cpu:
        for top in cpu[k]:
            a, b = float(cpu[k][top]), float(dev[k][top])
            worst = max(worst, abs(a - b))
            if abs(a - b) > 100 / len(yte) + 1e-9:  # one test image may flip on a near tie
                raise AssertionError(f"k={k} top-{top}: {b:.2f}% on {d}, {a:.2f}% on cpu")
    return {"ips": len(yte) / seconds, "note": f"top-1@20 {float(cpu[20][1]):.1f}%, max diff {worst:.2f} points"}


def check_cka(setup: Setup) -> dict[str, Any]:
    import torch

    from difrep.evaluation import cka_matrix

    gen = torch.Generator().manual_seed(4)
    base = torch.randn(512, 64, generator=gen)
    xs = [base @ torch.randn(64, 96, generator=gen) + 0.5 * torch.randn(512, 96, generator=gen) for _ in range(3)]
    ys = [base @ torch.randn(64, 48, generator=gen), torch.randn(512, 8, 4, 4, generator=gen)]
    d = setup.dev
    worst = {}
    for label, bs in (("exact", None), ("minibatch", 128)):
        cpu = cka_matrix(xs, ys, batch_size=bs)
        dev = cka_matrix([x.to(d) for x in xs], [y.to(d) for y in ys], batch_size=bs)
        diff = (dev.detach().cpu().double() - cpu.double()).abs().max().item()
        worst[label] = diff
        if not diff <= 1e-6:
            raise AssertionError(f"{label} CKA differs by {diff:.2e} between {d} and cpu")
    return {"note": f"max diff exact {worst['exact']:.1e}, minibatch {worst['minibatch']:.1e}"}
