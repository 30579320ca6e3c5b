"""Where training runs: `--device auto | cpu | cuda | cuda:N`, resolved once before any work.

`auto` is the first CUDA device when torch sees one, else the CPU. Asking for CUDA where
there is none, or for a device index the machine does not have, is a `UsageError` (one line,
exit 2) raised before any data is loaded or any study is opened. Training on a GPU keeps the
model and the data on the device and lays activations out channels-last; bf16 autocast is
optional (`amp`), off by default because fake-quant codes under bf16 differ from the
deployed integer arithmetic (docs/training.md). Evaluation of packed / integer models stays
on the CPU kernels: the trainer hands the model back on the CPU.
"""

import re

from nas.errors import UsageError

DEVICE_FORM = re.compile(r"auto|cpu|cuda(:[0-9]{1,3})?")
CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(text, where: str = "--device"):
    """`text` ("auto", "cpu", "cuda", "cuda:N" or a `torch.device`) -> the `torch.device` to train on."""
    import torch

    if isinstance(text, torch.device):
        text = str(text)
    if not isinstance(text, str) or not DEVICE_FORM.fullmatch(text):
        raise UsageError(f"{where} {str(text)[:100]!r}: expected {CHOICES}")
    if text == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if text == "auto":
        return torch.device("cuda", 0) if available else torch.device("cpu")
    if not available:
        built = torch.version.cuda or "none"
        raise UsageError(f"{where} {text}: CUDA is not available on this machine (torch {torch.__version__}, "
                         f"built for CUDA {built}); expected --device cpu or auto")
    index = int(text.split(":")[1]) if ":" in text else 0
    count = torch.cuda.device_count()
    if index >= count:
        raise UsageError(f"{where} {text}: this machine has {count} CUDA device(s); expected cuda:0 to "
                         f"cuda:{count - 1}")
    return torch.device("cuda", index)


def add_device_arguments(p, amp: bool = True) -> None:
    """`--device` (and `--amp`) on a command that trains."""
    p.add_argument("--device", help="where training runs: auto (default: cuda if available, else cpu), cpu, "
                                    "cuda, cuda:N")
    if amp:
        p.add_argument("--amp", action="store_true", default=None,
                       help="bf16 autocast on CUDA (off by default: fake-quant under bf16 differs from the "
                            "deployed integer arithmetic); ignored on the CPU")
