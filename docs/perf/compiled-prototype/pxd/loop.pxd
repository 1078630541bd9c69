# The Cython prototype's augmenting file for src/muxio/loop.py (docs/architecture.md, "The
# compiled build: Cython or mypyc"). It matches the prototype's source changes in ../cython.diff,
# not today's .py; kept here, away from the package, until the compiled build lands.
cimport cython

cdef class Handle:
    cdef object __weakref__
    cdef public object _callback
    cdef public object _args
    cdef public object _loop
    cdef public object _context
    cdef public bint _cancelled

cdef class TimerHandle(Handle):
    cdef public double _when
    cdef public bint _scheduled

cdef class LoopCounters:
    cdef public Py_ssize_t iterations
    cdef public Py_ssize_t events
    cdef public Py_ssize_t callbacks
    cdef public Py_ssize_t slow_iterations
    cdef public double max_lag

cdef class _LoopCore:
    cdef dict __dict__
    cdef object __weakref__
    cdef public object poller
    cdef public object _ready
    cdef public list _timers
    cdef public dict _readers
    cdef public dict _writers
    cdef public Py_ssize_t _timers_cancelled
    cdef public object _seq
    cdef public double _clock_resolution
    cdef public bint _stopping
    cdef public bint _closed
    cdef public bint _debug
    cdef public bint _watch
    cdef public double slow_callback_duration
    cdef public double _busy_since
    cdef public object _running
    cdef public LoopCounters _counters

    @cython.locals(n=Py_ssize_t, i=Py_ssize_t, fd=int, bits=int, readable=int, writable=int,
                   now=double, busy=double, readers=dict, writers=dict, timers=list,
                   stats=LoopCounters, debug=bint, handle=Handle)
    cpdef _run_once(self)
