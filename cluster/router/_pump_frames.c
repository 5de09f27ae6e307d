/* The relay connection's frame split in C, the FrameProtocol type: a part of the C twin of cluster/router/pump.py
 * (which says what it does; its FrameProtocol is this one in Python).  The base of a relay connection
 * (cluster/router/relay.py): ``data_received`` splits the replica's frames; a CHUNK while ``self.pump`` is set
 * goes to the pump (cluster/router/_pump.c, through _pump.h), anything else to the Python methods
 * ``_frame(kind, payload)``, ``_broken(why)``, ``_pump_stopped(exc)``.
 */
#include "_pump.h"

#define HEADER_SIZE 5
#define MAX_FRAME (64u * 1024u * 1024u)
#define KIND_REQUEST 1
#define KIND_CHUNK 2
#define KIND_END 3
#define KIND_ERROR 4

/* ---- FrameProtocol ---------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *rest;  /* bytes of a frame not complete yet, or NULL */
    PyObject *pump;  /* the Pump while a stream is pumped, else None */
} FrameProtocol;

static int FP_traverse(FrameProtocol *self, visitproc visit, void *arg) {
    Py_VISIT(self->pump);  /* a Python subclass's own traverse visits its type and __dict__ */
    return 0;
}

static int FP_clear(FrameProtocol *self) {
    Py_CLEAR(self->rest);
    Py_CLEAR(self->pump);
    return 0;
}

static void FP_dealloc(FrameProtocol *self) {  /* a Python subclass's dealloc drops its type's reference */
    PyObject_GC_UnTrack(self);
    FP_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *FP_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    FrameProtocol *self = (FrameProtocol *)type->tp_alloc(type, 0);
    if (self != NULL)
        self->pump = Py_NewRef(Py_None);
    return (PyObject *)self;
}

/* The error set now (the client's socket, a malformed chunk, what ``on_first`` raised), taken off as one exception
 * object with its traceback; NULL when none is set. */
