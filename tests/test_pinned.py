"""Behaviour pinned across the blocks / cost refactor (issue 23): for a fixed seed, the sampled
arch strings, their costs and the exported payload bytes are those of the code before it.

The expected values were computed on the untouched original tree (/work/main at commit
3c32728, two commits past this branch's base c83b5cc; neither commit touches sampling,
costing or the payload) by sampling `random_archs(space, 3, seed=7)` from each shipped search space,
costing each arch with `arch_cost` and building it (`torch.manual_seed(0)`) to take its
payload (`nas.export.bundle.payload_of`): length and the first 16 hex digits of its sha256.

Re-pinned deliberately by issue 21 (compound scaling): the default and mcu spaces now draw
alpha, beta under alpha * beta^2 * gamma^2 = 2 with gamma derived (no longer a trial parameter)
and phi >= 0, so their seed-7 samples changed; every value above for them was recomputed the
same way on the issue-21 branch. The binary space's seed-7 samples (all phi = 0) are unchanged.
"""

import json
import os
import subprocess
import sys

import pytest

from nas.cost import arch_cost
from nas.space import encode, load_space, random_archs

# space -> [(arch string, (params, macs, weight_bytes, peak_act_bytes, mem_access, mem_access_bytes, bops,
#                         payload bytes, payload sha256[:16]))]
PINNED = {
    "default": [
        ('in_r28_c1-stem_c16_k3_s1_w8_a8-grouped_r1_k3_s1_g4_c16_w32_a32-dense_r2_k5_s2_gr8_c24_w4_a4-ir_r2_k3_s2_e6_c40_se0.25_w32_a32_hs-grouped_r3_k3_s1_g4_c80_w2_a2-ir_r2_k3_s2_e6_c112_se0.25_w4_a4-head_c512_w8_a8-fc_n10_w8_a8',
         (477854, 22626528, 435952, 150528, 1376386, 2129988, 2992776576, 435952, '9c3ce18d66e54475')),
        ('in_r47_c1-stem_c16_k3_s1_w8_a8-ir_r2_k3_s1_e1_c16_w8_a8-grouped_r3_k5_s2_g4_c24_w4_a4-dense_r2_k5_s2_gr16_c40_w32_a32_hs-grouped_r5_k5_s1_g8_c80_w2_a2-dense_r3_k3_s2_gr16_c112_w2_a2_hs-head_c256_w8_a8-fc_n10_w8_a8',
         (257864, 64275120, 320416, 276480, 2293499, 3335321, 34317195264, 320416, '5bd1af582ec024f8')),
        ('in_r36_c1-stem_c16_k3_s1_w8_a8-ir_r1_k3_s1_e3_c16_w8_a8-ir_r2_k5_s2_e6_c24_w2_a2_hs-dense_r1_k3_s2_gr13_c48_w32_a32-ir_r3_k3_s1_e6_c88_se0.25_w8_a8_hs-ir_r2_k3_s2_e3_c120_w2_a2_hs-head_c560_w8_a8-fc_n10_w8_a8',
         (551171, 38528672, 500496, 145152, 2593494, 2449852, 4595345600, 500496, '4be46162a1d7cff6')),
    ],
    "mcu": [
        ('in_r28_c1-stem_c8_k3_s1_w8_a8-grouped_r2_k3_s2_g2_c16_w8_a8-shift_r2_k3_s2_e2_c24_w8_a8-ir_r2_k3_s1_e4_c40_w8_a8-grouped_r2_k3_s2_g2_c64_w4_a4-head_c128_w8_a8-fc_n10_w8_a8',
         (72791, 2414464, 62956, 17640, 247714, 236284, 128376832, 62956, 'd939de42e2c56362')),
        ('in_r28_c1-stem_c16_k3_s1_w8_a8-shift_r1_k3_s2_e3_c16_w8_a8-ir_r2_k3_s2_e4_c24_w1_a1-dense_r1_k3_s1_gr12_c40_w4_a4-grouped_r1_k3_s2_g4_c64_w1_a1-head_c128_w8_a8-fc_n10_w8_a8',
         (46218, 2602496, 51984, 150528, 455090, 1027116, 209578400, 51984, '8147e67849e213e0')),
        ('in_r28_c1-stem_c16_k3_s1_w8_a8-grouped_r2_k3_s2_g2_c16_w4_a4-shift_r1_k3_s2_e4_c24_w4_a4-grouped_r1_k3_s1_g8_c40_w1_a1-ir_r1_k3_s2_e2_c64_w4_a4-head_c128_w8_a8-fc_n10_w8_a8',
         (27318, 1382976, 26144, 23520, 182378, 220848, 44248320, 26144, 'a33138a12c0cc861')),
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


# The payload's bytes depend on float rounding in the weights' initialisation and
# quantization, and MKL picks its code path by CPU: on an AVX-512 host its default path gives
# other last bits than the AVX2 host the digests were taken on. MKL_CBWR=COMPATIBLE fixes
# its path, so the digests are computed in a child process started with it (MKL reads it once).
PAYLOAD_DIGESTS = """
import hashlib, json, sys
import torch
from nas.blocks import build_model
from nas.export.bundle import payload_of
from nas.space import decode
out = []
for s in json.loads(sys.argv[1]):
    torch.manual_seed(0)
    payload, _ = payload_of(build_model(decode(s)).eval())
    out.append([len(payload), hashlib.sha256(payload).hexdigest()[:16]])
print(json.dumps(out))
"""


def payload_digests(arch_strings: list[str]) -> list[tuple[int, str]]:
    env = {**os.environ, "MKL_CBWR": "COMPATIBLE", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", PAYLOAD_DIGESTS, json.dumps(arch_strings)], env=env,
                          capture_output=True, text=True, timeout=300, check=True)
    return [tuple(d) for d in json.loads(done.stdout)]


@pytest.fixture(scope="module")
def digests() -> dict[str, tuple[int, str]]:
    """arch string -> (payload bytes, digest) for every pinned arch, from one child process."""
    archs = [s for pinned in PINNED.values() for s, _ in pinned]
    return dict(zip(archs, payload_digests(archs)))


@pytest.mark.parametrize("space", list(PINNED))
def test_sampled_archs_costs_and_payload_are_unchanged(space, digests):
    archs = random_archs(load_space(f"search_spaces/{space}.yaml"), 3, seed=7)
    assert [encode(a) for a in archs] == [s for s, _ in PINNED[space]]
    for arch, (_, expected) in zip(archs, PINNED[space]):
        digest = digests[encode(arch)]
        c = arch_cost(arch)
        got = (c.params, c.macs, c.weight_bytes, c.peak_act_bytes, c.mem_access, c.mem_access_bytes, c.bops, *digest)
        assert got == expected, encode(arch)
