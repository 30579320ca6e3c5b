"""timm's EfficientNet / MobileNetV2 / MobileNetV3 / MnasNet families as our specs.

The arch definitions below are timm's own block strings, copied (timm 1.0.x,
`timm/models/efficientnet.py`: `_gen_efficientnet`, `_gen_mobilenet_v2`, `_gen_mnasnet_a1`,
`_gen_mnasnet_b1`; `timm/models/mobilenetv3.py`: `_gen_mobilenet_v3`) so that costing them
needs neither torch nor timm. They are decoded here with timm's rules:

- channels: `round_channels(c, multiplier)` = make_divisible(c * multiplier, 8) for every
  block, and for the stem unless the family fixes it;
- depth: a stage's repeats become ceil(r * depth_multiplier) (timm's depth_trunc='ceil');
- the first block of a stage has the stage's stride, the rest stride 1;
- ``ds`` (DepthwiseSeparableConv) is our ``ir`` with e=1, ``ir`` is ``ir``, a final ``cn``
  (1x1 ConvBnAct) is our head conv; ``nre`` selects ReLU, ``noskip`` only appears where
  no skip is possible anyway (channels change).

What our spec cannot say is carried by `Conventions` (MobileNetV3: squeeze-excite width
make_divisible(mid * 0.25, 8) and the 1x1 conv with bias after the global pool), and what
does not change any cost is noted (activations other than ReLU / hard-swish).
`nas cost` cross-checks every translation against timm's built module.
"""

import math
from dataclasses import dataclass, field

from nas.cost.graph import PROJECT, Conventions
from nas.space.spec import make_divisible
from nas.space.spec import ArchSpec, BlockSpec, ConvSpec, FcSpec

EFFICIENTNET = (
    "ds_r1_k3_s1_e1_c16_se0.25", "ir_r2_k3_s2_e6_c24_se0.25", "ir_r2_k5_s2_e6_c40_se0.25",
    "ir_r3_k3_s2_e6_c80_se0.25", "ir_r3_k5_s1_e6_c112_se0.25", "ir_r4_k5_s2_e6_c192_se0.25",
    "ir_r1_k3_s1_e6_c320_se0.25",
)
MOBILENETV2 = (
    "ds_r1_k3_s1_c16", "ir_r2_k3_s2_e6_c24", "ir_r3_k3_s2_e6_c32", "ir_r4_k3_s2_e6_c64",
    "ir_r3_k3_s1_e6_c96", "ir_r3_k3_s2_e6_c160", "ir_r1_k3_s1_e6_c320",
)
MNASNET_A1 = (
    "ds_r1_k3_s1_e1_c16_noskip", "ir_r2_k3_s2_e6_c24", "ir_r3_k5_s2_e3_c40_se0.25", "ir_r4_k3_s2_e6_c80",
    "ir_r2_k3_s1_e6_c112_se0.25", "ir_r3_k5_s2_e6_c160_se0.25", "ir_r1_k3_s1_e6_c320",
)
MNASNET_B1 = (
    "ds_r1_k3_s1_c16_noskip", "ir_r3_k3_s2_e3_c24", "ir_r3_k5_s2_e3_c40", "ir_r3_k5_s2_e6_c80",
    "ir_r2_k3_s1_e6_c96", "ir_r4_k5_s2_e6_c192", "ir_r1_k3_s1_e6_c320_noskip",
)
# MobileNetV3: one tuple per stage (timm lists several block strings in some stages).
MOBILENETV3_LARGE = (
    ("ds_r1_k3_s1_e1_c16_nre",), ("ir_r1_k3_s2_e4_c24_nre", "ir_r1_k3_s1_e3_c24_nre"),
    ("ir_r3_k5_s2_e3_c40_se0.25_nre",),
    ("ir_r1_k3_s2_e6_c80", "ir_r1_k3_s1_e2.5_c80", "ir_r2_k3_s1_e2.3_c80"),
    ("ir_r2_k3_s1_e6_c112_se0.25",), ("ir_r3_k5_s2_e6_c160_se0.25",), ("cn_r1_k1_s1_c960",),
)
MOBILENETV3_SMALL = (
    ("ds_r1_k3_s2_e1_c16_se0.25_nre",), ("ir_r1_k3_s2_e4.5_c24_nre", "ir_r1_k3_s1_e3.67_c24_nre"),
    ("ir_r1_k5_s2_e4_c40_se0.25", "ir_r2_k5_s1_e6_c40_se0.25"), ("ir_r2_k5_s1_e3_c48_se0.25",),
    ("ir_r3_k5_s2_e6_c96_se0.25",), ("cn_r1_k1_s1_c576",),
)

