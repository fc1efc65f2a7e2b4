cdef extern from "debug.h":
    bint DWCP_DEBUG
