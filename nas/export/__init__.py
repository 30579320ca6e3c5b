"""Export: a trained fake-quant network -> a deployable bundle, and running that bundle.

`payload` writes / reads the packed weight payload (`nas.cost.layout`), `fold` turns a
trained `QuantNet` into payload records (BatchNorm folded), `deploy` turns payload bytes
back into a runnable packed network, `bundle` writes / verifies / loads the bundle
directory; `cli` is `nas export`, `infer` is `nas infer`.
"""

from nas.export.bundle import export_model, load_bundle, verify_bundle

__all__ = ["export_model", "load_bundle", "verify_bundle"]
