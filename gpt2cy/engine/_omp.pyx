"""What the build got: OpenMP or not, and how many threads it offers."""

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define GPT2CY_HAVE_OPENMP 1
    static int gpt2cy_omp_max_threads(void) { return omp_get_max_threads(); }
    #else
    #define GPT2CY_HAVE_OPENMP 0
    static int gpt2cy_omp_max_threads(void) { return 1; }
    #endif
    """
    int GPT2CY_HAVE_OPENMP
    int gpt2cy_omp_max_threads() nogil


def openmp_enabled():
    """True when the kernels were compiled with OpenMP (multi-threaded)."""
    return bool(GPT2CY_HAVE_OPENMP)


def omp_max_threads():
    """OpenMP's default team size (honours OMP_NUM_THREADS); 1 without OpenMP."""
    return gpt2cy_omp_max_threads()
