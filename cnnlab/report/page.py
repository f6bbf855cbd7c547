"""The sections of the report page, each a function of `Parts` (everything the report found) to HTML."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cnnlab.report.collect import Picks, Predictions
from cnnlab.report.layers import ModelTrace
from cnnlab.report.render import Rendered
from cnnlab.report.runinfo import RunInfo
from cnnlab.report.template import Raw, esc, figure, fmt, kv_table, page, table


@dataclass
class Parts:
    info: RunInfo
    title: str
    data: str
    split: str
    counts: dict[str, list[int]]  # split -> images per class, as the report read the data
    view_skipped: list[tuple[str, str]]
    preds: Predictions
    scores: dict[str, Any]
    picks: Picks
    rendered: Rendered
    trace: ModelTrace
    figures: dict[str, str] = field(default_factory=dict)  # figure name -> file
    notes: dict[str, str] = field(default_factory=dict)  # e.g. what the filters figure shows
    augment: str | None = None  # the augmentation the run used, or None
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase of the report
    val_held_out: bool = False  # the val column of `counts` was held out of train, not the data's own

    @property
    def classes(self) -> list[str]:
        return self.info.classes


def _caption(p: Parts, row: int, loss: bool = False) -> str:
    t, k = int(p.preds.labels[row]), int(p.preds.pred[row])
    probs = p.preds.probs[row]
    mark = "good" if t == k else "bad"
    text = (f"<b>{esc(p.preds.ids[row])}</b><br>true {esc(p.classes[t])}, "
            f'<span class="{mark}">predicted {esc(p.classes[k])} p={probs[k]:.3f}</span>')
    extra = ([f"p(true)={probs[t]:.3f}"] if t != k else []) + ([f"loss {p.preds.loss[row]:.3f}"] if loss else [])
    return text + (f"<br>{', '.join(extra)}" if extra else "")


def _thumb(p: Parts, row: int) -> str:
    w, h = p.rendered.sizes[row]
    px = ' class="px"' if max(w, h) <= 48 else ""
    t, k = int(p.preds.labels[row]), int(p.preds.pred[row])
    ident = p.preds.ids[row]
    return (f'<figure class="thumb" data-true="{t}" data-pred="{k}" data-row="{row}" title="{esc(ident)}"><img{px} '
            f'src="{esc(p.rendered.thumbs[row])}" width="{w}" height="{h}" alt="{esc(ident)}">'
            f"<figcaption>{esc(ident.rsplit('/', 1)[-1])}<br>p={p.preds.confidence[row]:.3f}</figcaption></figure>")


def _card(p: Parts, row: int, loss: bool = False) -> str:
    return (f'<figure class="card" data-row="{row}"><img src="{esc(p.rendered.cams[row])}" width="296" '
            f'height="96" alt="Grad-CAM of {esc(p.preds.ids[row])}"><figcaption>{_caption(p, row, loss)}'
            "</figcaption></figure>")


def _data_table(p: Parts) -> str:
    d = p.info.config.get("data", {})
    size = d.get("image_size")
    return kv_table([("source", d.get("source")), ("kind", p.info.resolved.get("data_kind")),
                     ("classes", len(p.classes)), ("image", f"{d.get('channels')}x{size}x{size} ({d.get('resize')})"),
                     ("normalization", f"{d.get('normalize')} mean {d.get('mean')} std {d.get('std')}"),
                     ("validation", _validation(p, d)),
                     ("augmentation", p.augment or "none")])


def _validation(p: Parts, d: dict) -> str:
    """Where the val images came from: the data's own val split, its test split, or held out from train."""
    if d.get("val_source") == "test":
        return "the data's test split (data.val_source=test)"
    if "val" in p.counts and not p.val_held_out:
        return f"the data's own val split ({sum(p.counts['val']):,} images)"
    seed = p.info.config.get("train", {}).get("seed")
    return f"{d.get('val_split')} of train held out (val_split, seed {seed})"


