/* The router's per-token relay in C: cluster/router/pump.py is the same in Python, and says what it does.
 *
 * Two types, each a twin of one in pump.py (tests/unit/test_pump.py feeds both the same bytes and compares):
 *   FrameProtocol  the base of a relay connection (cluster/router/relay.py): ``data_received`` splits the
 *                  replica's frames; a CHUNK while ``self.pump`` is set goes to the pump here, anything else
 *                  to the Python methods ``_frame(kind, payload)``, ``_broken(why)``, ``_pump_stopped(exc)``.
 *   Pump           one stream's chunks to the client's socket: reads the few OpenAIChunk fields the router
 *                  needs straight off the wire, keeps what a migration and the tenant's charge need, times the
 *                  inter-token gap and writes the SSE bytes as one HTTP chunk; given ``on_first``, it takes
 *                  the stream from its first chunk on (writing the response's ``head`` with it), or declines
 *                  it to Python (an error status, no bytes, a JSON answer), and every chunk after it.
 *
 * Why: the same work in Python costs the router more CPU per relayed token than a Rust gateway spends
 * (docs/routing.md, router overhead); here uvloop calls ``data_received`` straight into C, so a token costs
 * no Python frame, no protobuf message object and no attribute lookups.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <time.h>

#define HEADER_SIZE 5
#define MAX_FRAME (64u * 1024u * 1024u)
#define KIND_REQUEST 1
#define KIND_CHUNK 2
#define KIND_END 3
#define KIND_ERROR 4
#define MAX_BOUNDS 64

/* ---- OpenAIChunk off the wire (proto/llm_cluster/v1/replica.proto) ---------------------------------- */

typedef struct {
    const unsigned char *data, *text, *finish;
    Py_ssize_t data_len, text_len, finish_len;
    unsigned long long prompt, completion, status;
    Py_ssize_t n_ids;
    int resumable;
} Chunk;

/* One varint at *p (before end); 0 on a truncated or over-long one. */
static int read_varint(const unsigned char **p, const unsigned char *end, unsigned long long *out) {
    unsigned long long v = 0;
    int shift = 0;
    while (*p < end && shift < 64) {
        unsigned char b = *(*p)++;
        v |= (unsigned long long)(b & 0x7F) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 1;
        }
        shift += 7;
    }
    return 0;
}

/* A length-delimited field's span; 0 when it runs past the message. */
static int read_span(const unsigned char **p, const unsigned char *end, const unsigned char **span, Py_ssize_t *len) {
    unsigned long long n;
    if (!read_varint(p, end, &n) || n > (unsigned long long)(end - *p))
        return 0;
    *span = *p;
    *len = (Py_ssize_t)n;
    *p += n;
    return 1;
}

/* Skip a field of an unknown number; 0 on a wire type this message cannot hold. */
static int skip_field(const unsigned char **p, const unsigned char *end, int wire) {
    unsigned long long v;
    const unsigned char *span;
    Py_ssize_t len;
    switch (wire) {
    case 0:
        return read_varint(p, end, &v);
    case 1:
        if (end - *p < 8)
            return 0;
        *p += 8;
        return 1;
    case 2:
        return read_span(p, end, &span, &len);
    case 5:
        if (end - *p < 4)
            return 0;
        *p += 4;
        return 1;
    default:
        return 0;
    }
}

/* Count the varints of a packed span; -1 when one is truncated. */
static Py_ssize_t count_varints(const unsigned char *p, const unsigned char *end) {
    Py_ssize_t n = 0;
    unsigned long long v;
    while (p < end) {
        if (!read_varint(&p, end, &v))
            return -1;
        n++;
    }
    return n;
}