MOBILENETV3_CONVENTIONS = {1280: Conventions(se_rd="mid_divisible", post_pool_chs=1280),
                           1024: Conventions(se_rd="mid_divisible", post_pool_chs=1024)}


@dataclass(frozen=True)
class Family:
    stages: tuple  # of block strings, or of tuples of block strings (one per stage)
    stem: int
    act: str  # the family's activation, as timm names it
    head: str  # "efficientnet": round(1280); "mobilenetv2": max(1280, round(1280)); "fixed": 1280
    mobilenetv3_features: int = 0  # MobileNetV3: channels of the post-pool conv_head


FAMILIES = {
    "efficientnet": Family(EFFICIENTNET, 32, "swish", "efficientnet"),
    "mobilenetv2": Family(MOBILENETV2, 32, "relu6", "mobilenetv2"),
    "mnasnet_a1": Family(MNASNET_A1, 32, "relu", "fixed"),
    "mnasnet_b1": Family(MNASNET_B1, 32, "relu", "fixed"),
    "mobilenetv3_large": Family(MOBILENETV3_LARGE, 16, "hard_swish", "cn", 1280),
    "mobilenetv3_small": Family(MOBILENETV3_SMALL, 16, "hard_swish", "cn", 1024),
}

# timm model name -> (family, channel multiplier, depth multiplier, paper resolution)
_EFFNET_SCALES = {"b0": (1.0, 1.0, 224), "b1": (1.0, 1.1, 240), "b2": (1.1, 1.2, 260), "b3": (1.2, 1.4, 300),
                  "b4": (1.4, 1.8, 380), "b5": (1.6, 2.2, 456), "b6": (1.8, 2.6, 528), "b7": (2.0, 3.1, 600)}
MODELS = {
    **{f"{p}efficientnet_{b}": ("efficientnet", w, d, r) for b, (w, d, r) in _EFFNET_SCALES.items()
       for p in ("", "tf_")},
    **{f"mobilenetv2_{m}": ("mobilenetv2", int(m) / 100, 1.0, 224) for m in ("035", "050", "075", "100", "140")},
    **{f"mnasnet_{m}": ("mnasnet_b1", int(m) / 100, 1.0, 224) for m in ("050", "075", "100", "140")},
    **{f"semnasnet_{m}": ("mnasnet_a1", int(m) / 100, 1.0, 224) for m in ("050", "075", "100", "140")},
    **{f"mobilenetv3_large_{m}": ("mobilenetv3_large", int(m) / 100, 1.0, 224) for m in ("075", "100")},
    **{f"mobilenetv3_small_{m}": ("mobilenetv3_small", int(m) / 100, 1.0, 224) for m in ("050", "075", "100")},
}


@dataclass(frozen=True)
class TimmSpec:
    name: str
    arch: ArchSpec
    conventions: Conventions
    notes: tuple[str, ...] = field(default_factory=tuple)


def round_channels(chs: int, multiplier: float) -> int:
    """timm's `round_channels` (divisor 8)."""
    return make_divisible(chs * multiplier, 8)


