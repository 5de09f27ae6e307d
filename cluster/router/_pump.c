/* The router's per-token relay in C: cluster/router/pump.py is the same in Python, and says what it does.
 *
 * Two types, each a twin of one in pump.py (tests/unit/test_pump.py feeds both the same bytes and compares):
 *   FrameProtocol  the base of a relay connection (cluster/router/relay.py): ``data_received`` splits the
 *                  replica's frames; a CHUNK while ``self.pump`` is set goes to the pump here, anything else
 *                  to the Python methods ``_frame(kind, payload)``, ``_broken(why)``, ``_pump_stopped(exc)``.
 *                  In cluster/router/_pump_frames.c.
 *   Pump           one stream's chunks to the client's socket: reads the few OpenAIChunk fields the router
 *                  needs straight off the wire (cluster/router/_pump_wire.c), keeps what a migration and the
 *                  tenant's charge need, times the inter-token gap and writes the SSE bytes as one HTTP chunk;
 *                  given ``on_first``, it takes the stream from its first chunk on (writing the response's
 *                  ``head`` with it), or declines it to Python (an error status, no bytes, a JSON answer), and
 *                  every chunk after it.  Here, with the module's init; _pump.h has what crosses the files.
 *
 * Why: the same work in Python costs the router more CPU per relayed token than a Rust gateway spends
 * (docs/routing.md, router overhead); here uvloop calls ``data_received`` straight into C, so a token costs
 * no Python frame, no protobuf message object and no attribute lookups.
 */
#include "_pump.h"

#include <structmember.h>
#include <time.h>

/* ---- Pump ------------------------------------------------------------------------------------------- */

static double now_monotonic(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int Pump_traverse(Pump *self, visitproc visit, void *arg) {
    Py_VISIT(self->is_closing);
    Py_VISIT(self->write);
    Py_VISIT(self->buffer_size);
    Py_VISIT(self->sent_ids);
    Py_VISIT(self->sent_text);
    Py_VISIT(self->fold);
    Py_VISIT(self->on_first);
    return 0;
}

static int Pump_clear(Pump *self) {
    Py_CLEAR(self->is_closing);
    Py_CLEAR(self->write);
    Py_CLEAR(self->buffer_size);
    Py_CLEAR(self->sent_ids);
    Py_CLEAR(self->sent_text);
    Py_CLEAR(self->fold);
    Py_CLEAR(self->empty);
    Py_CLEAR(self->head);
    Py_CLEAR(self->on_first);
    PyMem_Free(self->out);
    self->out = NULL;
    self->out_len = self->out_cap = 0;
    return 0;
}

static void Pump_dealloc(Pump *self) {
    PyObject_GC_UnTrack(self);
    Pump_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Pump_init(Pump *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"transport", "chunked", "sent_ids", "sent_text", "bounds", "fold", "fold_every", "last", "high",
                             "head", "on_first", "ends", NULL};
    PyObject *transport, *ids, *text, *bounds, *fold, *head = Py_None, *on_first = Py_None;
    int chunked, ends = 0;
    Py_ssize_t fold_every, high;
    double last;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OpO!O!OOndn|OOp", kwlist, &transport, &chunked, &PyList_Type, &ids,
                                     &PyList_Type, &text, &bounds, &fold, &fold_every, &last, &high, &head, &on_first,
                                     &ends))
        return -1;
    if (head != Py_None && !PyBytes_CheckExact(head)) {
        PyErr_SetString(PyExc_TypeError, "head must be bytes or None");
        return -1;
    }
    if (on_first != Py_None && !PyCallable_Check(on_first)) {
        PyErr_SetString(PyExc_TypeError, "on_first must be callable or None");
        return -1;
    }
    PyObject *seq = PySequence_Fast(bounds, "bounds must be a sequence of floats");
    if (seq == NULL)
        return -1;
    Py_ssize_t nb = PySequence_Fast_GET_SIZE(seq);
    if (nb < 1 || nb > MAX_BOUNDS) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "between 1 and %d bounds", MAX_BOUNDS);
        return -1;
    }
    for (Py_ssize_t i = 0; i < nb; i++) {
        double b = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
        if (b == -1.0 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
        self->bounds[i] = b;
        self->counts[i] = 0;
    }
    Py_DECREF(seq);
    Pump_clear(self);
    self->is_closing = PyObject_GetAttrString(transport, "is_closing");
    self->write = PyObject_GetAttrString(transport, "write");
    self->buffer_size = PyObject_GetAttrString(transport, "get_write_buffer_size");
    self->empty = PyUnicode_FromStringAndSize("", 0);
    if (!self->is_closing || !self->write || !self->buffer_size || !self->empty)
        return -1;
    Py_INCREF(ids);
    self->sent_ids = ids;
    Py_INCREF(text);
    self->sent_text = text;
    Py_INCREF(fold);
    self->fold = fold;
    self->head = head == Py_None ? NULL : Py_NewRef(head);
    self->on_first = on_first == Py_None ? NULL : Py_NewRef(on_first);
    self->first = self->on_first != NULL;
    self->refused = 0;
    self->head_sent = 0;
    self->nbounds = (int)nb;
    self->chunked = chunked;
    self->ends = ends;
    self->ended = 0;
    self->fold_every = fold_every < 1 ? 1 : fold_every;
    self->high = high;
    self->last = last;
    self->total = 0.0;
    self->n = 0;
    self->tokens = 0;
    self->used = -1;
    self->resumable = 1;
    self->sent = 0;
    return 0;
}

