# Cython's pure-Python mode: C types for epoll.py, which stays the source.
cdef int _IN, _OUT, _HUP, _ERR
cdef tuple _MASKS
cdef frozenset _GONE
