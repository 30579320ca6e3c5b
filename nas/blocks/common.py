"""Pure rules the block kinds share (no torch): the residual rule and the expanded width."""

from nas.space.spec import make_divisible


def has_residual(b, in_chs: int, stride: int) -> bool:
    """The block-level residual add of ir / shift / grouped repeats: stride 1, channels kept,
    not 1-bit (every binary conv has its own Bi-Real shortcut)."""
    return not b.binary and stride == 1 and in_chs == b.out_chs


def mid_chs(b, in_chs: int) -> int:
    """ir / shift: the expanded width, make_divisible(in_chs * expand)."""
    return make_divisible(in_chs * b.expand)


def shift_groups(chs: int, kernel: int, shift_frac: float = 1.0) -> list[tuple[int, int, int]]:
    """A shift's channel groups in channel order: (dy, dx, channels), out[y, x] = in[y + dy, x + dx].

    shift_frac == 1 (ShiftNet's grouped shift): the channels split into k*k contiguous groups
    (`torch.tensor_split` sizes: the first C mod k^2 get one more), group i moving by
    (i // k - k // 2, i % k - k // 2). shift_frac < 1 (sparse shift): the first
    C - round(C * shift_frac) channels stay in place, the rest split the same way over the
    k*k - 1 non-zero offsets. Groups may be empty when there are fewer channels than offsets."""
    p = kernel // 2
    offsets = [(i // kernel - p, i % kernel - p) for i in range(kernel * kernel)]
    if shift_frac == 1.0:
        moved, groups = chs, []
    else:
        moved = round(chs * shift_frac)
        offsets = [o for o in offsets if o != (0, 0)]
        groups = [(0, 0, chs - moved)]
    n = len(offsets)
    return groups + [(dy, dx, moved // n + (1 if i < moved % n else 0)) for i, (dy, dx) in enumerate(offsets)]