/* Hand the counted gaps to ``fold`` and start counting afresh. */
static int pump_fold(Pump *self) {
    if (self->n == 0)
        return 1;
    PyObject *counts = PyList_New(self->nbounds);
    if (counts == NULL)
        return 0;
    for (int i = 0; i < self->nbounds; i++) {
        PyObject *c = PyLong_FromLongLong(self->counts[i]);
        if (c == NULL) {
            Py_DECREF(counts);
            return 0;
        }
        PyList_SET_ITEM(counts, i, c);
    }
    PyObject *r = PyObject_CallFunction(self->fold, "Odn", counts, self->total, self->n);
    Py_DECREF(counts);
    if (r == NULL)
        return 0;
    Py_DECREF(r);
    memset(self->counts, 0, sizeof(self->counts));
    self->total = 0.0;
    self->n = 0;
    return 1;
}

/* Room for ``more`` bytes after what is pending; 0 (MemoryError set) when there is none. */
static int out_reserve(Pump *self, Py_ssize_t more) {
    if (self->out_len + more <= self->out_cap)
        return 1;
    Py_ssize_t cap = self->out_cap ? self->out_cap : 512;
    while (cap < self->out_len + more)
        cap *= 2;
    char *out = PyMem_Realloc(self->out, (size_t)cap);
    if (out == NULL) {
        PyErr_NoMemory();
        return 0;
    }
    self->out = out;
    self->out_cap = cap;
    return 1;
}

/* One chunk's bytes, framed as one HTTP chunk when chunked, after what is pending: 1, or -1 (set). */
static int pump_take(Pump *self, const unsigned char *data, Py_ssize_t len) {
    char frame[24];
    int h = self->chunked ? snprintf(frame, sizeof(frame), "%zx\r\n", len) : 0;
    if (!out_reserve(self, h + len + 2))
        return -1;
    char *o = self->out + self->out_len;
    memcpy(o, frame, (size_t)h);
    memcpy(o + h, data, (size_t)len);
    if (self->chunked)
        memcpy(o + h + len, "\r\n", 2);
    self->out_len += h + len + (self->chunked ? 2 : 0);
    return 1;
}

/* The stream ended cleanly (the replica's END): given ``ends``, the body's last chunk goes with what is pending,
 * unless the response is not this pump's stream (its first chunk declined, or none came: its head unsent). */
