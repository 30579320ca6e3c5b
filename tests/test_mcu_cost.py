"""The C package's flash and SRAM priced before training (`nas.cost.mcu`) against what the C
export does: the cost model's program equals the one `nas export --format c` lowers from the
packed model (step by step, arena to the byte), archs the C export refuses are infeasible
under --target-flash / --target-sram, and the predicted flash / SRAM equal what
arm-none-eabi-size reports for the Cortex-M4 ELF (real toolchain, real qemu-system-arm)."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from nas.cost import arch_cost
from nas.cost.mcu import c_program, mcu_cost, plan_arena
from nas.cost.graph import expand
from nas.errors import UsageError
from nas.search.budgets import Budgets
from nas.search.config import build_config
from nas.space import decode

# from search_spaces/mcu.yaml (sampled; the C export takes them: ir blocks, 2/4/8 bits)
MCU_A = "in_r28_c1-stem_c8_k3_s1_w8_a8-ir_r2_k3_s2_e3_c16_w4_a4-ir_r1_k5_s2_e2_c24_w8_a8-ir_r2_k3_s1_e2_c40_w2_a2-ir_r1_k3_s2_e4_c64_w4_a4-head_c128_w8_a8-fc_n10_w8_a8"
MCU_B = "in_r36_c1-stem_c8_k3_s1_w8_a8-ir_r1_k3_s2_e1_c16_w8_a8-ir_r2_k5_s2_e2_c24_w2_a2-ir_r2_k3_s1_e4_c48_w4_a4-ir_r1_k3_s2_e2_c72_w2_a2-head_c0_w8_a8-fc_n10_w8_a8"
# a 5-minute --target-flash search's pick: 33 x 33 input, 36 convs, 47 steps (odd)
MCU_C = "in_r33_c1-stem_c8_k3_s1_w8_a8-ir_r3_k3_s2_e1_c16_w4_a4-ir_r3_k5_s2_e4_c24_w8_a8-ir_r3_k3_s1_e2_c48_w4_a4-ir_r3_k3_s2_e4_c72_w2_a2-head_c144_w8_a8-fc_n10_w8_a8"
BINARY = "in_r8_c1-stem_c16_k3_s1_w8_a8-grouped_r1_k3_s1_g1_c16_w1_a1-grouped_r1_k3_s2_g1_c16_w1_a1-head_c0_w8_a8-fc_n10_w8_a8"
REFUSED = {  # arch -> what the C export refuses in it
    "in_r28_c1-stem_c8_k3_s1_w8_a8-shift_r1_k3_s2_e1_c16_w8_a8-head_c0_w8_a8-fc_n10_w8_a8": "shift",
    "in_r28_c1-stem_c8_k3_s1_w8_a8-grouped_r1_k3_s2_g2_c16_w8_a8-head_c0_w8_a8-fc_n10_w8_a8": "channel shuffle",
    "in_r28_c1-stem_c8_k3_s1_w8_a8-dense_r1_k3_s2_gr8_c24_w8_a8-head_c0_w8_a8-fc_n10_w8_a8": "dense concatenation",
    "in_r28_c1-stem_c8_k3_s1_w8_a8-ir_r1_k3_s2_e2_c16_se0.25_w8_a8-head_c0_w8_a8-fc_n10_w8_a8": "squeeze-excite",
    "in_r28_c1-stem_c8_k3_s1_w8_a8-ir_r1_k3_s1_e2_c8_w8_a8-head_c16_w32_a32-fc_n10_w8_a8": "runs in float",
    "in_r28_c1-stem_c8_k3_s1_w8_a8-ir_r1_k3_s2_e2_c16_w1_a1-head_c0_w8_a8-fc_n10_w8_a8": "groups",
}
MCU_TOOLS = shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm")
needs_mcu = pytest.mark.skipif(not MCU_TOOLS, reason="no arm-none-eabi-gcc / qemu-system-arm (Debian: "
                                                     "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm)")


def lowered(arch: str):
    """The C export's own program for `arch` (untrained weights: sizes do not depend on them)."""
    from nas.blocks.model import build_model
    from nas.export import c as cexp
    from nas.export.bundle import payload_of
    from nas.export.deploy import packed_model
    from nas.export.fold import geometries

    torch.manual_seed(0)
    model = build_model(decode(arch)).eval()
    payload, _ = payload_of(model)
    packed = packed_model(model.arch, payload)
    prog = cexp.Program(records=cexp.record_offsets(geometries(build_model(model.arch))))
    inp = cexp.Tensor((model.arch.resolution, model.arch.resolution, model.arch.in_chs), "f32")
    cexp.lower(prog, "", packed, inp)
    arena = cexp.plan_arena(prog.ops, inp)
    return prog, arena, payload, packed


