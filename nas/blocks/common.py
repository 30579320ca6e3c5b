"""Pure rules the block kinds share (no torch): the residual rule and the expanded width."""

from nas.space.spec import make_divisible


def has_residual(b, in_chs: int, stride: int) -> bool:
    """The block-level residual add of ir / shift / grouped repeats: stride 1, channels kept,
    not 1-bit (every binary conv has its own Bi-Real shortcut)."""
    return not b.binary and stride == 1 and in_chs == b.out_chs


def mid_chs(b, in_chs: int) -> int:
    """ir / shift: the expanded width, make_divisible(in_chs * expand)."""
    return make_divisible(in_chs * b.expand)
