"""Build the Cython kernels.

Environment switches (all optional):
  GPT2CY_PORTABLE=1   do not tune for the build machine's CPU (no -march=native); use for wheels
  GPT2CY_MARCH=ARCH   tune for ARCH instead of the build machine (-march=ARCH), e.g. "haswell" for an
                      AVX2+FMA-only build on an AVX-512 machine (CI builds every _gemm.h path this way)
  GPT2CY_DEBUG=1      compile with boundscheck/wraparound on and -O0 -g, and the C macro GPT2CY_DEBUG
                      (the kernels' debug-only test hooks), for hunting kernel bugs
  GPT2CY_BUILD_ONLY   comma-separated module names (e.g. "_bpe,_matmul") to rebuild just those in development
"""
import os
import glob
import shutil
import subprocess
import sys
import tempfile

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup


def _compiler_accepts(flags, code="int main(void){return 0;}\n"):
    """True when the C compiler builds and links `code` with `flags`."""
    cc = os.environ.get("CC") or "cc"
    if shutil.which(cc.split()[0]) is None:
        return False
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "t.c")
        with open(src, "w") as f:
            f.write(code)
        r = subprocess.run(cc.split() + [src, "-o", os.path.join(d, "t")] + flags,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return r.returncode == 0


def _flags():
    debug = os.environ.get("GPT2CY_DEBUG") == "1"
    if sys.platform == "win32":
        return ["/O2", "/openmp"], [], debug
    compile_args = ["-O0", "-g"] if debug else ["-O3", "-fno-math-errno", "-fno-trapping-math"]
    link_args = []
    march = os.environ.get("GPT2CY_MARCH", "").strip()
    if march:
        if not _compiler_accepts([f"-march={march}"]):
            sys.exit(f"gpt2cy: the C compiler does not accept GPT2CY_MARCH={march!r} (-march={march})")
        compile_args.append(f"-march={march}")
    elif os.environ.get("GPT2CY_PORTABLE") != "1" and _compiler_accepts(["-march=native"]):
        compile_args.append("-march=native")
    omp_code = "#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n"
    if _compiler_accepts(["-fopenmp"], omp_code):
        compile_args.append("-fopenmp")
        link_args.append("-fopenmp")
    else:
        print("gpt2cy: the C compiler has no OpenMP; kernels will run single-threaded", file=sys.stderr)
    return compile_args, link_args, debug


def _extensions():
    compile_args, link_args, debug = _flags()
    only = {m.strip() for m in os.environ.get("GPT2CY_BUILD_ONLY", "").split(",") if m.strip()}
    exts = []
    for pyx in sorted(glob.glob(os.path.join("gpt2cy", "*", "*.pyx"))):
        sub = os.path.basename(os.path.dirname(pyx))
        mod = os.path.splitext(os.path.basename(pyx))[0]
        if only and mod not in only:
            continue
        exts.append(Extension(
            f"gpt2cy.{sub}.{mod}", [pyx],
            include_dirs=[numpy.get_include(), os.path.dirname(pyx)],
            extra_compile_args=list(compile_args),
            extra_link_args=list(link_args),
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
                          + ([("GPT2CY_DEBUG", "1")] if debug else []),
        ))
    directives = {"language_level": 3}
    if debug:
        directives.update(boundscheck=True, wraparound=True, initializedcheck=True)
    return cythonize(exts, compiler_directives=directives, quiet=True)


setup(ext_modules=_extensions())
