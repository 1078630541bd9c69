# The compiled build's types for loop.py (Cython pure-Python mode): the .py stays the source.
cimport cython

from muxio.watchdog cimport Running


cdef class LoopCounters:
    cdef public Py_ssize_t iterations
    cdef public Py_ssize_t events
    cdef public Py_ssize_t callbacks
    cdef public Py_ssize_t slow_iterations
    cdef public double max_lag


cdef class _LoopCore:
    cdef public object poller
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
        ready=object, timers=list, events=list, due=list, debug=bint, running=Running,
        stats=LoopCounters, n=Py_ssize_t, i=Py_ssize_t, now=double, end=double, busy=double,
        readable=long, writable=long, bits=long, readers=dict, writers=dict,
    )
    cpdef _run_once(self)

    @cython.locals(timers=list, due=list)
    cpdef list _pop_due(self, double end)
