"""`--device`: auto / cpu / cuda[:N], refused before any work where CUDA is absent; training on a
GPU (model and data on the device, channels-last, optional bf16) hands the model back on the
CPU, where the packed kernels evaluate it. The GPU tests run where CUDA is present and skip
with a reason elsewhere."""

import json

import pytest
import torch

from nas.cli import main
from nas.data import load_dataset
from nas.errors import UsageError
from nas.measure.device import resolve_device
from nas.train import evaluate, train

pytestmark = pytest.mark.usefixtures("one_thread")

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="CUDA is not available on this machine (torch "
                                                     f"{torch.__version__}, CUDA build {torch.version.cuda})")
needs_no_cuda = pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA; the refusal needs it absent")
DIGITS_ARCH = "in_r8_c1-stem_c16_k3_s1_w8_a8-ir_r1_k3_s2_e3_c24_w8_a8-head_c0_w8_a8-fc_n10_w8_a8"
BINARY_ARCH = "in_r8_c1-stem_c16_k3_s1_w8_a8-ir_r1_k3_s1_e1_c16_w1_a1-head_c0_w8_a8-fc_n10_w8_a8"


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_cpu_and_auto_resolve_to_the_cpu_without_cuda():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == (torch.device("cuda", 0) if HAS_CUDA else torch.device("cpu"))


@pytest.mark.parametrize("text", ["tpu", "cuda:", "cuda:-1", "gpu", "", "cuda:1234"])
def test_malformed_device_is_refused(text):
    with pytest.raises(UsageError, match="expected auto, cpu, cuda or cuda:N"):
        resolve_device(text)


@needs_no_cuda
@pytest.mark.parametrize("text", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_is_refused_where_it_is_absent(text):
    with pytest.raises(UsageError, match=f"--device {text}: CUDA is not available on this machine"):
        resolve_device(text)


def test_device_auto_on_this_machine_trains_like_the_default(digits):
    """On a CPU-only machine `device="auto"` is the CPU path itself: the same weights, bit for bit.
    Where CUDA is there, auto must be the first GPU instead (nothing to compare with the CPU)."""
    if HAS_CUDA:
        assert resolve_device("auto") == torch.device("cuda", 0)
        return
    from nas.blocks.model import build_model
    from nas.space import decode

    states = []
    for device in ("cpu", "auto"):
        torch.manual_seed(0)
        model = build_model(decode(DIGITS_ARCH))
        r = train(model, digits, epochs=1, subset=300, progress=False, measure_inference=False, device=device)
        assert r.device == "cpu" and r.amp is False
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@needs_no_cuda
def test_nas_train_device_cuda_refused_before_loading_data(capsys):
    assert main(["train", "--arch", DIGITS_ARCH, "--dataset", "digits", "--device", "cuda", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().startswith("nas: error: --device cuda: CUDA is not available")


# --- on a GPU ------------------------------------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("amp", [False, True])
def test_gpu_training_keeps_data_on_the_device_and_hands_the_model_back_on_the_cpu(digits, amp):
    from nas.blocks.model import build_model
    from nas.space import decode

    torch.manual_seed(0)
    model = build_model(decode(DIGITS_ARCH))
    r = train(model, digits, epochs=4, progress=False, device="cuda", amp=amp)
    assert r.device.startswith("cuda") and r.amp is amp and r.channels_last
    assert r.accuracy > 0.8, r.accuracy  # chance is 0.1
    assert all(p.device.type == "cpu" and p.is_contiguous() for p in model.parameters())
    assert r.peak_train_mem_bytes > 0 and "cuda" in r.peak_mem_method
    # the GPU's validation figure (fake-quant in fp32 on the GPU) and the CPU's agree closely
    assert abs(evaluate(model, digits.val) - r.accuracy) <= 0.02


@needs_cuda
def test_binary_net_trained_on_gpu_runs_on_the_packed_cpu_kernels(digits):
    from nas.blocks.model import build_model
    from nas.space import decode

    torch.manual_seed(0)
    model = build_model(decode(BINARY_ARCH))
    train(model, digits, epochs=2, progress=False, device="cuda", measure_inference=False)
    model.eval()
    fake_quant = evaluate(model, digits.val)
    packed = evaluate(model.use_kernels(True), digits.val)
    assert packed == fake_quant  # the packed kernels are bit-exact with fake-quant (sign(0) = +1)


@needs_cuda
def test_nas_train_on_cuda_json(capsys):
    assert main(["train", "--arch", DIGITS_ARCH, "--dataset", "digits", "--epochs", "2", "--device", "cuda",
                 "--amp", "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["device"].startswith("cuda") and out["amp"] is True and out["accuracy"] > 0.5
