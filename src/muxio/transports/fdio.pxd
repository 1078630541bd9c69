# The compiled build's half of fdio.py (Cython pure-Python mode): libc read/write, GIL held.
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.exc cimport PyErr_CheckSignals, PyErr_SetFromErrno
from libc.errno cimport EINTR
from libc.errno cimport errno as c_errno
from posix.unistd cimport read as c_read_fd
from posix.unistd cimport write as c_write_fd


cdef char _rbuf[65536]


cdef inline bytes _c_read(int fd, Py_ssize_t n):
    cdef Py_ssize_t got
    while True:
        got = c_read_fd(fd, _rbuf, <size_t>n)
        if got >= 0:
            return PyBytes_FromStringAndSize(_rbuf, got)
        if c_errno != EINTR:
            PyErr_SetFromErrno(OSError)
        PyErr_CheckSignals()


cdef inline Py_ssize_t _c_write(int fd, bytes data) except -1:
    cdef Py_ssize_t sent
    while True:
        sent = c_write_fd(fd, PyBytes_AS_STRING(data), <size_t>PyBytes_GET_SIZE(data))
        if sent >= 0:
            return sent
        if c_errno != EINTR:
            PyErr_SetFromErrno(OSError)
        PyErr_CheckSignals()
