"""`cnnlab report`: one offline HTML page that shows what happened in a run.

    from cnnlab.report import write_report
    page = write_report("runs/...")            # RUN/report/index.html (+ images), opens from file://

Sections: the run (data, model, config, records, timings), learning curves, per-class metrics (ROC / PR with the
decision threshold for two classes), a confusion matrix whose cells show their images, top losses with Grad-CAM,
calibration, Grad-CAM per class with an automatically chosen layer, first-layer filters, feature maps per stage,
and an augmentation preview. Modules: split (chunked reading), collect (predictions, scores, picks), layers
(tracing: target layer, stages), gradcam, render (thumbnails, overlays), figures (matplotlib), runinfo, page and
template (HTML), build (write_report).
"""

from cnnlab.report.build import report_if_asked, write_report

__all__ = ["report_if_asked", "write_report"]
