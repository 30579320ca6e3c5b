"""Behaviour pinned across the blocks / cost refactor (issue 23): for a fixed seed, the sampled
arch strings, their costs and the exported payload bytes are those of the code before it.

The expected values were computed on the untouched original tree (/work/main at commit
3c32728, two commits past this branch's base c83b5cc; neither commit touches sampling,
costing or the payload) by sampling `random_archs(space, 3, seed=7)` from each shipped search space,
costing each arch with `arch_cost` and building it (`torch.manual_seed(0)`) to take its
payload (`nas.export.bundle.payload_of`): length and the first 16 hex digits of its sha256.
"""

import hashlib

import pytest
import torch

from nas.blocks import build_model
from nas.cost import arch_cost
from nas.export.bundle import payload_of
from nas.space import encode, load_space, random_archs

# space -> [(arch string, (params, macs, weight_bytes, peak_act_bytes, mem_access, mem_access_bytes, bops,
#                         payload bytes, payload sha256[:16]))]
PINNED = {
    "default": [
        ('in_r28_c1-stem_c24_k3_s1_w8_a8-ir_r2_k3_s1_e3_c24_w8_a8-dense_r3_k3_s2_gr17_c32_w4_a4_hs-shift_r2_k3_s2_e3_c56_w32_a32-shift_r3_k5_s1_e3_c112_w4_a4-ir_r3_k3_s2_e6_c160_se0.25_w4_a4-head_c736_w8_a8-fc_n10_w8_a8',
         (1413219, 67754624, 949274, 131712, 3633930, 3167938, 3315117056, 949274, '742f6ef23080fd45')),
        ('in_r24_c1-stem_c16_k3_s1_w8_a8-grouped_r1_k3_s1_g4_c16_w8_a8-ir_r1_k5_s2_e6_c24_w2_a2_hs-dense_r3_k3_s2_gr16_c40_w2_a2-grouped_r3_k3_s1_g8_c80_w8_a8-grouped_r2_k3_s2_g2_c112_w2_a2_hs-head_c512_w8_a8-fc_n10_w8_a8',
         (241411, 9755072, 138212, 27648, 728186, 447148, 141452288, 138212, '60f992b74d4fe00b')),
        ('in_r28_c1-stem_c16_k3_s1_w8_a8-grouped_r1_k3_s1_g2_c16_w8_a8-grouped_r2_k3_s2_g2_c24_w8_a8_hs-shift_r3_k3_s2_e6_c40_w32_a32-dense_r2_k3_s1_gr24_c80_w2_a2_hs-grouped_r2_k3_s2_g2_c112_w2_a2-head_c256_w8_a8-fc_n10_w8_a8',
         (256828, 9993856, 282440, 141120, 737410, 1316012, 3090256384, 282440, 'c2a781b3c018209b')),
    ],
    "mcu": [
        ('in_r28_c1-stem_c16_k3_s1_w8_a8-grouped_r2_k3_s2_g4_c16_w8_a8-dense_r2_k3_s2_gr7_c24_w2_a2-shift_r1_k3_s1_e2_c40_w4_a4-ir_r1_k3_s2_e4_c56_w2_a2-head_c0_w8_a8-fc_n10_w8_a8',
         (28498, 2041504, 14442, 15680, 203770, 143890, 31832512, 14442, '791ccd1f093728c9')),
        ('in_r28_c1-stem_c16_k3_s1_w8_a8-grouped_r2_k3_s2_g4_c16_w8_a8-shift_r2_k5_s2_e2_c24_w8_a8-shift_r2_k3_s1_e2_c40_w8_a8-ir_r1_k3_s2_e4_c64_w8_a8-head_c0_w8_a8-fc_n10_w8_a8',
         (34827, 1579904, 39748, 15680, 201226, 207804, 101113856, 39748, '888a415980312012')),
        ('in_r28_c1-stem_c16_k3_s1_w8_a8-grouped_r3_k3_s2_g2_c16_w8_a8-grouped_r3_k3_s2_g4_c24_w2_a2-ir_r2_k3_s1_e4_c48_w1_a1-grouped_r3_k3_s2_g8_c72_w1_a1-head_c144_w8_a8-fc_n10_w8_a8',
         (97857, 4169328, 103684, 112896, 555514, 1231312, 400585056, 103684, 'd0c90733921461b7')),
    ],
    "binary": [
        ('in_r28_c1-stem_c32_k3_s1_w8_a8_noact-grouped_r2_k3_s1_g1_c64_w1_a1-ir_r1_k3_s2_e1_c128_w1_a1-grouped_r2_k3_s2_g1_c256_w1_a1-head_c0_w8_a8-fc_n10_w8_a8',
         (1137836, 106312960, 204408, 602112, 3455866, 7086128, 1349007616, 204408, '034a59885d7be46a')),
        ('in_r28_c1-stem_c32_k3_s1_w8_a8_noact-grouped_r2_k3_s1_g1_c64_w1_a1-grouped_r2_k3_s2_g1_c128_w1_a1-grouped_r1_k3_s2_g1_c256_w1_a1-head_c0_w8_a8-fc_n10_w8_a8',
         (727276, 122256384, 147064, 602112, 3309114, 7790832, 1364951040, 147064, 'e8b26853d0daf5c3')),
        ('in_r28_c1-stem_c32_k3_s1_w8_a8_noact-ir_r1_k3_s1_e1_c64_w1_a1-grouped_r2_k3_s2_g1_c128_w1_a1-ir_r1_k3_s2_e1_c256_w1_a1-head_c0_w8_a8-fc_n10_w8_a8',
         (339020, 58313344, 105592, 602112, 1999450, 5088464, 1301008000, 105592, 'da478d6327159b1c')),
    ],
}


@pytest.mark.parametrize("space", list(PINNED))
def test_sampled_archs_costs_and_payload_are_unchanged(space):
    archs = random_archs(load_space(f"search_spaces/{space}.yaml"), 3, seed=7)
    assert [encode(a) for a in archs] == [s for s, _ in PINNED[space]]
    for arch, (_, expected) in zip(archs, PINNED[space]):
        c = arch_cost(arch)
        torch.manual_seed(0)
        payload, _ = payload_of(build_model(arch).eval())
        got = (c.params, c.macs, c.weight_bytes, c.peak_act_bytes, c.mem_access, c.mem_access_bytes, c.bops,
               len(payload), hashlib.sha256(payload).hexdigest()[:16])
        assert got == expected, encode(arch)