@pytest.mark.parametrize("arch", [MCU_A, MCU_B, BINARY], ids=["mcu-a", "mcu-b", "binary"])
def test_cost_model_program_is_the_c_exports_step_by_step(arch):
    prog, arena, payload, _ = lowered(arch)
    ours = c_program(expand(decode(arch)))
    assert ours.refused == []
    from nas.export.c import COST_OPS
    theirs = [(COST_OPS[op.op], op.output.shape, op.output.nbytes, [t.nbytes for t in op.inputs]) for op in prog.ops]
    mine = [(s.op, ours.tensors[s.output].shape, ours.tensors[s.output].nbytes,
             [ours.tensors[t].nbytes for t in s.inputs]) for s in ours.steps]
    assert mine == theirs
    cost = mcu_cost(decode(arch), len(payload))
    assert cost.arena_bytes == arena
    assert cost.convs == sum(op.conv is not None for op in prog.ops)
    assert cost.steps == len(prog.ops)


@pytest.mark.parametrize("arch, why", list(REFUSED.items()), ids=list(REFUSED.values()))
def test_what_the_c_export_refuses_is_infeasible_under_mcu_budgets(arch, why, tmp_path):
    spec = decode(arch)
    m = mcu_cost(spec, arch_cost(spec).weight_bytes)
    assert m.flash_bytes is None and m.sram_bytes is None and any(why in r for r in m.refused), m.refused
    budgets = Budgets(flash_bytes=10**9, sram_bytes=10**9)
    values = budgets.constraint_values(m.to_dict())
    assert values == [float(len(m.refused))] * 2 and all(v >= 1 for v in values)
    # and the C export itself refuses it (the analytic refusal is not stricter than the export)
    from nas.blocks.model import build_model
    from nas.export import c as cexp
    from nas.export.bundle import payload_of
    from nas.export.deploy import packed_model

    model = build_model(spec).eval()
    try:
        payload, _ = payload_of(model)
    except UsageError:
        return
    with pytest.raises(UsageError, match="--format c"):
        cexp.generate(packed_model(model.arch, payload), payload)


