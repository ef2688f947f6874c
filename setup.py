"""Build the Cython kernels.

Environment switches (all optional):
  GPT2CY_PORTABLE=1   do not tune for the build machine's CPU (no -march=native); use for wheels
  GPT2CY_MARCH=ARCH   tune for ARCH instead of the build machine (-march=ARCH), e.g. "haswell" for an
                      AVX2+FMA-only build on an AVX-512 machine (CI builds every _gemm.h path this way)
  GPT2CY_DEBUG=1      compile with boundscheck/wraparound on and -O0 -g, and the C macro GPT2CY_DEBUG
                      (the kernels' debug-only test hooks), for hunting kernel bugs
  GPT2CY_BUILD_ONLY   comma-separated module names (e.g. "_bpe,_matmul") to rebuild just those in development
  GPT2CY_ISA_VARIANTS=0  build the engine once (no run-time ISA variants; see ISA_VARIANTS below)
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
from setuptools.command.build_ext import build_ext


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


# Run-time ISA dispatch (gpt2cy/engine/isa.py): the engine's modules are also built once per variant below, as
# gpt2cy.engine._isa_<name>.<module> from copies of their sources, and the best one the CPU runs is chosen at
# import. The plain gpt2cy.engine.<module> build is "generic" (no -march: any x86-64) in these builds.
ISA_VARIANTS = {
    "avx2": ["-march=haswell"],                        # AVX2 + FMA + F16C
    "avx512": ["-march=x86-64-v4", "-mavx512vnni"],    # AVX-512 F/BW/DQ/VL/CD + VNNI
}
# GCC's tuning for these CPUs auto-vectorizes with 256-bit registers; the attention and row kernels hold their
# accumulators in whole 512-bit registers (at 256 bits they spill: attention ran at a third of the GEMM's rate)
WIDE = ["-mprefer-vector-width=512"]
ISA_SRC = os.path.join("build", "isa_src")


def _isa_variants(compile_args):
    """{variant: extra flags} to build, or {} when this build is a single one (GPT2CY_MARCH, GPT2CY_DEBUG,
    GPT2CY_ISA_VARIANTS=0, a compiler or machine without them)."""
    if os.environ.get("GPT2CY_ISA_VARIANTS", "1") == "0" or os.environ.get("GPT2CY_MARCH", "").strip() \
            or os.environ.get("GPT2CY_DEBUG") == "1" or sys.platform == "win32":
        return {}
    out = {name: flags for name, flags in ISA_VARIANTS.items() if _compiler_accepts(flags)}
    if not out:
        return {}
    if "-march=native" in compile_args:
        out["native"] = ["-march=native"]
    for name in ("avx512", "native"):
        if name in out and _compiler_accepts(out[name] + WIDE):
            out[name] = out[name] + WIDE
    return out


def _isa_sources(variant):
    """Copy the engine's .pyx/.pxd into build/isa_src/gpt2cy/engine/_isa_<variant>/ (a package tree Cython
    can name the modules from); headers stay where they are (include_dirs)."""
    pkg = os.path.join(ISA_SRC, "gpt2cy", "engine", f"_isa_{variant}")
    os.makedirs(pkg, exist_ok=True)
    for d in (os.path.join(ISA_SRC, "gpt2cy"), os.path.join(ISA_SRC, "gpt2cy", "engine"), pkg):
        open(os.path.join(d, "__init__.py"), "a").close()
    for src in glob.glob(os.path.join("gpt2cy", "engine", "*.pyx")) + glob.glob(os.path.join("gpt2cy", "engine", "*.pxd")):
        dst = os.path.join(pkg, os.path.basename(src))
        with open(src, "rb") as f:
            data = f.read()
        if not os.path.exists(dst) or open(dst, "rb").read() != data:   # unchanged copies keep their mtime
            with open(dst, "wb") as f:
                f.write(data)
    return pkg


def _extensions():
    compile_args, link_args, debug = _flags()
    only = {m.strip() for m in os.environ.get("GPT2CY_BUILD_ONLY", "").split(",") if m.strip()}
    variants = _isa_variants(compile_args)
    if variants:   # the plain modules become the generic variant
        compile_args = [a for a in compile_args if not a.startswith("-march=")]
    macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")] + ([("GPT2CY_DEBUG", "1")] if debug else [])
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
            define_macros=list(macros),
        ))
        if sub != "engine":
            continue
        for variant, flags in variants.items():
            pkg = _isa_sources(variant)
            exts.append(Extension(
                f"gpt2cy.engine._isa_{variant}.{mod}", [os.path.join(pkg, mod + ".pyx")],
                include_dirs=[numpy.get_include(), os.path.dirname(pyx), pkg],
                extra_compile_args=list(compile_args) + flags,
                extra_link_args=list(link_args),
                define_macros=list(macros),
            ))
    directives = {"language_level": 3}
    if debug:
        directives.update(boundscheck=True, wraparound=True, initializedcheck=True)
    return cythonize(exts, compiler_directives=directives, quiet=True, nthreads=os.cpu_count() or 1)


class _ParallelBuildExt(build_ext):
    """build_ext compiling the extensions on every CPU (the ISA variants make several copies of the engine)."""
    def finalize_options(self):
        super().finalize_options()
        if self.parallel is None:
            self.parallel = os.cpu_count() or 1

    def copy_extensions_to_source(self):
        # --inplace and editable installs copy each module next to its sources: the variants' folders
        # (gpt2cy/engine/_isa_<name>/) exist only in the build tree until then
        for ext in self.extensions:
            os.makedirs(os.path.join(*ext.name.split(".")[:-1]), exist_ok=True)
        super().copy_extensions_to_source()


setup(ext_modules=_extensions(), cmdclass={"build_ext": _ParallelBuildExt})
