# The compiled build's types for loop.py (Cython pure-Python mode): the .py stays the source.
cimport cython
from cpython.exc cimport PyErr_CheckSignals, PyErr_SetFromErrno
from libc.errno cimport EINTR
from libc.errno cimport errno as c_errno
from libc.math cimport ceil

from muxio.watchdog cimport Running


cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        void *ptr
        int fd
        unsigned int u32
        unsigned long long u64

    cdef struct epoll_event:
        unsigned int events
        epoll_data_t data

    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)


cdef epoll_event _epoll_events[1023]


cdef inline list _epoll_wait(int epfd, object timeout):
    # select.epoll.poll(timeout) for EpollPoller, minus its costs: no GIL hand-off when
    # the wait cannot block, no argument parsing; EINTR returns no events after the
    # signal handlers ran (the iteration then recomputes its wait), as a spurious wake-up.
    cdef int ms, n, i
    cdef double t
    cdef list events
    if timeout is None:
        ms = -1
    else:
        t = timeout
        ms = <int>ceil(t * 1000.0) if t > 0 else 0
    if ms == 0:
        n = epoll_wait(epfd, _epoll_events, 1023, 0)
    else:
        with nogil:
            n = epoll_wait(epfd, _epoll_events, 1023, ms)
    if n < 0:
        if c_errno == EINTR:
            PyErr_CheckSignals()
            return []
        PyErr_SetFromErrno(OSError)
    events = []
    for i in range(n):
        events.append((_epoll_events[i].data.fd, _epoll_events[i].events))
    return events


cdef class LoopCounters:
    cdef public Py_ssize_t iterations
    cdef public Py_ssize_t events
    cdef public Py_ssize_t callbacks
    cdef public Py_ssize_t slow_iterations
    cdef public double max_lag


cdef class _LoopCore:
    cdef public object poller
    cdef public object _epoll
    cdef public int _epfd
    cdef public bint _watch
    cdef public double slow_callback_duration
    cdef public object _watchdog
    cdef public dict _readers
    cdef public dict _writers
    cdef public object _ready
    cdef public list _timers
    cdef public Py_ssize_t _timers_cancelled
    cdef public object _seq
    cdef public double _clock_resolution
    cdef public bint _stopping
    cdef public bint _closed
    cdef public object _thread_id
    cdef public double _busy_since
    cdef public Running _running
    cdef public LoopCounters _counters
    cdef public bint _debug

    cpdef _change(self, fd, int old, int new)
    cpdef _add_reader(self, fd, callback)
    cpdef bint _remove_reader(self, fd) except -1
    cpdef _add_writer(self, fd, callback)
    cpdef bint _remove_writer(self, fd) except -1
    cpdef _compact_timers(self)
    cpdef _next_timeout(self)

    @cython.locals(
        ready=object, poller=object, timers=list, events=list, due=list, debug=bint, running=Running,
        stats=LoopCounters, n=Py_ssize_t, i=Py_ssize_t, now=double, end=double, busy=double,
        readable=long, writable=long, bits=long, readers=dict, writers=dict,
    )
    cpdef _run_once(self)

    @cython.locals(timers=list, due=list)
    cpdef list _pop_due(self, double end)