def test_exportable_arch_priced_and_constrained():
    spec = decode(MCU_A)
    m = mcu_cost(spec, arch_cost(spec).weight_bytes)
    costs = m.to_dict()
    assert m.refused == () and costs["c_refused"] == 0
    assert m.flash_bytes > arch_cost(spec).weight_bytes and m.sram_bytes > m.arena_bytes
    fits = Budgets(flash_bytes=m.flash_bytes, sram_bytes=m.sram_bytes).constraint_values(costs)
    assert fits == [0.0, 0.0]
    over = Budgets(flash_bytes=m.flash_bytes // 2, sram_bytes=m.sram_bytes * 2).constraint_values(costs)
    assert over[0] == pytest.approx((m.flash_bytes - m.flash_bytes // 2) / (m.flash_bytes // 2)) and over[1] < 0


def test_flash_and_sram_options_and_study_config_keys():
    c = build_config({"target_flash": "256KB", "target_sram": "64KB"})
    assert c.budgets.flash_bytes == 256_000 and c.budgets.sram_bytes == 64_000 and c.budgets.needs_mcu
    assert "flash_bytes <= 256 KB" in c.budgets.describe()
    f = build_config({}, {"target_flash": "1MiB", "target_sram": 65536}, "studies/x.yaml")
    assert f.budgets.flash_bytes == 1 << 20 and f.budgets.sram_bytes == 65536
    assert Budgets.from_dict(c.budgets.to_dict()) == c.budgets
    assert not build_config({"target_mem": "5MB"}).budgets.needs_mcu


def test_planner_never_overlaps_live_tensors_and_is_at_least_the_live_peak():
    """On the mcu archs' programs: tensors live at the same step never share bytes; the arena
    is at least the largest sum of live (8-aligned) tensors, which is what a plan could reach."""
    from nas.cost.mcu import program_arena

    for arch in (MCU_A, MCU_B, BINARY):
        prog = c_program(expand(decode(arch)))
        offsets, top = program_arena(prog)
        n = len(prog.steps)
        start, end = {prog.input: -1}, {prog.input: -1}
        for i, s in enumerate(prog.steps):
            start[s.output], end[s.output] = i, i
            for t in s.inputs:
                end[t] = max(end[t], i)
        end[prog.result] = n
        size = {t: -(-prog.tensors[t].nbytes // 8) * 8 for t in start}
        live_peak = max(sum(size[t] for t in start if start[t] <= i <= end[t]) for i in range(-1, n))
        assert live_peak <= top
        for a in start:
            for b in start:
                if a < b and start[a] <= end[b] and start[b] <= end[a]:
                    assert offsets[a] + size[a] <= offsets[b] or offsets[b] + size[b] <= offsets[a], (a, b)


def test_codes_take_their_bits_in_the_arena():
    """2/4-bit activation codes are stored packed per pixel, as the cost model counts them
    (`tensor_bytes`): each code tensor is the graph tensor's bytes at the reading layer's bits,
    and the planned arena is smaller than with a byte per code."""
    import dataclasses

    from nas.cost.graph import tensor_bytes
    from nas.cost.mcu import CODES, program_arena

    for arch in (MCU_A, MCU_B):
        g = expand(decode(arch))
        prog = c_program(g)
        reads = {op.name: op.read_bits[0] for op in g.ops}
        widths = set()
        for st in prog.steps:
            if st.op == "int_conv":
                x = prog.tensors[st.inputs[0]]
                assert x.kind == CODES and x.code_bits == reads[st.name], st.name
                h, w, c = x.shape
                assert x.nbytes == tensor_bytes((c, h, w), reads[st.name]), st.name
                widths.add(x.code_bits)
        assert widths >= {2, 4, 8}
        _, packed = program_arena(prog)
        prog.tensors = [dataclasses.replace(t, code_bits=8) for t in prog.tensors]
        _, byte_per_code = program_arena(prog)
        assert packed < byte_per_code


@needs_mcu
@pytest.mark.parametrize("arch", [MCU_A, MCU_B, MCU_C, BINARY], ids=["mcu-a", "mcu-b", "mcu-c", "binary"])
def test_predicted_flash_and_sram_equal_the_linkers(arch, tmp_path):
    """Exact: the ELF's flash (.text + .ARM.exidx + .data less the 10 embedded test images) and
    SRAM (.data + .bss + the painted stack peak), as `nas infer --c --mcu` measures them."""
    from nas.export import c as cexp

    _, _, payload, packed = lowered(arch)
    gen = cexp.generate(packed, payload)
    for f, text in gen["files"].items():
        (tmp_path / f).write_text(text)
    a = packed.arch
    images = np.random.default_rng(0).standard_normal((10, a.resolution, a.resolution, a.in_chs)).astype(np.float32)
    measured = cexp.mcu_check(tmp_path, images, a.fc.num_classes)
    predicted = mcu_cost(a, len(payload))
    version = subprocess.run(["arm-none-eabi-gcc", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    assert (measured["flash_bytes"], measured["sram_bytes"]) == (predicted.flash_bytes, predicted.sram_bytes), \
        f"linker {measured} vs predicted {predicted} ({version}; nas.cost.mcu's constants were measured with 12.2.1)"
    from nas.cost.mcu import KERNEL_CODE_BYTES
    assert measured["kernel_code_bytes"] == KERNEL_CODE_BYTES


@pytest.mark.slow
@needs_mcu
def test_mcu_budget_search_ends_with_a_model_whose_elf_fits(tmp_path):
    """nas search --target-flash 256KB --target-sram 64KB on search_spaces/mcu.yaml (small), then
    nas export --format c and nas infer --c --mcu: the linker's flash and SRAM are within the
    limits, and equal the prediction the search constrained."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    nas = [sys.executable, "-m", "nas"]
    journal = tmp_path / "s.journal"
    search = subprocess.run([*nas, "search", "--space", str(repo / "search_spaces/mcu.yaml"), "--target-flash",
                             "256KB", "--target-sram", "64KB", "--dataset", "fashion-mnist", "--subset", "1000",
                             "--epochs", "1", "--val-subset", "500", "--final-top", "1", "--final-subset", "1000",
                             "--final-epochs", "1", "--trials", "2", "--max-trials", "400", "--study", "mcu",
                             "--storage", f"journal:{journal}", "--no-progress", "--json"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=1200)
    assert search.returncode == 0, search.stderr[-2000:]
    summary = json.loads(search.stdout.strip().splitlines()[-1])
    assert summary["best"], summary
    out = tmp_path / "bundle"
    export = subprocess.run([*nas, "export", "--study", "mcu", "--storage", f"journal:{journal}", "--best", "-o",
                             str(out), "--format", "c", "--profile", "none"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=1200)
    assert export.returncode == 0, export.stderr[-2000:]
    infer = subprocess.run([*nas, "infer", "--bundle", str(out), "--c", "--mcu", "--json"], capture_output=True,
                           text=True, cwd=tmp_path, timeout=1200)
    assert infer.returncode == 0, infer.stderr[-2000:]
    m = json.loads(infer.stdout.strip().splitlines()[-1])["c"]["mcu"]
    assert m["identical_logits"] == m["images"]
    assert m["flash_bytes"] <= 256_000 and m["sram_bytes"] <= 64_000, m
    assert (m["flash_bytes"], m["sram_bytes"]) == (m["predicted_flash_bytes"], m["predicted_sram_bytes"]), m
