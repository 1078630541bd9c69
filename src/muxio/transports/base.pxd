# Read only by the (future) compiled build, never by Python: the pure build ignores .pxd files.
# Cython pure-Python mode augments the .py beside this file with these C types. It assumes the
# prototype's source changes listed in docs/architecture.md ("The compiled build: Cython or
# mypyc"): today's .py does not compile against it yet.
cdef class TransportBase:
    cdef object __weakref__
    cdef public object _loop
    cdef public object _protocol
    cdef public object _extra
    cdef public bint _closing
    cdef public bint _lost
    cdef public int _fd
    cdef public int _writes_after_loss

cdef class FlowControlTransport(TransportBase):
    cdef public object _buffer
    cdef public Py_ssize_t _buffered
    cdef public Py_ssize_t _high_water
    cdef public Py_ssize_t _low_water
    cdef public bint _protocol_paused
