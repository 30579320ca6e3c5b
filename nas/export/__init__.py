"""Export: a trained fake-quant network -> a deployable bundle, and running that bundle.

`payload` writes / reads the packed weight payload (`nas.cost.layout`), `fold` turns a
trained `QuantNet` into payload records (BatchNorm folded), `convert` is the conversion
table (fake-quant module + bits -> the deployable module of `packed`: binary, integer or
float), `deploy.packed_model` turns payload bytes back into a runnable packed network through
that table, `bundle` writes / verifies / loads the bundle directory, `trial.export_trial` is
the use case of `nas export` (a study's trial -> a bundle); `infer` is `nas infer`, `bench`
is `nas bench infer`.

`nas.export` is also callable: ``nas.export("fm-100k", "out/")`` is `nas export --study fm-100k
--best -o out/` from Python (see `export` below).
"""

import sys
import types

from nas.export.bundle import export_model, load_bundle, verify_bundle
from nas.export.trial import export_trial

__all__ = ["export", "export_model", "export_trial", "load_bundle", "verify_bundle"]


def export(study: str, output, *, trial: int | None = None, storage: str | None = None, force: bool = False,
           formats=(), profile: str | None = None) -> dict:
    """`nas export` from Python: write the bundle of a study's search result (or of `trial`) to
    `output` and return its manifest (``bundle``: the folder). storage: the study's Optuna URL
    (default studies/<study>.journal); force: replace an existing bundle; formats: extra targets
    such as ("onnx", "c"); profile: device profile file for the manifest's latency_ms (None:
    `$NAS_PROFILE`, else this host's; "none": no prediction)."""
    from nas.cost.latency import profile_option
    from nas.export.formats import parse_formats

    formats = parse_formats(formats if isinstance(formats, str) else ",".join(formats))  # checked before any work
    return export_trial(study, output, storage=storage, trial=trial, force=force, formats=formats,
                        profile=profile_option(profile, None, "profile="))


class _CallableModule(types.ModuleType):
    """`nas.export` is this package AND the function `export` above (as `nas.cost` is)."""

    def __call__(self, study: str, output, **kwargs) -> dict:
        return export(study, output, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