def _parse(block: str) -> tuple[str, dict]:
    """One timm block string -> (type, options). Only the keys these families use."""
    kind, *tokens = block.split("_")
    opts = {"act": None, "noskip": False, "se": 0.0, "e": 1.0}
    for t in tokens:
        if t == "nre":
            opts["act"] = "relu"
        elif t == "noskip":
            opts["noskip"] = True
        elif t.startswith("se"):
            opts["se"] = float(t[2:])
        elif t[0] in "rksc":
            opts[t[0]] = int(t[1:])
        elif t[0] == "e":
            opts["e"] = float(t[1:])
        else:  # a timm key these families do not use: refuse rather than mis-cost
            raise ValueError(f"timm block string {block!r}: key {t!r} is not translated")
    return kind, opts


def _act(family_act: str, block_act: str | None) -> tuple[str, str | None]:
    """(our act, note) for a block: ReLU / hard-swish map exactly; others cost the same."""
    name = block_act or family_act
    if name in ("relu", "hard_swish"):
        return ("relu" if name == "relu" else "hswish"), None
    return "relu", f"activation {name} costed as relu (activations cost 0 MACs and 0 params either way)"


def timm_spec(name: str, resolution: int | None = None, num_classes: int = 1000, in_chs: int = 3) -> TimmSpec | None:
    """The spec of timm model `name` at `resolution` (default: its paper resolution), or
    None when `name` is not one of the translated families."""
    if name not in MODELS:
        return None
    family_name, width, depth, default_res = MODELS[name]
    fam = FAMILIES[family_name]
    resolution = resolution or default_res
    notes = set()
    fixed_stem = fam.mobilenetv3_features and width < 0.75  # timm: fix_stem=channel_multiplier < 0.75
    stem_chs = fam.stem if fixed_stem else round_channels(fam.stem, width)
    stem_act, note = _act(fam.act, None)
    notes.add(note)
    blocks, head_chs, head_act = [], 0, stem_act
    chs = stem_chs
    for stage in fam.stages:
        strings = stage if isinstance(stage, tuple) else (stage,)
        parsed = [_parse(s) for s in strings]
        if len(parsed) > 1 and depth != 1.0:
            raise ValueError(f"{name}: depth multiplier on multi-block stages is not translated")
        for j, (kind, o) in enumerate(parsed):
            out = round_channels(o["c"], width)
            act, note = _act(fam.act, o["act"])
            notes.add(note)
            if kind == "cn":
                if stage is not fam.stages[-1] or o["k"] != 1:
                    raise ValueError(f"{name}: a 'cn' block other than the final 1x1 is not translated")
                head_chs, head_act = out, act
                continue
            repeats = math.ceil(o["r"] * depth) if len(parsed) == 1 else o["r"]
            stride = o["s"] if j == 0 else 1
            if o["noskip"] and stride == 1 and chs == out:
                raise ValueError(f"{name}: a 'noskip' block that could skip is not translated")
            blocks.append(BlockSpec(kind="ir", out_chs=out, repeats=repeats, kernel=o["k"], stride=stride,
                                    expand=o["e"], se=o["se"], act=act))
            chs = out
    if fam.head == "efficientnet":
        head_chs = round_channels(1280, width)
    elif fam.head == "mobilenetv2":
        head_chs = max(1280, round_channels(1280, width))
    elif fam.head == "fixed":
        head_chs = 1280
    conventions = MOBILENETV3_CONVENTIONS[fam.mobilenetv3_features] if fam.mobilenetv3_features else PROJECT
    if fam.mobilenetv3_features:
        notes.add("MobileNetV3 conventions: squeeze-excite width make_divisible(mid*0.25, 8); "
                  f"1x1 conv {head_chs}->{fam.mobilenetv3_features} with bias after the global pool")
    arch = ArchSpec(
        resolution=resolution, in_chs=in_chs,
        stem=ConvSpec(out_chs=stem_chs, kernel=3, stride=2, act=stem_act),
        blocks=tuple(blocks),
        head=ConvSpec(out_chs=head_chs, kernel=1, act=head_act),
        fc=FcSpec(num_classes=num_classes),
        meta={"source": f"timm:{name}"},
    )
    return TimmSpec(name=name, arch=arch, conventions=conventions, notes=tuple(sorted(n for n in notes if n)))