def _training_table(p: Parts) -> str:
    m, meta, t = p.info.metrics, p.info.meta, p.info.config.get("train", {})
    times = [h["time"] for h in p.info.history if isinstance(h.get("time"), (int, float))]
    best = f"{p.info.best_epoch} on {m.get('monitor')}" if p.info.best_epoch else "n/a"
    return kv_table([("epochs run", m.get("epochs_run")), ("best epoch", best),
                     ("training loop (epochs)", f"{m.get('train_time_s', 0):.1f} s"),
                     ("whole run (reading the data to the final metrics)", f"{m.get('wall_time_s', 0):.1f} s"),
                     ("mean epoch", f"{np.mean(times):.2f} s" if times else "n/a"),
                     ("optimizer", f"{t.get('optimizer')}, lr {t.get('lr') or 'default'}, batch {t.get('batch_size')}"
                                   f", {t.get('schedule')} schedule, loss {t.get('loss')}"),
                     ("device", f"{meta.get('device')} ({meta.get('precision')}, {meta.get('threads')} threads)")])


def _model_block(p: Parts) -> str:
    c = p.info.config
    model = c.get("model", {})
    rows = [("options", model.get("kwargs") or "none"), ("initial weights", model.get("weights") or "none (random)"),
            ("transfer strategy", c.get("transfer", {}).get("strategy")),
            ("balance", ", ".join(c.get("balance", {}).get("methods") or []) or "none")]
    return (f"<h3>Model: {esc(model.get('name'))}</h3>{kv_table(rows)}<details><summary>model summary (parameters "
            f"with their formulas)</summary><pre>{esc(p.info.summary)}</pre></details>")


def run_section(p: Parts) -> str:
    splits = list(p.counts)
    rows = [[name, *(p.counts[s][i] for s in splits)] for i, name in enumerate(p.classes[:60])]
    rows.append([Raw("<b>total</b>"), *(sum(p.counts[s]) for s in splits)])
    more = f"<p class=\"note\">{len(p.classes) - 60} more classes not listed.</p>" if len(p.classes) > 60 else ""
    env = kv_table([(k, v) for k, v in p.info.meta.items()])
    return "\n".join([
        f'<div class="grid2"><div><h3>Data</h3>{_data_table(p)}</div><div><h3>Training</h3>{_training_table(p)}'
        "</div></div>", "<h3>Images per class and split</h3>", table(["class", *splits], rows), more, _skipped(p),
        _model_block(p), _records(p), f"<details><summary>environment</summary>{env}</details>",
        f"<details><summary>resolved config (config.yaml)</summary><pre>{esc(p.info.config_yaml)}</pre></details>"])


def _skipped(p: Parts) -> str:
    files = list(p.info.skipped) + [s for s in p.view_skipped if s not in p.info.skipped]
    if not files:
        return "<p>Skipped files: none.</p>"
    rows = [[name, reason] for name, reason in files[:100]]
    more = f"<p class=\"note\">{len(files) - 100} more in skipped.txt.</p>" if len(files) > 100 else ""
    return (f"<details><summary>Skipped files: {len(files)}</summary>{table(['file', 'reason'], rows, left=2)}"
            f"{more}</details>")


def _records(p: Parts) -> str:
    import json

    out = []
    if p.info.transfer:
        out.append(f"<details><summary>transfer strategy record (transfer.json)</summary><pre>"
                   f"{esc(json.dumps(p.info.transfer, indent=2))}</pre></details>")
    if p.info.metrics.get("balance"):
        out.append(f"<details><summary>class balance record</summary><pre>"
                   f"{esc(json.dumps(p.info.metrics['balance'], indent=2))}</pre></details>")
    if p.info.events:
        rows = [[e.get("event", e.get("kind", "")), json.dumps({k: v for k, v in e.items()
                                                               if k not in ("event", "kind")})[:200]]
                for e in p.info.events[:50]]
        out.append(f"<details><summary>events (faults, rollbacks, resumes): {len(p.info.events)}</summary>"
                   f"{table(['event', 'details'], rows, left=2)}</details>")
    return "\n".join(out)


def curves_section(p: Parts) -> str:
    if "curves" not in p.figures:
        return "<p>No metrics.csv in the run folder (CSV logging was off), so there are no curves.</p>"
    gap = p.notes.get("gap", "")
    return figure(p.figures["curves"], "learning curves") + f"<p>{gap}</p>"