int pumpc_end(Pump *self) {
    if (!self->ends || !self->chunked || self->refused || self->ended || (self->head != NULL && self->out_len == 0))
        return 1;
    if (!out_reserve(self, 5))
        return -1;
    memcpy(self->out + self->out_len, "0\r\n\r\n", 5);
    self->out_len += 5;
    self->ended = 1;
    return 1;
}

/* What is pending, to the client's socket in one write (the response's head first, the first time):
 * -1 error, 0 its buffer is full (pause), 1 go on. */
int pumpc_send(Pump *self) {
    Py_ssize_t len = self->out_len;
    if (len == 0)
        return 1;
    self->out_len = 0;
    PyObject *r = PyObject_CallNoArgs(self->is_closing);
    if (r == NULL)
        return -1;
    int closing = PyObject_IsTrue(r);
    Py_DECREF(r);
    if (closing)
        return closing < 0 ? -1 : 1;  /* the client left: its request is cancelled, nothing to write to */
    Py_ssize_t pre = self->head ? PyBytes_GET_SIZE(self->head) : 0;
    PyObject *out = PyBytes_FromStringAndSize(NULL, pre + len);
    if (out == NULL)
        return -1;
    char *o = PyBytes_AS_STRING(out);
    if (pre)
        memcpy(o, PyBytes_AS_STRING(self->head), (size_t)pre);
    memcpy(o + pre, self->out, (size_t)len);
    r = PyObject_CallOneArg(self->write, out);
    Py_DECREF(out);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    if (self->head != NULL) {
        Py_CLEAR(self->head);
        self->head_sent = 1;
    }
    r = PyObject_CallNoArgs(self->buffer_size);
    if (r == NULL)
        return -1;
    Py_ssize_t size = PyLong_AsSsize_t(r);
    Py_DECREF(r);
    if (size == -1 && PyErr_Occurred())
        return -1;
    return size <= self->high;
}

/* Whether a pump waiting for its first chunk leaves this one to Python (and every chunk after it): an error
 * status, no bytes, or -- with the response's head still to write -- bytes that are not SSE (a JSON answer). */
static int declines(Pump *self, const Chunk *c) {
    if (self->refused || (c->status != 0 && c->status != 200) || c->data_len == 0)
        return 1;
    return self->head != NULL && (c->data_len < 5 || memcmp(c->data, "data:", 5) != 0);
}

/* One CHUNK payload, its bytes left pending (pumpc_send writes them): -1 error (set), 1 go on, 2 declined (the
 * first chunk is Python's: nothing done). */
int pumpc_feed(Pump *self, const unsigned char *p, Py_ssize_t size) {
    Chunk c;
    if (!pumpc_parse_chunk(p, size, &c))
        return -1;
    if (self->first && declines(self, &c)) {
        self->refused = 1;
        return 2;
    }
    PyObject *text;
    if (c.text_len) {
        text = PyUnicode_DecodeUTF8((const char *)c.text, c.text_len, NULL);
        if (text == NULL)
            return -1;
    } else {
        text = Py_NewRef(self->empty);
    }
    double now = now_monotonic();
    if (self->first) {  /* no gap before it: on_first times the first token */
        self->first = 0;
        self->last = now;
        PyObject *r = PyObject_CallNoArgs(self->on_first);
        if (r == NULL) {
            Py_DECREF(text);
            return -1;
        }
        Py_DECREF(r);
    } else {
        double gap = now - self->last;
        int i = 0;
        while (i < self->nbounds - 1 && self->bounds[i] < gap)  /* bisect_left: the last bound is +Inf */
            i++;
        self->counts[i]++;
        self->total += gap;
        self->n++;
        self->last = now;
        if (self->n >= self->fold_every && !pump_fold(self)) {
            Py_DECREF(text);
            return -1;
        }
    }
    int go = 1;
    if (c.data_len || c.finish_len) {
        if (!pumpc_append_ids(p, size, self->sent_ids) || PyList_Append(self->sent_text, text) < 0) {
            Py_DECREF(text);
            return -1;
        }
        if (!c.resumable)
            self->resumable = 0;
        self->sent = 1;
        self->tokens += c.n_ids ? c.n_ids : (c.text_len ? 1 : 0);
        if (c.finish_len && self->used < 0)
            self->used = (long long)(c.prompt + c.completion);
        if (c.data_len)
            go = pump_take(self, c.data, c.data_len);
    }
    Py_DECREF(text);
    return go;
}