static PyObject *fp_raised(void) {
    PyObject *type, *exc, *tb;
    PyErr_Fetch(&type, &exc, &tb);
    PyErr_NormalizeException(&type, &exc, &tb);
    if (exc != NULL && tb != NULL)
        PyException_SetTraceback(exc, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return exc;
}

/* The pump's pause (``exc`` NULL) or its error (``exc``, from fp_raised; this takes its reference) ends the pump,
 * not the connection: ``_pump_stopped(exc or None)``; 0 when that raised (set). */
static int fp_stop(FrameProtocol *self, PyObject *exc) {
    PyObject *res = PyObject_CallMethod((PyObject *)self, "_pump_stopped", "O", exc ? exc : Py_None);
    Py_XDECREF(exc);
    if (res == NULL)
        return 0;
    Py_DECREF(res);
    return 1;
}

/* Write what ``*held`` (a pump, or NULL) took from this read, before anything else happens: every Python call
 * of the connection's may detach its pump.  0 when stopping the pump raised (set). */
static int fp_send(FrameProtocol *self, Pump **held) {
    Pump *pump = *held;
    if (pump == NULL)
        return 1;
    *held = NULL;
    int r = pumpc_send(pump);
    Py_DECREF(pump);
    return r > 0 ? 1 : fp_stop(self, r < 0 ? fp_raised() : NULL);
}

/* One chunk to the connection's pump, its bytes held for one write with the rest of this read: 1 taken, 2
 * declined (the connection's _frame takes it), 0 when the pump's error could not be handed on (set). */
static int fp_pump(FrameProtocol *self, Pump **held, const unsigned char *p, Py_ssize_t size) {
    Pump *pump = (Pump *)Py_NewRef(self->pump);  /* a Pump: FP_set_pump takes nothing else */
    int r = pumpc_feed(pump, p, size);
    if (r == 1 && *held == NULL) {
        *held = pump;  /* the same pump until a Python call: fp_send runs before every one */
        return 1;
    }
    Py_DECREF(pump);
    if (r > 0)
        return r;
    PyObject *exc = fp_raised();  /* what it took before this chunk is written before it stops */
    if (!fp_send(self, held)) {
        Py_XDECREF(exc);
        return 0;
    }
    return fp_stop(self, exc);
}

/* The replica ended the stream cleanly: the pump writes the body's end with what it holds (``ends``). */
static int fp_end(FrameProtocol *self, Pump **held) {
    if (self->pump == NULL || self->pump == Py_None)
        return 1;
    if (pumpc_end((Pump *)self->pump) < 0)
        return 0;
    if (*held == NULL)
        *held = (Pump *)Py_NewRef(self->pump);
    return 1;
}

static PyObject *FP_data_received(FrameProtocol *self, PyObject *data) {
    PyObject *buf;
    if (self->rest != NULL) {
        buf = PyBytes_FromObject(self->rest);
        Py_CLEAR(self->rest);
        if (buf == NULL)
            return NULL;
        PyObject *more = PyBytes_FromObject(data);
        if (more == NULL) {
            Py_DECREF(buf);
            return NULL;
        }
        PyBytes_ConcatAndDel(&buf, more);
        if (buf == NULL)
            return NULL;
    } else if (PyBytes_CheckExact(data)) {
        buf = Py_NewRef(data);
    } else if ((buf = PyBytes_FromObject(data)) == NULL) {
        return NULL;
    }
    const unsigned char *base = (const unsigned char *)PyBytes_AS_STRING(buf);
    Py_ssize_t pos = 0, end = PyBytes_GET_SIZE(buf);
    PyObject *res = NULL;
    Pump *held = NULL;  /* the pump holding what it took from this read, written at once before anything else */
    while (end - pos >= HEADER_SIZE) {
        const unsigned char *h = base + pos;
        unsigned int size = ((unsigned int)h[0] << 24) | ((unsigned int)h[1] << 16) | ((unsigned int)h[2] << 8) | h[3];
        int kind = h[4];
        if (size > MAX_FRAME || kind < KIND_REQUEST || kind > KIND_ERROR) {
            if (!fp_send(self, &held))
                goto done;
            PyObject *why = PyUnicode_FromFormat("bad frame header (length %u, kind %d)", size, kind);
            if (why != NULL) {
                res = PyObject_CallMethod((PyObject *)self, "_broken", "O", why);
                Py_DECREF(why);
            }
            goto done;
        }
        Py_ssize_t stop = pos + HEADER_SIZE + (Py_ssize_t)size;
        if (stop > end)
            break;
        const unsigned char *payload = h + HEADER_SIZE;
        pos = stop;
        if (kind == KIND_CHUNK && self->pump != NULL && self->pump != Py_None) {
            int r = fp_pump(self, &held, payload, (Py_ssize_t)size);
            if (!r)
                goto done;
            if (r == 1)
                continue;
        }
        if ((kind == KIND_END && !fp_end(self, &held)) || !fp_send(self, &held))
            goto done;
        PyObject *bytes = PyBytes_FromStringAndSize((const char *)payload, (Py_ssize_t)size);
        if (bytes == NULL)
            goto done;
        PyObject *go = PyObject_CallMethod((PyObject *)self, "_frame", "iO", kind, bytes);
        Py_DECREF(bytes);
        if (go == NULL)
            goto done;
        int more = PyObject_IsTrue(go);
        Py_DECREF(go);
        if (more < 0)
            goto done;
        if (!more) {  /* the connection is broken: nothing more is read off it */
            res = Py_NewRef(Py_None);
            goto done;
        }
    }
    if (pos < end) {
        self->rest = PyBytes_FromStringAndSize((const char *)base + pos, end - pos);
        if (self->rest == NULL)
            goto done;
    }
    if (fp_send(self, &held))
        res = Py_NewRef(Py_None);
done:
    Py_XDECREF(held);
    Py_DECREF(buf);
    if (res != NULL && res != Py_None) {
        Py_DECREF(res);
        res = Py_NewRef(Py_None);
    }
    return res;
}

static PyObject *FP_get_pump(FrameProtocol *self, void *Py_UNUSED(closure)) {
    return Py_NewRef(self->pump ? self->pump : Py_None);
}

static int FP_set_pump(FrameProtocol *self, PyObject *value, void *Py_UNUSED(closure)) {
    if (value == NULL)
        value = Py_None;
    if (value != Py_None && !(Py_IS_TYPE(value, &pumpc_PumpType) && ((Pump *)value)->write != NULL)) {
        PyErr_SetString(PyExc_TypeError, "pump must be an initialised _pump.Pump or None");
        return -1;
    }
    Py_XSETREF(self->pump, Py_NewRef(value));
    return 0;
}

static PyMethodDef FP_methods[] = {
    {"data_received", (PyCFunction)FP_data_received, METH_O, "Split the replica's bytes into frames."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef FP_getset[] = {
    {"pump", (getter)FP_get_pump, (setter)FP_set_pump, "Where CHUNK frames go while a stream is pumped (None: _frame).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject pumpc_FrameProtocolType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cluster.router._pump.FrameProtocol",
    .tp_basicsize = sizeof(FrameProtocol),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The base of a relay connection: frames split in C (cluster/router/pump.py's FrameProtocol).",
    .tp_new = FP_new,
    .tp_dealloc = (destructor)FP_dealloc,
    .tp_traverse = (traverseproc)FP_traverse,
    .tp_clear = (inquiry)FP_clear,
    .tp_methods = FP_methods,
    .tp_getset = FP_getset,
};