def classes_section(p: Parts) -> str:
    s = p.scores
    keys = [("images", s["count"]), ("accuracy", s["accuracy"]), ("balanced accuracy", s["balanced_accuracy"]),
            ("macro F1", s["macro_f1"]), ("mean loss (-log p(true))", s["loss"])]
    if "top5_accuracy" in s:
        keys.append(("top-5 accuracy", s["top5_accuracy"]))
    b = s["binary"]
    if b:
        keys += [("ROC AUC", b["roc_auc"]), ("PR AUC (average precision)", b["pr_auc"]),
                 ("decision threshold", Raw(f"P({esc(p.classes[1])}) &ge; {b['threshold']:.4g} "
                                            f"({esc(b['threshold_source'])})"))]
    rows = [[r["class"], r["precision"], r["recall"], r["f1"], r["support"]] for r in s["per_class"]]
    out = [kv_table(keys), table(["class", "precision", "recall", "F1", "support"], rows)]
    if b and "roc" in p.figures:
        out.append(figure(p.figures["roc"], "ROC and precision-recall curves"))
    return "\n".join(out)


def _cm_cell(p: Parts, t: int, k: int, count: int, share: float) -> str:
    alpha = 0.08 + 0.92 * share if count else 0.0
    color = "#fff" if share > 0.55 else "inherit"
    style = f' style="background:rgba(31,119,180,{alpha:.3f});color:{color}"' if count else ""
    diag = ' class="diag"' if t == k else ""
    inner = f"{count:,}<small>{100 * share:.1f}%</small>"
    if not count:
        return f"<td{diag}><span class=\"muted\">0</span></td>"
    return (f'<td{diag}{style}><a class="cell" href="#cell-{t}-{k}" data-true="{t}" data-pred="{k}" '
            f'title="true {esc(p.classes[t])}, predicted {esc(p.classes[k])}">{inner}</a></td>')


def confusion_section(p: Parts) -> str:
    cm = p.scores["confusion_matrix"]
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    k = len(p.classes)
    head = "".join(f'<th title="{esc(n)}">{esc(n[:12])}</th>' for n in p.classes)
    rows = "".join(f'<tr><th class="true" title="{esc(p.classes[t])}">{esc(p.classes[t][:16])}</th>'
                   + "".join(_cm_cell(p, t, j, int(cm[t, j]), float(share[t, j])) for j in range(k)) + "</tr>"
                   for t in range(k))
    panels = []
    for (t, j), rows_shown in sorted(p.picks.cells.items()):
        n = int(cm[t, j])
        shown = f"the {len(rows_shown)} most confident of {n:,}" if n > len(rows_shown) else f"all {n:,}"
        thumbs = "".join(_thumb(p, r) for r in rows_shown)
        panels.append(f'<div class="cell-panel" id="cell-{t}-{j}" data-true="{t}" data-pred="{j}" '
                      f'data-count="{n}" data-shown="{len(rows_shown)}"><h3>true {esc(p.classes[t])} &rarr; '
                      f"predicted {esc(p.classes[j])}: {shown} (most confident first; file / id and probability of "
                      f'the predicted class)</h3><div class="thumbs">{thumbs}</div></div>')
    return (f"<p>Rows: true class; columns: predicted class. Each cell: count and share of its row (row-normalized)."
            f" Click a cell to see its images.</p><div style=\"overflow-x:auto\"><table class=\"cm\"><tr>"
            f"<th>true \\ predicted</th>{head}</tr>{rows}</table></div>"
            f'<p class="note" id="cell-hint">No cell selected.</p>' + "\n".join(panels))


def top_losses_section(p: Parts) -> str:
    rows = p.picks.top_losses
    if not rows:
        return "<p>No mistakes on this split.</p>"
    if p.trace.target is None:
        return (f"<p>{esc(p.trace.note)}.</p><div class=\"thumbs\">"
                + "".join(_thumb(p, r) for r in rows) + "</div>")
    return (f"<p>The {len(rows)} mistakes with the highest loss, -log p(true class): the most confident mistakes, "
            "often label errors or hard cases. Each: the image, Grad-CAM and Grad-CAM++ of the predicted class "
            f"(target layer {esc(p.trace.describe_target())}).</p><div class=\"cards\">"
            + "".join(_card(p, r, loss=True) for r in rows) + "</div>")


