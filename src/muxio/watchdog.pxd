# The compiled build's type for the loop's observation point (Cython pure-Python mode).

cdef class Running:
    cdef public object now
