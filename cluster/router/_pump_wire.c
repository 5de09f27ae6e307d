/* The OpenAIChunk fields the router's per-token relay needs, read straight off the wire: a part of the C twin of
 * cluster/router/pump.py (which says what it does).  cluster/router/_pump.c's Pump calls pumpc_parse_chunk and
 * pumpc_append_ids (declared in _pump.h) per CHUNK frame; no protobuf message object is made.
 */
#include "_pump.h"

/* ---- OpenAIChunk off the wire (proto/llm_cluster/v1/replica.proto) ---------------------------------- */

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
int pumpc_parse_chunk(const unsigned char *p, Py_ssize_t size, Chunk *c) {
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

int pumpc_append_ids(const unsigned char *p, Py_ssize_t size, PyObject *out) {
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