def calibration_section(p: Parts) -> str:
    cal = p.scores["calibration"]
    verdict = ("over-confident" if cal["mean_confidence"] > cal["accuracy"] + 0.005 else
               "under-confident" if cal["mean_confidence"] < cal["accuracy"] - 0.005 else "well calibrated")
    return (f"<p>Expected calibration error (15 equal-width bins of top-class confidence): <b>{cal['ece']:.4f}</b>; "
            f"maximum calibration error {cal['mce']:.4f}. Mean confidence {cal['mean_confidence']:.4f} against "
            f"accuracy {cal['accuracy']:.4f} (argmax): {verdict} on the whole.</p>"
            + figure(p.figures["reliability"], "reliability diagram"))


def looks_section(p: Parts) -> str:
    out = [f"<p>Grad-CAM target layer, chosen automatically: <b>{esc(p.trace.describe_target())}</b>. "
           "The layer is the last convolutional feature map before global pooling (found by tracing the model, "
           "the same rule for every zoo model and timm CNN). Each image: the image, Grad-CAM and Grad-CAM++ of "
           "the predicted class.</p>" if p.trace.target is not None else f"<p>{esc(p.trace.note)}.</p>"]
    if p.trace.target is not None:
        if p.picks.gallery_note:
            out.append(f"<p class=\"note\">Shown: {esc(p.picks.gallery_note)}.</p>")
        for c, groups in p.picks.gallery.items():
            cards = "".join(_card(p, r) for r in groups["correct"] + groups["wrong"])
            out.append(f'<div class="classrow"><h3>{esc(p.classes[c])}: {len(groups["correct"])} correct, '
                       f'{len(groups["wrong"])} wrong (most confident first)</h3><div class="cards">{cards}</div>'
                       "</div>")
    if "filters" in p.figures:
        out.append(f"<h3>First-layer filters: {esc(p.trace.first_layer)}, {esc(p.notes.get('filters', ''))}</h3>"
                   + figure(p.figures["filters"], "first-layer filters"))
    if "features" in p.figures:
        out.append("<h3>Feature maps of one image after each convolutional stage</h3><p>How the filters turn an "
                   "image into features: per stage (the last feature map at each spatial size) the 8 most active "
                   "channels, each scaled to its own range.</p>" + figure(p.figures["features"], "feature maps"))
    return "\n".join(out)


def augment_section(p: Parts) -> str:
    if "augment" not in p.figures:  # the training data could not be read again: the reason is in p.augment
        return f"<p>The run trained with augmentation {esc(p.augment)}.</p>"
    return (f"<p>The run trained with augmentation {esc(p.augment)}. Top row: training images; below: random "
            "augmented versions of them, drawn as in training.</p>" + figure(p.figures["augment"], "augmentation"))


def render_page(p: Parts) -> str:
    s = p.scores
    key = (f"{esc(p.data)} [{esc(p.split)}], {s['count']:,} images: accuracy {s['accuracy']:.4f}, balanced "
           f"accuracy {s['balanced_accuracy']:.4f}, macro F1 {s['macro_f1']:.4f}, ECE {s['calibration']['ece']:.4f}")
    if s["binary"]:
        key += f", ROC AUC {s['binary']['roc_auc']:.4f}"
    sections = [("run", "Run", run_section(p)), ("curves", "Learning curves", curves_section(p)),
                ("classes", "Per class", classes_section(p)), ("confusion", "Confusion matrix", confusion_section(p)),
                ("top-losses", "Top losses", top_losses_section(p)),
                ("calibration", "Calibration", calibration_section(p)),
                ("looks", "What the network looks at", looks_section(p))]
    if p.augment:
        sections.append(("augment", "Augmentation", augment_section(p)))
    phases = ", ".join(f"{name} {sec:.1f} s" for name, sec in p.phases.items())
    footer = (f"Written by cnnlab report in {p.seconds:.1f} s ({phases}); {fmt(len(p.rendered.thumbs))} thumbnails, "
              f"{fmt(len(p.rendered.cams))} Grad-CAM images.")
    return page(p.title, key, sections, footer)
