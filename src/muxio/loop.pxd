# The compiled build's types for loop.py (Cython pure-Python mode): the .py stays the source.
cimport cython
from cpython.exc cimport PyErr_CheckSignals, PyErr_SetFromErrno
from cpython.object cimport PyObject
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




cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    cdef struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk_id, timespec *tp)
    int CLOCK_MONOTONIC


cdef inline double _c_monotonic() noexcept:
    # time.monotonic() without its float object, to the same bit (CPython's
    # _PyTime_AsSecondsDouble: whole seconds exactly, else nanoseconds / 1e9)
    cdef timespec ts
    cdef long long ns
    clock_gettime(CLOCK_MONOTONIC, &ts)
    ns = <long long>ts.tv_sec * 1000000000 + ts.tv_nsec
    if ns % 1000000000 == 0:
        return <double>(ns // 1000000000)
    return <double>ns / 1e9


cdef inline int _check_signals() except -1:
    return PyErr_CheckSignals()


cdef inline list _epoll_wait(int epfd, object timeout):
    # select.epoll.poll(timeout) for EpollPoller, minus its costs: no GIL hand-off when
    # the wait cannot block, no argument parsing; EINTR returns no events after the
    # signal handlers ran (the iteration then recomputes its wait), as a spurious wake-up.
    cdef epoll_event ready[1023]  # on the stack: loops in other threads wait at the same time
    cdef int ms, n, i
    cdef double t
    cdef list events
    if timeout is None:
        ms = -1
    else:
        t = timeout
        ms = <int>ceil(t * 1000.0) if t > 0 else 0
    if ms == 0:
        n = epoll_wait(epfd, ready, 1023, 0)
    else:
        with nogil:
            n = epoll_wait(epfd, ready, 1023, ms)
    if n < 0:
        if c_errno == EINTR:
            PyErr_CheckSignals()
            return []
        PyErr_SetFromErrno(OSError)
    events = []
    for i in range(n):
        events.append((ready[i].data.fd, ready[i].events))
    return events


cdef bint _COMPILED


# asyncio's Handle keeps its fields in __slots__: for the loop's own Handle and TimerHandle
# (which add none), the compiled loop reads and writes them at their offsets, as a C type's
# fields, instead of through the attribute protocol (~100 instructions per access).
cdef extern from *:
    """
    #include "structmember.h"
    #define __mx_SLOT(o, off) (*(PyObject **)((char *)(o) + (off)))
    static Py_ssize_t __mx_member_offset(PyObject *d) {
        if (Py_TYPE(d) != &PyMemberDescr_Type
                || ((PyMemberDescrObject *)d)->d_member->type != T_OBJECT_EX) {
            PyErr_SetString(PyExc_TypeError, "expected an object slot");
            return -1;
        }
        return ((PyMemberDescrObject *)d)->d_member->offset;
    }
    static void __mx_SLOT_SET(PyObject *o, Py_ssize_t off, PyObject *v) {
        PyObject *old = __mx_SLOT(o, off);
        Py_INCREF(v);
        __mx_SLOT(o, off) = v;
        Py_XDECREF(old);
    }
    static PyObject *__mx_run_in(PyObject *name, PyObject *ctx, PyObject *cb, PyObject *args) {
        PyObject *stack[10];
        Py_ssize_t n = PyTuple_GET_SIZE(args), i;
        if (n > 8) {
            PyObject *run = PyObject_GetAttr(ctx, name), *all, *res;
            if (run == NULL) return NULL;
            all = PyTuple_New(n + 1);
            if (all == NULL) { Py_DECREF(run); return NULL; }
            Py_INCREF(cb);
            PyTuple_SET_ITEM(all, 0, cb);
            for (i = 0; i < n; i++) {
                PyObject *a = PyTuple_GET_ITEM(args, i);
                Py_INCREF(a);
                PyTuple_SET_ITEM(all, i + 1, a);
            }
            res = PyObject_Call(run, all, NULL);
            Py_DECREF(all);
            Py_DECREF(run);
            return res;
        }
        stack[0] = ctx;
        stack[1] = cb;
        for (i = 0; i < n; i++) stack[i + 2] = PyTuple_GET_ITEM(args, i);
        return PyObject_VectorcallMethod(name, stack, (size_t)(n + 2), NULL);
    }
    """
    Py_ssize_t _member_offset "__mx_member_offset"(object d) except -1
    PyObject *_SLOT "__mx_SLOT"(object o, Py_ssize_t off)
    void _slot_set "__mx_SLOT_SET"(object o, Py_ssize_t off, object v)
    object _run_in "__mx_run_in"(object name, object ctx, object cb, tuple args)


cdef Py_ssize_t _off_callback, _off_args, _off_loop, _off_context, _off_cancelled
cdef Py_ssize_t _off_when, _off_scheduled
cdef object _own_handle, _own_timer


cdef inline _handle_slots(object aio_timer, object handle, object timer):
    global _off_callback, _off_args, _off_loop, _off_context, _off_cancelled
    global _off_when, _off_scheduled
    global _own_handle, _own_timer
    slots = aio_timer.__mro__[1].__dict__
    _off_callback = _member_offset(slots["_callback"])
    _off_args = _member_offset(slots["_args"])
    _off_loop = _member_offset(slots["_loop"])
    _off_context = _member_offset(slots["_context"])
    _off_cancelled = _member_offset(slots["_cancelled"])
    _off_when = _member_offset(aio_timer.__dict__["_when"])
    _off_scheduled = _member_offset(aio_timer.__dict__["_scheduled"])
    _own_handle = handle
    _own_timer = timer


cdef inline _fill_handle(object h, object callback, object args, object loop, object context):
    _slot_set(h, _off_callback, callback)
    _slot_set(h, _off_args, args)
    _slot_set(h, _off_loop, loop)
    _slot_set(h, _off_context, context)
    _slot_set(h, _off_cancelled, False)


cdef inline _fill_timer(object t, object when):
    _slot_set(t, _off_when, when)
    _slot_set(t, _off_scheduled, True)


cdef inline bint _cancelled(object h) except -1:
    cdef PyObject *v
    if type(h) is _own_handle or type(h) is _own_timer:
        v = _SLOT(h, _off_cancelled)
        if v is not NULL:
            return v == <PyObject *>True
    return bool(h._cancelled)


cdef inline object _run_handle(object h):
    cdef PyObject *ctx
    cdef PyObject *cb
    cdef PyObject *args
    if type(h) is _own_handle or type(h) is _own_timer:
        ctx = _SLOT(h, _off_context)
        cb = _SLOT(h, _off_callback)
        args = _SLOT(h, _off_args)
        if ctx is not NULL and cb is not NULL and args is not NULL and type(<object>args) is tuple:
            return _run_in("run", <object>ctx, <object>cb, <tuple>args)
    return h._context.run(h._callback, *h._args)


cdef class LoopCounters:
    cdef public Py_ssize_t iterations
    cdef public Py_ssize_t events
    cdef public Py_ssize_t callbacks
    cdef public Py_ssize_t slow_iterations
    cdef public double max_lag
    cdef public double busy
    cdef public Py_ssize_t timer_callbacks
    cdef public Py_ssize_t timer_delays
    cdef public double started
    cdef public list iteration
    cdef public list delay


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
    cdef public double _floor
    cdef public object _gc
    cdef public dict _sites

    cpdef _change(self, fd, int old, int new)
    cpdef _add_reader(self, fd, callback)
    cpdef bint _remove_reader(self, fd) except -1
    cpdef _add_writer(self, fd, callback)
    cpdef bint _remove_writer(self, fd) except -1
    cpdef _compact_timers(self)
    cpdef _next_timeout(self)

    @cython.locals(
        ready=object, compiled=bint, timers=list, events=list, due=list, debug=bint, running=Running,
        stats=LoopCounters, n=Py_ssize_t, i=Py_ssize_t, now=double, end=double, busy=double,
        readable=long, writable=long, bits=long, readers=dict, writers=dict, late=double,
    )
    cpdef _run_once(self)

    @cython.locals(stats=LoopCounters, slot=Py_ssize_t)
    cpdef _record_busy(self, double started, double busy, list events)

    @cython.locals(timers=list, due=list)
    cpdef list _pop_due(self, double end)
