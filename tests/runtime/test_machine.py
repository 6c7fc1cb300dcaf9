"""What a report says a run ran on: the machine's summary line and the stages' machines in a comparison report."""
import torch

from statex.compare.report import machines_line
from statex.runtime import machine

H100 = {"device": "NVIDIA H100 80GB HBM3", "python": "3.12.3", "torch": "2.11.0", "triton": "3.6.0",
        "fla-core": "0.6.0"}
CPU = {"device": "AMD EPYC 7763 64-Core Processor", "python": "3.12.3", "torch": "2.11.0", "triton": "-",
       "fla-core": "-"}


def test_summary_names_the_device_and_only_the_installed_packages():
    assert machine.summary(H100) == "NVIDIA H100 80GB HBM3 (torch 2.11.0, triton 3.6.0, fla-core 0.6.0)"
    assert machine.summary(CPU) == "AMD EPYC 7763 64-Core Processor (torch 2.11.0)"
    assert machine.summary({"device": "x", "torch": "-"}) == "x"


def test_describe_this_machine():
    found = machine.describe("cpu")
    assert found["device"] == machine.processor_name() and found["device"]
    assert found["torch"] == torch.__version__
    assert set(found) == {"device", "python", *machine.PACKAGES}
    if not torch.cuda.is_available():  # asking for CUDA without it names the processor, never a GPU
        assert machine.describe("cuda")["device"] == machine.processor_name()


def test_machines_line_of_a_comparison():
    one = {"a/train": {"machine": H100}, "a/eval": {"machine": H100}}
    assert machines_line(one, "cuda") == machine.summary(H100)
    # resumed elsewhere: the machine of most stages first, the others named
    mixed = {**one, "b/train": {"machine": CPU}}
    assert machines_line(mixed, "cuda") == (f"{machine.summary(H100)}; some stages on {machine.summary(CPU)} "
                                            "(see Stages)")
    # stages recorded before machines were: the device kind alone
    assert machines_line({"a/train": {"seconds": 1.0}}, "cuda") == "cuda"
