"""Pure-Python twins of the dwcp._fast kernels: the test oracles.

Same names, signatures and exceptions as the Cython modules; obviously
correct rather than fast.
"""