static PyObject *Pump_feed(Pump *self, PyObject *payload) {
    if (self->write == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Pump not initialised");
        return NULL;
    }
    Py_buffer b;
    if (PyObject_GetBuffer(payload, &b, PyBUF_SIMPLE) < 0)
        return NULL;
    int r = pumpc_feed(self, (const unsigned char *)b.buf, b.len);
    PyBuffer_Release(&b);
    if (r == 1)
        r = pumpc_send(self);
    if (r < 0)
        return NULL;
    if (r == 2)
        Py_RETURN_NONE;
    return PyBool_FromLong(r);
}

static PyObject *Pump_flush(Pump *self, PyObject *Py_UNUSED(ignored)) {
    if (!pump_fold(self))
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Pump_get_used(Pump *self, void *Py_UNUSED(closure)) {
    if (self->used < 0)
        Py_RETURN_NONE;
    return PyLong_FromLongLong(self->used);
}

static PyObject *Pump_get_bool(Pump *self, void *closure) {
    long which = (long)(Py_intptr_t)closure;
    return PyBool_FromLong(which == 0 ? self->resumable : which == 1 ? self->sent : which == 2 ? self->head_sent : self->ended);
}

static PyMethodDef Pump_methods[] = {
    {"feed", (PyCFunction)Pump_feed, METH_O,
     "One CHUNK frame's payload; False: the client's buffer is full (pause); None: declined (the first chunk is Python's)."},
    {"flush", (PyCFunction)Pump_flush, METH_NOARGS, "Fold the gaps counted so far into the histogram."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Pump_members[] = {
    {"last", T_DOUBLE, offsetof(Pump, last), 0, "When the latest chunk arrived (time.monotonic)."},
    {"tokens", T_LONGLONG, offsetof(Pump, tokens), READONLY, "Tokens relayed to the client by this pump."},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef Pump_getset[] = {
    {"used", (getter)Pump_get_used, NULL, "The whole request's usage, from its finish chunk (None: not seen).", NULL},
    {"resumable", (getter)Pump_get_bool, NULL, "False once a kept chunk could not be resumed from.", (void *)0},
    {"sent", (getter)Pump_get_bool, NULL, "A chunk was kept (bytes went to the client).", (void *)1},
    {"head_sent", (getter)Pump_get_bool, NULL, "The response head given at construction was written.", (void *)2},
    {"ended", (getter)Pump_get_bool, NULL, "The body's last chunk was written (``ends``: at the replica's END).", (void *)3},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject pumpc_PumpType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cluster.router._pump.Pump",
    .tp_basicsize = sizeof(Pump),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One stream's chunks to the client's socket (cluster/router/pump.py's Pump, in C).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Pump_init,
    .tp_dealloc = (destructor)Pump_dealloc,
    .tp_traverse = (traverseproc)Pump_traverse,
    .tp_clear = (inquiry)Pump_clear,
    .tp_methods = Pump_methods,
    .tp_members = Pump_members,
    .tp_getset = Pump_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_pump", "The router's per-token relay in C (see cluster/router/pump.py).", -1, NULL,
};

PyMODINIT_FUNC PyInit__pump(void) {
    if (PyType_Ready(&pumpc_PumpType) < 0 || PyType_Ready(&pumpc_FrameProtocolType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Pump", (PyObject *)&pumpc_PumpType) < 0 ||
        PyModule_AddObjectRef(m, "FrameProtocol", (PyObject *)&pumpc_FrameProtocolType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
