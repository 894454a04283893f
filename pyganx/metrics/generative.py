"""``pyganx eval`` for the variants that do not translate A <-> B: noise-to-image
(DCGAN), class-conditional (cGAN) and multi-domain translation (StarGAN).

The judges are classifiers pyganx trains itself (cached, see ``classifier.py``):
- the digit classifier on the bundled digits (both styles, 10 classes);
- otherwise a classifier of the run's own classes or domains (one sub-folder each),
  or for the bundled photos the china/flower classifier.

Figures:
- noise models: KID between generated images and real test images on the judge's
  features (``kid_real_halves``, two halves of the real test set, is the floor a
  perfect generator would reach);
- conditional models: ``class_accuracy``, the share of images generated for class k
  that the judge reads as k (per class and overall), and KID as above;
- multi-domain models: every test image translated into every other domain:
  ``target_domain`` (the domain judge puts it there), ``digit_kept`` (bundled digits:
  the digit judge still reads the source digit) and KID against real test images of the
  target domain, per target domain and averaged.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from ..engine.run import LoadedRun
from ..errors import DataError
from ..nn import one_hot
from .eval_data import MAX_TEST, EvalData, judge_size
from .fid import InceptionScorer, format_inception
from .judges import class_classifier, digit_classifier, noise_judge, translate
from .kid import format_kid, kid_figures, kid_mean

#: Images generated per evaluation (noise models), per class (conditional ones), and test
#: images translated into every other domain (multi-domain ones).
N_GENERATED, N_PER_CLASS, N_TRANSLATED = 1000, 100, 2000
#: Seed of the evaluation noise (distinct from the sample grids').
EVAL_SEED = 1234


def _noise(n: int, z_dim: int, seed: int = EVAL_SEED) -> Tensor:
    return torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _generate(net, z: Tensor, labels: Tensor | None, device, size: int, batch: int = 100,
              inception: InceptionScorer | None = None) -> tuple[Tensor, Tensor | None]:
    """The generated images at the judges' ``size``, and with ``inception`` their
    Inception features (taken batch by batch at the generator's own size)."""
    out, feats = [], []
    for i in range(0, len(z), batch):
        zz = z[i:i + batch].to(device)
        y = None if labels is None else labels[i:i + batch].to(device)
        img = (net(zz) if y is None else net(zz, y)).float().clamp(-1, 1).cpu()
        out.append(judge_size(img, size))
        if inception is not None:
            feats.append(inception.image_features(img, progress=False))
    return torch.cat(out), (torch.cat(feats) if inception is not None else None)


def evaluate_noise(run: LoadedRun, data: EvalData, key: str, spec, size: int, log=None,
                   inception: InceptionScorer | None = None) -> dict:
    """Figures of a ``z`` or ``(z, label)`` generator (see module doc), judged on ``data``
    (the run's); with ``inception``, also FID and KID against the real test images on
    Inception features."""
    net = run.plugin.networks()[spec.network]
    conditional = "label" in spec.inputs
    real_images = data.test_split(2 * MAX_TEST).images
    real = judge_size(real_images, size)
    if conditional:
        judge = digit_classifier(size, log) if data.demo == "digits" else class_classifier(data, size, log)
        k = len(spec.domains)
        labels = torch.arange(k).repeat_interleave(N_PER_CLASS)
        fake, fake_inception = _generate(net, _noise(len(labels), spec.z_dim), labels, run.device, size,
                                         inception=inception)
        pred = judge.predict(fake)
        per_class = {spec.domains[c]: float((pred[labels == c] == c).double().mean()) for c in range(k)}
        row = {"n": len(fake), "class_accuracy": float((pred == labels).double().mean()),
               "class_accuracy_per_class": per_class}
    else:
        judge = noise_judge(data, size, log)
        fake, fake_inception = _generate(net, _noise(N_GENERATED, spec.z_dim), None, run.device, size,
                                         inception=inception)
        row = {"n": len(fake)}
    feats_real = judge.features(real)
    row.update(kid_figures(judge.features(fake), feats_real))
    half = len(feats_real) // 2
    row.update(kid_mean(feats_real[:half], feats_real[half:], "kid_real_halves"))
    if inception is not None:
        real_inception = data.once(("inception", inception, "real"),
                                   partial(inception.image_features, real_images, "real"))
        row["inception"] = inception.compare(fake_inception, real_inception)
    return {"classifiers": {"judge": {"classes": judge.classes, "test_accuracy": judge.test_accuracy}},
            "generators": {key: row}}


class _Into(torch.nn.Module):
    """A multi-domain generator fixed to one target domain (index ``k`` of ``n``)."""

    def __init__(self, net, k: int, n: int) -> None:
        super().__init__()
        self.net, self.k, self.n = net, k, n

    def forward(self, images: Tensor) -> Tensor:
        labels = torch.full((images.shape[0],), self.k, device=images.device)
        return self.net(images, one_hot(labels, self.n, images.dtype))


def evaluate_multi_domain(run: LoadedRun, data: EvalData, key: str, spec, size: int, log=None,
                          inception: InceptionScorer | None = None) -> dict:
    """Figures of an ``(image, domain)`` generator (see module doc), judged on ``data``
    (the run's); with ``inception``, also FID and KID per target domain against its real
    test images."""
    net = run.plugin.networks()[spec.network]
    domains = list(spec.domains)
    judge = class_classifier(data, size, log)
    if judge.classes != domains:
        raise DataError(f"the run's domains {domains} differ from its data's {judge.classes}")
    test = data.test_split(N_TRANSLATED)
    x, dom, digits = test.images, test.labels, test.digits
    if digits is not None:
        digit_judge = digit_classifier(size, log)
    real = judge_size(x, size)
    feats = {d: judge.features(real[dom == k]) for k, d in enumerate(domains)}
    if inception is not None:
        real_inception = {d: data.once(("inception", inception, d),
                                       partial(inception.image_features, x[dom == k], f"real {d}"))
                          for k, d in enumerate(domains)}
    rows = {}
    for k, d in enumerate(domains):
        src = dom != k
        if int(src.sum()) < 2 or len(feats[d]) < 2:
            continue
        translated = translate(_Into(net, k, len(domains)), x[src], run.device)
        fake = judge_size(translated, size)
        row = {"n": len(fake), "target_domain": float((judge.predict(fake) == k).double().mean())}
        if digits is not None:
            row["digit_kept"] = float((digit_judge.predict(fake) == digits[src]).double().mean())
        row.update(kid_figures(judge.features(fake), feats[d]))
        if inception is not None:
            row["inception"] = inception.compare(inception.image_features(translated, f"into {d}"), real_inception[d])
        rows[d] = row
    mean = {m: sum(r[m] for r in rows.values()) / len(rows) for m in ("target_domain", "digit_kept", "kid")
            if rows and all(m in r for r in rows.values())}
    if inception is not None and rows and all("fid" in r["inception"] for r in rows.values()):
        mean["fid"] = sum(r["inception"]["fid"] for r in rows.values()) / len(rows)
    out = {"classifiers": {"domain": {"classes": judge.classes, "test_accuracy": judge.test_accuracy}},
           "generators": {key: {"into": rows, "mean": mean}}}
    if digits is not None:
        out["classifiers"]["digit"] = {"classes": digit_judge.classes, "test_accuracy": digit_judge.test_accuracy}
    return out


def format_generative(r: dict) -> list[str]:
    lines = []
    for name, c in r["classifiers"].items():
        lines.append(f"  {name} classifier ({len(c['classes'])} classes) on real test images: "
                     f"{100 * c['test_accuracy']:.1f} %")
    for key, g in r["generators"].items():
        if "into" in g:
            for d, row in g["into"].items():
                s = f"  {key} into {d} ({row['n']} images): in target domain {100 * row['target_domain']:.1f} %"
                if "digit_kept" in row:
                    s += f", digit kept {100 * row['digit_kept']:.1f} %"
                lines.append(f"{s}, {format_kid(row)}")
                if "inception" in row:
                    lines.append(f"    {format_inception(row['inception'])}")
            m = g["mean"]
            s = f"  {key} mean over domains: in target domain {100 * m['target_domain']:.1f} %"
            if "digit_kept" in m:
                s += f", digit kept {100 * m['digit_kept']:.1f} %"
            lines.append(s + f", KID {m['kid']:.4f}" + (f", FID {m['fid']:.3f}" if "fid" in m else ""))
        else:
            s = f"  {key} ({g['n']} generated images):"
            if "class_accuracy" in g:
                s += f" class accuracy {100 * g['class_accuracy']:.1f} %,"
            lines.append(f"{s} {format_kid(g)} (real vs real: {format_kid(g, 'kid_real_halves', label='')})")
            if "inception" in g:
                lines.append(f"    {format_inception(g['inception'])}")
    return lines

