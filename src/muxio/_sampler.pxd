# The compiled build's half of _sampler.py (Cython pure-Python mode): the GIL-free thread.
from cpython.long cimport PyLong_FromVoidPtr
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF

from muxio.loop cimport _LoopCore


cdef extern from *:
    """
    #include <errno.h>
    #include <pthread.h>
    #include <signal.h>
    #include <time.h>
    static PyObject *muxio_frame_back(PyObject *f) {
        return (PyObject *)PyFrame_GetBack((PyFrameObject *)f);
    }
    static PyObject *muxio_frame_code(PyObject *f) {
        return (PyObject *)PyFrame_GetCode((PyFrameObject *)f);
    }
    static long long muxio_now_ns(void) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
    }
    static void muxio_sleep_until(long long ns) {
        struct timespec t;
        t.tv_sec = (time_t)(ns / 1000000000LL);
        t.tv_nsec = (long)(ns % 1000000000LL);
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL) == EINTR) {}
    }
    static void muxio_block_signals(void) {
        sigset_t all;
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, NULL);
    }
    static int muxio_signal_thread(unsigned long thread, int signum) {
        return pthread_kill((pthread_t)thread, signum);
    }
    static long long muxio_swap_ll(long long *p, long long v) {
        return __atomic_exchange_n(p, v, __ATOMIC_ACQ_REL);
    }
    static void muxio_add_ll(long long *p, long long v) {
        __atomic_fetch_add(p, v, __ATOMIC_ACQ_REL);
    }
    static int muxio_load_int(int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static void muxio_store_int(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static double muxio_load_double(double *p) {
        double v;
        __atomic_load(p, &v, __ATOMIC_RELAXED);
        return v;
    }
    """
    PyObject *muxio_frame_back(PyObject *f)
    PyObject *muxio_frame_code(PyObject *f)
    long long muxio_now_ns() nogil
    void muxio_sleep_until(long long ns) nogil
    void muxio_block_signals() nogil
    int muxio_signal_thread(unsigned long thread, int signum) nogil
    long long muxio_swap_ll(long long *p, long long v) nogil
    void muxio_add_ll(long long *p, long long v) nogil
    int muxio_load_int(int *p) nogil
    void muxio_store_int(int *p, int v) nogil
    double muxio_load_double(double *p) nogil


cdef struct _State:
    double *busy_since
    long long period_ns
    long long busy_ns
    long long idle_ns
    long long ticks
    long long pending_ticks
    unsigned long long rng
    unsigned long thread
    double tick_busy_since
    int signum
    int pending
    int stop


cdef _State _state
cdef _LoopCore _loop
cdef dict _counts
cdef dict _codes
cdef frozenset _stop_ids
cdef frozenset _own_ids
cdef object _task_of
cdef object _entry


cdef inline int _c_prepare(
    _LoopCore loop, double rate, int signum, unsigned long thread, dict counts, dict codes,
    frozenset stop_ids, frozenset own_ids, object task_of, object entry,
) except -1:
    global _loop, _counts, _codes, _stop_ids, _own_ids, _task_of, _entry
    _loop = loop
    _counts = counts
    _codes = codes
    _stop_ids = stop_ids
    _own_ids = own_ids
    _task_of = task_of
    _entry = entry
    _state.busy_since = &loop._busy_since
    _state.period_ns = <long long>(1e9 / rate)
    _state.busy_ns = 0
    _state.idle_ns = 0
    _state.ticks = 0
    _state.pending_ticks = 0
    _state.rng = <unsigned long long>muxio_now_ns() | 1
    _state.thread = thread
    _state.tick_busy_since = 0.0
    _state.signum = signum
    _state.pending = 0
    _state.stop = 0
    return 0


cdef inline void _c_forget() noexcept:
    global _loop, _counts, _codes, _task_of, _entry
    _entry = None
    _counts = None
    _codes = None
    _task_of = None
    _loop = None


cdef inline int _c_sample(object frame) except -1:
    # Sampler._record's walk, with the C API: a code object's id, not its (uncached) hash.
    cdef long long ns = muxio_swap_ll(&_state.busy_ns, 0)
    cdef double began = _state.tick_busy_since
    cdef PyObject *code
    cdef PyObject *back
    cdef list key
    cdef bint leading = True
    muxio_store_int(&_state.pending, 0)
    counts = _counts
    if counts is None or ns <= 0:
        return 0
    if _loop._busy_since != began:
        stack = (None,)  # the tick came in the loop's own code, after its last callback
    else:
        key = [_task_of(_loop._running.now)]
        while frame is not None and frame is not _entry:
            code = muxio_frame_code(<PyObject *>frame)
            ident = PyLong_FromVoidPtr(code)
            if leading and ident in _own_ids:
                Py_DECREF(<object>code)
            elif ident in _stop_ids:
                Py_DECREF(<object>code)
                break
            else:
                leading = False
                if ident not in _codes:
                    _codes[ident] = <object>code
                Py_DECREF(<object>code)
                key.append(ident)
            back = muxio_frame_back(<PyObject *>frame)
            if back is NULL:
                break
            frame = <object>back
            Py_DECREF(frame)
        stack = tuple(key)
    counts[stack] = counts.get(stack, 0.0) + ns / 1e9
    return 0


cdef inline void _c_request_stop() noexcept:
    muxio_store_int(&_state.stop, 1)


cdef inline long long _c_ticks() noexcept:
    return _state.ticks


cdef inline double _c_idle_seconds() noexcept:
    return _state.idle_ns / 1e9


cdef inline long long _c_jittered() noexcept nogil:
    # xorshift64: a period from 0.5 to 1.5 times the mean, so ticks cannot phase-lock.
    _state.rng ^= _state.rng << 13
    _state.rng ^= _state.rng >> 7
    _state.rng ^= _state.rng << 17
    return _state.period_ns // 2 + <long long>(_state.rng % <unsigned long long>(_state.period_ns + 1))


cdef inline void _c_tick(long long dt) noexcept nogil:
    cdef double busy = muxio_load_double(_state.busy_since)
    _state.ticks += 1
    if busy == 0.0:
        _state.idle_ns += dt
        return
    muxio_add_ll(&_state.busy_ns, dt)
    if muxio_load_int(&_state.pending):
        _state.pending_ticks += 1
        if _state.pending_ticks < 50:
            return  # pending: this tick's time goes to it (a signal lost is sent again)
    _state.pending_ticks = 0
    _state.tick_busy_since = busy
    muxio_store_int(&_state.pending, 1)
    muxio_signal_thread(_state.thread, _state.signum)


cdef inline void _c_run():
    cdef long long last, due, now
    with nogil:
        muxio_block_signals()
        last = muxio_now_ns()
        due = last
        while not muxio_load_int(&_state.stop):
            due += _c_jittered()
            muxio_sleep_until(due)
            now = muxio_now_ns()
            if now - due > 50 * _state.period_ns:
                due = now
            _c_tick(now - last)
            last = now
