"""``pyganx eval RUN_DIR``: how good are a run's translations?

For each A/B generator of the run (its export specs name the source and target domain)
the test images of the source domain are translated and judged by classifiers pyganx
trains itself on the run's own training data (cached, see ``classifier.py``):

- ``target_domain``: the share of translations the domain classifier puts in the
  target domain (real test images give its ``test_accuracy``, the ceiling);
- ``digit_kept`` (bundled digits only, whose labels are known): the share whose digit,
  as read by the digit classifier, is the source image's digit;
- ``kid``: KID between translations and real target-domain test images on the domain
  classifier's features, next to ``kid_real_domains`` (real A against real B), the
  distance the generator started from.

The figures go to RUN_DIR/eval.json (written atomically) and are returned.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from pyganx_runtime.files import atomic_write_bytes, atomic_write_text

from ..engine.checkpoint import list_checkpoints
from ..engine.run import LoadedRun, load_run
from ..errors import UsageError
from .eval_data import EvalData, judge_size
from .fid import InceptionScorer, format_inception, format_setup
from .generative import evaluate_multi_domain, evaluate_noise, format_generative
from .judges import JUDGE_SIZE, digit_classifier, domain_classifier, translate
from .kid import format_kid, kid_figures, kid_mean


class _OnnxGenerator:
    """An exported model (pyganx.runtime.Translator) called like the PyTorch generator."""

    def __init__(self, path: str | Path) -> None:
        from pyganx_runtime import Translator
        self.translator = Translator(path, device="cpu")
        if self.translator.preprocessed:
            raise UsageError(f"{path}: eval takes float models, not --with-preprocessing ones")
        self.key = self.translator.metadata.get("pyganx.generator")

    def __call__(self, x: Tensor) -> Tensor:
        return torch.from_numpy(self.translator(x.cpu().numpy()))


def eval_file(run_dir: str | Path, model: str | Path | None = None) -> Path:
    """Where evaluate_run writes: RUN_DIR/eval.json, or eval-<model name>.json for a model."""
    return Path(run_dir) / (f"eval-{Path(model).stem}.json" if model else "eval.json")


def evaluate_run(path: str | Path, device: str | None = None,
                 log: Callable[[str], None] | None = None, model: str | Path | None = None,
                 inception: InceptionScorer | None = None) -> dict:
    """Evaluates a run's A/B generators; writes and returns the figures (see module doc).
    With ``model`` (an ONNX file exported from this run), that model is judged in place
    of the PyTorch generator it was exported from, and the figures go to
    ``RUN_DIR/eval-<model name>.json``. With ``inception`` (fid.InceptionScorer), every
    generator also gets FID and KID on the FID Inception network's features, under
    ``"inception"``."""
    t0 = time.time()
    run = load_run(path, device=device)
    result = _evaluate_loaded(run, EvalData(run), log, model, inception)
    result["seconds"] = round(time.time() - t0, 1)
    if model:
        result["model"] = str(model)
    atomic_write_text(eval_file(run.run_dir, model), json.dumps(result, indent=2) + "\n")
    return result


def _evaluate_loaded(run: LoadedRun, data: EvalData, log, model, inception: InceptionScorer | None = None) -> dict:
    """The figures of one loaded checkpoint, judged on ``data`` (the run's)."""
    size = min(run.info.image_size, JUDGE_SIZE)
    head = {"run": str(run.run_dir), "plugin": run.name, "checkpoint": run.checkpoint.name, "step": run.step,
            "weights": run.weights, "judge_size": size}
    all_specs = run.plugin.export_specs()
    specs = {k: s for k, s in all_specs.items()
             if tuple(s.inputs) == ("image",) and len(s.domains) == 2 and set(s.domains) <= {"A", "B"}}
    if not specs and all_specs:
        if model:
            raise UsageError("eval --model judges exported A/B translators; evaluate this run's "
                             "PyTorch generators with `pyganx eval RUN_DIR`")
        key, spec = next(iter(all_specs.items()))
        if inception is not None:
            head["inception"] = inception.describe()
        if spec.inputs and spec.inputs[0] == "z":
            return {**head, **evaluate_noise(run, data, key, spec, size, log, inception)}
        if tuple(spec.inputs) == ("image", "domain"):
            return {**head, **evaluate_multi_domain(run, data, key, spec, size, log, inception)}
    onnx_gen = _OnnxGenerator(model) if model else None
    if onnx_gen is not None:
        if onnx_gen.key not in specs:
            raise UsageError(f"{model} holds generator {onnx_gen.key!r}, not one of this run's: {', '.join(specs)}")
        specs = {onnx_gen.key: specs[onnx_gen.key]}
    if not specs:
        raise UsageError(f"pyganx eval judges A/B image translation; {run.name} "
                         f"({type(run.plugin).data_kind} data) has no A->B or B->A generator")
    gens = {k: onnx_gen if onnx_gen is not None else run.plugin.networks()[s.network] for k, s in specs.items()}
    return {**head, **_evaluate_ab(data, specs, gens, run.device, size, log, inception)}


def _evaluate_ab(data: EvalData, specs: dict, gens: dict, device, size: int, log,
                 inception: InceptionScorer | None) -> dict:
    """The figures of A <-> B generators ``gens`` (by spec name) on ``data.domains``."""
    dom = data.domains
    judge = domain_classifier(data, size, log)
    digits = digit_classifier(size, log) if data.demo == "digits" else None
    feats = {s: judge.features(judge_size(dom.test[s], size)) for s in "AB"}
    result = {
        "classifiers": {"domain": {"test_accuracy": judge.test_accuracy, "held_out": dom.held_out}},
        **kid_mean(feats["A"], feats["B"], "kid_real_domains"),
        "translations": {},
    }
    if digits is not None:
        result["classifiers"]["digit"] = {"test_accuracy": digits.test_accuracy}
    real_inception = {}
    if inception is not None:
        result["inception"] = inception.describe()
        for dst in dict.fromkeys(s.domains[1] for s in specs.values()):   # in the specs' order
            real_inception[dst] = data.once(("inception", inception, dst),
                                            partial(inception.image_features, dom.test[dst], f"real {dst}"))
    for key, spec in specs.items():
        src, dst = spec.domains
        translated = translate(gens[key], dom.test[src], device)
        fake = judge_size(translated, size)
        target = 0 if dst == "A" else 1
        row = {"from": src, "to": dst, "n": len(fake),
               "target_domain": float((judge.predict(fake) == target).double().mean())}
        if digits is not None and dom.digits[src] is not None:
            row["digit_kept"] = float((digits.predict(fake) == torch.tensor(dom.digits[src])).double().mean())
        row.update(kid_figures(judge.features(fake), feats[dst]))
        if inception is not None:
            row["inception"] = inception.compare(inception.image_features(translated, key), real_inception[dst])
        result["translations"][key] = row
    return result


def format_result(r: dict) -> str:
    """A few lines for the terminal."""
    lines = [f"{r['plugin']} at step {r['step']} ({r['weights']} weights"
             + (f", as the ONNX model {r['model']}" if "model" in r else "") + f"), judged at {r['judge_size']} px"]
    if "inception" in r:
        lines.append(f"  {format_setup(r['inception'])}")
    if "generators" in r:
        return "\n".join(lines + format_generative(r))
    c = r["classifiers"]
    lines.append(f"  domain classifier on real test images: {100 * c['domain']['test_accuracy']:.1f} %"
                 + ("" if c["domain"]["held_out"] else " (no held-out test split: measured on training images)"))
    if "digit" in c:
        lines.append(f"  digit classifier on real test images:  {100 * c['digit']['test_accuracy']:.1f} %")
    lines.append(f"  KID real A vs real B: {format_kid(r, 'kid_real_domains', label='')}")
    for k, t in r["translations"].items():
        s = f"  {k} ({t['from']}->{t['to']}, {t['n']} images): in target domain {100 * t['target_domain']:.1f} %"
        if "digit_kept" in t:
            s += f", digit kept {100 * t['digit_kept']:.1f} %"
        lines.append(f"{s}, {format_kid(t)}")
        if "inception" in t:
            lines.append(f"    {format_inception(t['inception'])}")
    return "\n".join(lines)


def headline(r: dict) -> dict[str, float]:
    """The main figures of one evaluation, flat: ``"<generator> <figure>": value``."""
    out: dict[str, float] = {}
    rows = {k: t for k, t in r.get("translations", {}).items()}
    for k, g in r.get("generators", {}).items():
        rows[k] = g.get("mean", g)
    for k, row in rows.items():
        for m in ("kid", "target_domain", "digit_kept", "class_accuracy", "fid"):
            if m in row:
                out[f"{k} {m}"] = float(row[m])
        if "fid" in row.get("inception", {}):
            out[f"{k} fid"] = float(row["inception"]["fid"])
    return out


def evaluate_checkpoints(run_dir: str | Path, device: str | None = None,
                         log: Callable[[str], None] | None = None,
                         inception: InceptionScorer | None = None) -> dict:
    """Every kept checkpoint of a run evaluated in step order (the figures over
    training, FID too with ``inception``); writes RUN_DIR/eval-checkpoints.json and a
    plot, eval-checkpoints.png."""
    run_dir = Path(run_dir)
    ckpts = list_checkpoints(run_dir / "checkpoints")
    if not ckpts:
        raise UsageError(f"{run_dir}: no checkpoints to evaluate")
    rows, data = [], None
    for ck in ckpts:
        run = load_run(ck, device=device)
        if data is None or not data.fits(run):      # the data, and the judges, read once for the run
            data = EvalData(run)
        r = _evaluate_loaded(run, data, log, None, inception)
        rows.append({"step": r["step"], **headline(r)})
        if log:
            log(f"step {r['step']}: " + ", ".join(f"{k} {v:.4f}" for k, v in rows[-1].items() if k != "step"))
    result = {"run": str(run_dir), "checkpoints": rows}
    atomic_write_text(run_dir / "eval-checkpoints.json", json.dumps(result, indent=2) + "\n")
    _plot_curve(rows, run_dir / "eval-checkpoints.png")
    return result


def _plot_curve(rows: list[dict], path: Path) -> None:
    """KID (judges'), FID (Inception, when measured) and the shares in %, over the steps."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    keys = [k for k in rows[0] if k != "step"]
    panels = [(name, ylabel, scale, group) for name, ylabel, scale, group in (
        ("kid", "KID (lower is better)", 1, [k for k in keys if k.endswith(" kid")]),
        ("fid", "FID, Inception (lower is better)", 1, [k for k in keys if k.endswith(" fid")]),
        ("share", "%", 100, [k for k in keys if not k.endswith((" kid", " fid"))])) if group]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
    steps = [r["step"] for r in rows]
    for ax, (_, ylabel, scale, group) in zip(axes[0], panels):
        for k in group:
            ax.plot(steps, [scale * r[k] for r in rows], marker="o", label=k)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write_bytes(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
