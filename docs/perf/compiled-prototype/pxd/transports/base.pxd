# The Cython prototype's augmenting file for src/muxio/transports/base.py (docs/architecture.md, "The
# compiled build: Cython or mypyc"). It matches the prototype's source changes in ../../cython.diff,
# not today's .py; kept here, away from the package, until the compiled build lands.
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