/* Pass 1: the fields' spans and the token ids' count; sets ValueError and returns 0 on a malformed message. */
static int parse_chunk(const unsigned char *p, Py_ssize_t size, Chunk *c) {
    const unsigned char *end = p + size;
    memset(c, 0, sizeof(*c));
    while (p < end) {
        unsigned long long key, v;
        const unsigned char *span;
        Py_ssize_t len, n;
        if (!read_varint(&p, end, &key))
            goto bad;
        int field = (int)(key >> 3), wire = (int)(key & 7);
        if (field == 1 && wire == 2) {
            if (!read_span(&p, end, &c->data, &c->data_len))
                goto bad;
        } else if (field == 2 && wire == 0) {
            if (!read_varint(&p, end, &v))
                goto bad;
            c->status = v & 0xFFFFFFFFull;
        } else if (field == 3 && wire == 2) {  /* packed token ids */
            if (!read_span(&p, end, &span, &len) || (n = count_varints(span, span + len)) < 0)
                goto bad;
            c->n_ids += n;
        } else if (field == 3 && wire == 0) {  /* one unpacked token id */
            if (!read_varint(&p, end, &v))
                goto bad;
            c->n_ids++;
        } else if (field == 4 && wire == 2) {
            if (!read_span(&p, end, &c->text, &c->text_len))
                goto bad;
        } else if (field == 5 && wire == 0) {
            if (!read_varint(&p, end, &v))
                goto bad;
            c->resumable = v != 0;
        } else if (field == 7 && wire == 2) {
            if (!read_span(&p, end, &c->finish, &c->finish_len))
                goto bad;
        } else if ((field == 8 || field == 9) && wire == 0) {
            if (!read_varint(&p, end, &v))
                goto bad;
            if (field == 8)
                c->prompt = v & 0xFFFFFFFFull;  /* uint32, as protobuf truncates */
            else
                c->completion = v & 0xFFFFFFFFull;
        } else if (field == 0 || !skip_field(&p, end, wire)) {
            goto bad;
        }
    }
    return 1;
bad:
    PyErr_SetString(PyExc_ValueError, "malformed OpenAIChunk from the replica");
    return 0;
}

/* Pass 2: append the token ids (packed or not) to ``out``; the message was checked by pass 1. */
static int append_id(PyObject *out, unsigned long long v) {
    PyObject *id = PyLong_FromUnsignedLongLong(v & 0xFFFFFFFFull);  /* uint32, as protobuf truncates */
    if (id == NULL)
        return 0;
    int r = PyList_Append(out, id);
    Py_DECREF(id);
    return r == 0;
}

static int append_ids(const unsigned char *p, Py_ssize_t size, PyObject *out) {
    const unsigned char *end = p + size;
    while (p < end) {
        unsigned long long key = 0, v = 0;
        const unsigned char *span = NULL;
        Py_ssize_t len = 0;
        if (!read_varint(&p, end, &key))
            return 1;  /* not reached: pass 1 checked the message */
        int field = (int)(key >> 3), wire = (int)(key & 7);
        if (field == 3 && wire == 2) {
            if (!read_span(&p, end, &span, &len))
                return 1;
            const unsigned char *q = span, *qend = span + len;
            while (q < qend && read_varint(&q, qend, &v)) {
                if (!append_id(out, v))
                    return 0;
            }
        } else if (field == 3 && wire == 0) {
            if (!read_varint(&p, end, &v))
                return 1;
            if (!append_id(out, v))
                return 0;
        } else if (!skip_field(&p, end, wire)) {
            return 1;
        }
    }
    return 1;
}

