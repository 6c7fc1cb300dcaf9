"""KernelSettings: read from the environment once, settable in code (a block or the process), every value checked
when set with an error naming the variable; the CLI refuses a bad environment before any work."""
import pytest

from statex import runtime
from statex.cli import main
from statex.runtime import settings
from statex.runtime.settings import KernelSettings


def test_defaults_and_the_environment():
    assert KernelSettings.from_env({}) == KernelSettings()
    chosen = KernelSettings.from_env({"STATEX_BACKEND": "torch", "STATEX_SSD": "fla", "STATEX_AUTOTUNE": "off",
                                      "UNRELATED": "x"})
    assert (chosen.backend, chosen.ssd_kernel, chosen.autotune) == ("torch", "fla", "off")
    assert KernelSettings.from_env({"STATEX_BACKEND": ""}).backend == "auto"  # empty means unset


@pytest.mark.parametrize("variable,value", [("STATEX_BACKEND", "cuda"), ("STATEX_SSD", "trition"),
                                            ("STATEX_AUTOTUNE", "fastest")])
def test_a_bad_value_names_its_variable(variable, value):
    with pytest.raises(ValueError, match=f"{variable}='{value}' is not one of"):
        KernelSettings.from_env({variable: value})


def test_use_changes_settings_inside_a_block_only():
    before = runtime.current()
    with runtime.use(backend="torch", ssd_kernel="fla") as inside:
        assert runtime.current() is inside and (inside.backend, inside.ssd_kernel) == ("torch", "fla")
        assert inside.autotune == before.autotune
    assert runtime.current() == before
    with pytest.raises(ValueError, match="STATEX_BACKEND='gpu'"):
        with runtime.use(backend="gpu"):
            pass
    assert runtime.current() == before
    with pytest.raises(ValueError, match="chunk_max_value_block must be an integer"):
        runtime.configure(chunk_max_value_block=8)
    assert runtime.current() == before


def test_the_environment_is_read_once(monkeypatch):
    monkeypatch.setattr(settings, "_current", None)
    monkeypatch.setenv("STATEX_BACKEND", "torch")
    assert runtime.current().backend == "torch"
    monkeypatch.setenv("STATEX_BACKEND", "fla")
    assert runtime.current().backend == "torch"  # later changes to os.environ are not seen
    assert runtime.configure(backend="auto").backend == "auto" == runtime.current().backend


def test_the_cli_refuses_a_bad_environment_before_any_work(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("STATEX_SSD", "trition")
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    assert "STATEX_SSD='trition' is not one of triton, fla" in capsys.readouterr().err
