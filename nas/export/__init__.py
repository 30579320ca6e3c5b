"""Export: a trained fake-quant network -> a deployable bundle, and running that bundle.

`payload` writes / reads the packed weight payload (`nas.cost.layout`), `fold` turns a
trained `QuantNet` into payload records (BatchNorm folded), `convert` is the conversion
table (fake-quant module + bits -> the deployable module of `packed`: binary, integer or
float), `deploy.packed_model` turns payload bytes back into a runnable packed network through
that table, `bundle` writes / verifies / loads the bundle directory, `trial.export_trial` is
the use case of `nas export` (a study's trial -> a bundle); `infer` is `nas infer`, `bench`
is `nas bench infer`.
"""

from nas.export.bundle import export_model, load_bundle, verify_bundle
from nas.export.trial import export_trial

__all__ = ["export_model", "export_trial", "load_bundle", "verify_bundle"]
