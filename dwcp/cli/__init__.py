"""The `dwcp` command line."""

import os

# dwcp never calls BLAS, but numpy (imported by the codec) starts OpenBLAS's
# thread pool, whose threads spin-wait after start-up: on a 2-core host they
# took ~6% of the sending process's CPU samples.  The command line and the
# daemon are our own processes, so keep the pool at one thread unless the
# operator says otherwise.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
