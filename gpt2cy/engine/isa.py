"""Run-time ISA dispatch: which build of the engine's compiled modules this process runs.

A build with variants (setup.py's ISA_VARIANTS; the default) holds the engine's modules several times:
gpt2cy.engine.<module> built for any x86-64 ("generic"), and gpt2cy.engine._isa_<variant>.<module> for
"avx2" (AVX2+FMA+F16C), "avx512" (AVX-512 F/BW/DQ/VL/CD with VNNI) and, unless GPT2CY_PORTABLE=1, "native"
(the build machine's own -march). At import the best variant this CPU runs is chosen, and its modules are
installed under the plain names (sys.modules), so every `from gpt2cy.engine._matmul import ...` gets them.
GPT2CY_ISA=<variant> forces one (a lower one, to test or compare it); a variant this build lacks or this CPU
cannot run is an ISAError (an ImportError) naming what there is.

Within the avx512 and native variants, the q8_0 / q4_0 products of prefills run on AMX-INT8 tiles where
the CPU has them and Linux grants the permission (the same bits as without); GPT2CY_AMX=0 turns that off.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Dict, List, Optional

from ..errors import ISAError

ENV = "GPT2CY_ISA"
AMX_ENV = "GPT2CY_AMX"
_AMX_VALUES = {"": True, "1": True, "on": True, "auto": True, "0": False, "off": False}
MODULES = ("_bandwidth", "_dtypes", "_forward", "_kernels", "_matmul", "_omp", "_qblocks", "_quantize")
ORDER = ("native", "avx512", "avx2", "generic")       # best first

_chosen: Optional[str] = None
_forced = False


def _cpu_features() -> Dict[str, bool]:
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as f
    except ImportError:                                 # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as f
    return dict(f)


def _runs(variant: str, f: Dict[str, bool]) -> bool:
    """Whether this CPU (and its OS: numpy checks the saved register state) runs `variant`'s instructions."""
    v3 = all(f.get(k) for k in ("AVX2", "FMA3", "F16C", "BMI", "BMI2", "LZCNT", "MOVBE", "POPCNT"))
    if variant in ("generic", "native"):
        return True                                     # native: built on (and for) this machine
    if variant == "avx2":
        return v3
    if variant == "avx512":
        skx = f.get("AVX512_SKX") or all(f.get(k) for k in ("AVX512F", "AVX512CD", "AVX512BW", "AVX512DQ",
                                                             "AVX512VL"))
        return bool(v3 and skx and (f.get("AVX512VNNI") or f.get("AVX512_CLX")))
    return False


def built() -> List[str]:
    """The variants this build holds, best first."""
    return [v for v in ORDER[:-1] if _has(v)] + ["generic"]


def _has(variant: str) -> bool:
    try:
        return importlib.util.find_spec(f"gpt2cy.engine._isa_{variant}._forward") is not None
    except ModuleNotFoundError:                         # no _isa_<variant> directory at all
        return False


def supported() -> List[str]:
    """The variants this build holds that this CPU runs, best first."""
    f = _cpu_features()
    return [v for v in built() if _runs(v, f)]


def chosen() -> str:
    """The variant this process runs."""
    return _chosen or "generic"


def forced() -> bool:
    """Whether GPT2CY_ISA chose it."""
    return _forced


def choose(want: str, have: List[str], ok: List[str]) -> str:
    """The variant to run: `want` (GPT2CY_ISA, lower case; "" for the best) checked against the variants
    built (`have`) and those the CPU runs (`ok`, best first)."""
    if not want:
        return ok[0]
    if want not in ORDER:
        raise ISAError(f"{ENV}={want!r} is not a variant; this build has: {', '.join(have)}")
    if want not in have:
        raise ISAError(f"{ENV}={want!r}: this build has no {want} variant; it has: {', '.join(have)}")
    if want not in ok:
        raise ISAError(f"{ENV}={want!r}: this CPU cannot run the {want} variant; it runs: {', '.join(ok)}")
    return want


def install() -> str:
    """Choose the variant (GPT2CY_ISA, else the best supported) and put its modules under the plain names.
    Called once, by gpt2cy.engine's import."""
    global _chosen, _forced
    if _chosen is not None:
        return _chosen
    want = os.environ.get(ENV, "").strip().lower()
    amx = os.environ.get(AMX_ENV, "").strip().lower()
    if amx not in _AMX_VALUES:
        raise ISAError(f"{AMX_ENV}={amx!r} is not 0, 1, on, off or auto")
    variant = choose(want, built(), supported())
    _forced = bool(want)
    pkg = sys.modules[__name__.rpartition(".")[0]]
    if variant != "generic":
        for m in MODULES:
            mod = importlib.import_module(f"{pkg.__name__}._isa_{variant}.{m}")
            sys.modules[f"{pkg.__name__}.{m}"] = mod
            setattr(pkg, m, mod)
    importlib.import_module(f"{pkg.__name__}._qblocks").set_amx(_AMX_VALUES[amx])
    _chosen = variant
    return variant