/* ---- Pump ------------------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *is_closing, *write, *buffer_size;  /* the client's transport's bound methods */
    PyObject *sent_ids, *sent_text;              /* RelayState's lists (shared, appended to) */
    PyObject *fold;                              /* fold(counts, total, n): the ITL tally into its histogram */
    PyObject *empty;
    PyObject *head;                              /* the HTTP response head, written with the first bytes (or NULL) */
    PyObject *on_first;                          /* called when the first chunk is taken (NULL: none expected) */
    char *out;                                   /* the bytes taken but not written yet (one write per read) */
    Py_ssize_t out_len, out_cap;
    int chunked, resumable, sent, first, refused, head_sent, ends, ended;
    Py_ssize_t high, fold_every, n;
    int nbounds;
    double bounds[MAX_BOUNDS];
    long long counts[MAX_BOUNDS];
    double total, last;
    long long tokens, used;
} Pump;

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
static int pump_end(Pump *self) {
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
static int pump_send(Pump *self) {
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

/* One CHUNK payload, its bytes left pending (pump_send writes them): -1 error (set), 1 go on, 2 declined (the
 * first chunk is Python's: nothing done). */
static int pump_feed(Pump *self, const unsigned char *p, Py_ssize_t size) {
    Chunk c;
    if (!parse_chunk(p, size, &c))
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
        if (!append_ids(p, size, self->sent_ids) || PyList_Append(self->sent_text, text) < 0) {
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
    int r = pump_feed(self, (const unsigned char *)b.buf, b.len);
    PyBuffer_Release(&b);
    if (r == 1)
        r = pump_send(self);
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

static PyTypeObject PumpType = {
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

/* The pump's pause (``r`` 0) or its error (``r`` -1, set: the client's socket, a malformed chunk) ends the pump,
 * not the connection: ``_pump_stopped(exc or None)``; 0 when that raised (set). */
static int fp_stop(FrameProtocol *self, int r) {
    PyObject *exc = NULL;
    if (r < 0) {
        PyObject *type, *tb;
        PyErr_Fetch(&type, &exc, &tb);
        PyErr_NormalizeException(&type, &exc, &tb);
        if (exc != NULL && tb != NULL)
            PyException_SetTraceback(exc, tb);
        Py_XDECREF(type);
        Py_XDECREF(tb);
    }
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
    int r = pump_send(pump);
    Py_DECREF(pump);
    return r > 0 ? 1 : fp_stop(self, r);
}

/* One chunk to the connection's pump, its bytes held for one write with the rest of this read: 1 taken, 2
 * declined (the connection's _frame takes it), 0 when the pump's error could not be handed on (set). */
static int fp_pump(FrameProtocol *self, Pump **held, const unsigned char *p, Py_ssize_t size) {
    Pump *pump = (Pump *)Py_NewRef(self->pump);  /* a Pump: FP_set_pump takes nothing else */
    int r = pump_feed(pump, p, size);
    if (r == 1 && *held == NULL) {
        *held = pump;  /* the same pump until a Python call: fp_send runs before every one */
        return 1;
    }
    Py_DECREF(pump);
    if (r > 0)
        return r;
    PyObject *type, *exc, *tb;  /* what it took before this chunk is written before it stops */
    PyErr_Fetch(&type, &exc, &tb);
    if (!fp_send(self, held)) {
        Py_XDECREF(type);
        Py_XDECREF(exc);
        Py_XDECREF(tb);
        return 0;
    }
    PyErr_Restore(type, exc, tb);
    return fp_stop(self, -1);
}

/* The replica ended the stream cleanly: the pump writes the body's end with what it holds (``ends``). */
static int fp_end(FrameProtocol *self, Pump **held) {
    if (self->pump == NULL || self->pump == Py_None)
        return 1;
    if (pump_end((Pump *)self->pump) < 0)
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
    if (value != Py_None && !(Py_IS_TYPE(value, &PumpType) && ((Pump *)value)->write != NULL)) {
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

static PyTypeObject FrameProtocolType = {
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

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_pump", "The router's per-token relay in C (see cluster/router/pump.py).", -1, NULL,
};

PyMODINIT_FUNC PyInit__pump(void) {
    if (PyType_Ready(&PumpType) < 0 || PyType_Ready(&FrameProtocolType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Pump", (PyObject *)&PumpType) < 0 ||
        PyModule_AddObjectRef(m, "FrameProtocol", (PyObject *)&FrameProtocolType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
