# The Cython prototype's augmenting file for src/muxio/transports/stream.py (docs/architecture.md, "The
# compiled build: Cython or mypyc"). It matches the prototype's source changes in ../../cython.diff,
# not today's .py; kept here, away from the package, until the compiled build lands.
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
