"""Run-time ISA dispatch (gpt2cy/engine/isa.py): every kernel variant this build holds and this CPU runs
passes the kernel, matmul, low-precision and batched-engine tests against the numpy reference, each in its
own process under GPT2CY_ISA=<variant>; a variant that cannot be had is one clear error."""
import os
import subprocess
import sys

import pytest

from gpt2cy.engine import isa

HERE = os.path.dirname(os.path.abspath(__file__))
KERNEL_TESTS = ["test_kernels.py", "test_matmul.py", "test_dtypes_lowp.py", "test_engine_batch.py"]


def _env(variant, **extra):
    return {**os.environ, "GPT2CY_ISA": variant, **extra}


def _probe(variant, **extra):
    code = ("from gpt2cy.engine import isa, _matmul, _qblocks; "
            "print(isa.chosen(), _matmul.__name__, _matmul.isa()[0], _qblocks.kernel_isa(), _qblocks.amx(), "
            "_qblocks.amx_available())")
    return subprocess.run([sys.executable, "-c", code], env=_env(variant, **extra), capture_output=True,
                          text=True, timeout=120)


def _kernel_tests(env):
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-m", "not slow", "-p", "no:cacheprovider",
                           *[os.path.join(HERE, t) for t in KERNEL_TESTS]],
                          env=env, capture_output=True, text=True, timeout=900, cwd=HERE)


def test_the_default_is_the_best_supported_variant():
    assert isa.built()[-1] == "generic"
    if not os.environ.get("GPT2CY_ISA"):
        assert isa.chosen() == isa.supported()[0]


@pytest.mark.parametrize("variant", isa.supported())
def test_variant_is_what_runs(variant):
    r = _probe(variant)
    assert r.returncode == 0, r.stderr
    chosen, module, kernels, q, amx, amx_ok = r.stdout.split()
    assert chosen == variant
    assert amx == amx_ok                                  # AMX is on by default wherever it can run
    if variant == "avx2" or (variant == "generic" and len(isa.built()) > 1):
        assert amx_ok == "False"                          # only the 512-bit tile has an AMX form (a
                                                          # single-engine build's generic is its own flags)
    assert module == ("gpt2cy.engine._matmul" if variant == "generic" else f"gpt2cy.engine._isa_{variant}._matmul")
    if variant == "avx2":
        assert kernels == "avx2+fma" and q == "avx2"
    if variant == "avx512":
        assert kernels == "avx512f" and q == "vnni"
    if variant == "generic" and len(isa.built()) > 1:   # a single-engine build (GPT2CY_MARCH) is its own flags
        assert q == "scalar"


@pytest.mark.parametrize("variant", [v for v in isa.supported() if v != isa.chosen()])
def test_variant_passes_the_kernel_tests(variant):
    # the chosen variant runs them in this suite already
    r = _kernel_tests(_env(variant))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert " passed" in r.stdout


def _amx_here():
    return _probe(isa.chosen()).stdout.split()[-1] == "True"


@pytest.mark.skipif(not _amx_here(), reason="this CPU, OS or build has no AMX-INT8 tiles")
def test_without_amx_the_kernels_pass_too():
    # the suite runs the AMX tiles; GPT2CY_AMX=0 gives the VNNI tiles the same tests (and the same bits)
    r = _probe(isa.chosen(), GPT2CY_AMX="0")
    assert r.returncode == 0 and r.stdout.split()[-2:] == ["False", "True"], r.stdout + r.stderr
    r = _kernel_tests(_env(isa.chosen(), GPT2CY_AMX="0"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert " passed" in r.stdout


def test_a_bad_amx_setting_is_one_clear_error():
    r = _probe(isa.chosen(), GPT2CY_AMX="maybe")
    assert r.returncode != 0 and "GPT2CY_AMX='maybe' is not 0, 1, on, off or auto" in r.stderr
    cli = subprocess.run([sys.executable, "-m", "gpt2cy", "--info"], env=_env(isa.chosen(), GPT2CY_AMX="maybe"),
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 1
    assert cli.stderr.strip().count("\n") == 0 and "GPT2CY_AMX" in cli.stderr and "Traceback" not in cli.stderr


@pytest.mark.parametrize("value,message", [
    ("bogus", "is not a variant; this build has: "),
    ("AVX3", "is not a variant"),
])
def test_unknown_variant_is_one_clear_error(value, message):
    r = _probe(value)
    assert r.returncode != 0
    assert message in r.stderr and "ISAError" in r.stderr
    cli = subprocess.run([sys.executable, "-m", "gpt2cy", "--info"], env=_env(value), capture_output=True,
                         text=True, timeout=120)
    assert cli.returncode == 1
    assert cli.stderr.strip().count("\n") == 0 and message in cli.stderr and "Traceback" not in cli.stderr


def test_a_variant_the_cpu_cannot_run_or_the_build_lacks_is_refused():
    from gpt2cy.errors import ISAError
    all4 = ["native", "avx512", "avx2", "generic"]
    assert isa.choose("", all4, ["avx2", "generic"]) == "avx2"
    assert isa.choose("generic", all4, ["avx2", "generic"]) == "generic"
    with pytest.raises(ISAError, match="this CPU cannot run the avx512 variant; it runs: avx2, generic"):
        isa.choose("avx512", all4, ["avx2", "generic"])
    with pytest.raises(ISAError, match="this build has no avx2 variant; it has: generic"):
        isa.choose("avx2", ["generic"], ["generic"])
    # the CPU checks: a baseline x86-64 runs generic only; an AVX2 machine without AVX-512 no avx512
    assert not isa._runs("avx2", {}) and not isa._runs("avx512", {}) and isa._runs("generic", {})
    v3 = dict.fromkeys(["AVX2", "FMA3", "F16C", "BMI", "BMI2", "LZCNT", "MOVBE", "POPCNT"], True)
    assert isa._runs("avx2", v3) and not isa._runs("avx512", v3)
    skx = dict(v3, AVX512F=True, AVX512CD=True, AVX512BW=True, AVX512DQ=True, AVX512VL=True)
    assert not isa._runs("avx512", skx)                       # no VNNI: the avx512 variant needs it
    assert isa._runs("avx512", dict(skx, AVX512VNNI=True))
