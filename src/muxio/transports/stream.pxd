# Read only by the (future) compiled build, never by Python: the pure build ignores .pxd files.
# Cython pure-Python mode augments the .py beside this file with these C types. It assumes the
# prototype's source changes listed in docs/architecture.md ("The compiled build: Cython or
# mypyc"): today's .py does not compile against it yet.
cimport cython
from muxio.transports.base cimport FlowControlTransport

cdef class Transport(FlowControlTransport):
    cdef public bint _buffered_proto
    cdef public bint _raw
    cdef public bint _counting
    cdef public bint _eof
    cdef public bint _reading_paused
    cdef public bint _shutting_down
    cdef public object _flush_waiter
    cdef public object _on_lost
    cdef public object _output
    cdef public object _sock
    cdef public Py_ssize_t _read_size
    cdef public Py_ssize_t bytes_in
    cdef public Py_ssize_t bytes_out
    cdef public object idle_mark

    @cython.locals(got=Py_ssize_t)
    cpdef _on_read(self)
    @cython.locals(sent=Py_ssize_t, n=Py_ssize_t)
    cpdef write(self, data)

cdef char _rbuf[65536]
