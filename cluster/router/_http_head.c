/* An ordinary request head for the fast HTTP front, read in C: cluster/router/http_fast.py's parse_head
 * without a Python call per header.
 *
 * head(buf) -> (endpoint, headers, length) | None.  buf is a whole head, ending in the empty line.  Only a
 * strict subset of HTTP/1.1 is taken here: "POST <hot path> HTTP/1.1", then lines "name: value" where the
 * name is token characters and the value printable ASCII (spaces inside, none at its end), one
 * Content-Length of digits, Connection (if any) exactly keep-alive, none of the unusual headers.  For
 * such a head the answer is the one llhttp's parse gives (a test compares them on generated heads); for
 * anything else -- another method, route or version, a query string, obs-fold, a byte outside ASCII, a
 * header the router must refuse or hand over -- it answers None and the caller parses with llhttp, which
 * decides as it always did.  So this parser never refuses and never accepts on its own: it only answers
 * what it is sure of.
 *
 * configure(hot, wanted, unusual) is called once at import: the hot paths (bytes -> endpoint str), the
 * header names the router reads and those that send a request elsewhere (lower-case bytes sets).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static PyObject *hot_paths;   /* dict bytes -> str */
static PyObject *wanted;      /* frozenset of bytes */
static PyObject *unusual;     /* frozenset of bytes */

#define MAX_NAME 64

static int is_tchar(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static int same_lower(const char *p, Py_ssize_t n, const char *word) {
    Py_ssize_t i = 0;
    for (; i < n && word[i]; i++) {
        char c = p[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (c != word[i])
            return 0;
    }
    return i == n && word[i] == 0;
}

/* One header line (name, value: vlen bytes at v), as the router reads it; 0: go on, 1: not sure (None),
 * -1: a Python error is set. */
static int take_header(const char *name, Py_ssize_t nlen, const char *v, Py_ssize_t vlen, PyObject *headers,
                       long long *length) {
    char low[MAX_NAME];
    for (Py_ssize_t i = 0; i < nlen; i++) {
        char c = name[i];
        low[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
    }
    if (nlen == 14 && memcmp(low, "content-length", 14) == 0) {
        if (*length >= 0 || vlen == 0 || vlen > 15)
            return 1;
        long long n = 0;
        for (Py_ssize_t i = 0; i < vlen; i++) {
            if (v[i] < '0' || v[i] > '9')
                return 1;
            n = n * 10 + (v[i] - '0');
        }
        *length = n;
        return 0;
    }
    if (nlen == 10 && memcmp(low, "connection", 10) == 0)
        return same_lower(v, vlen, "keep-alive") ? 0 : 1;
    PyObject *key = PyBytes_FromStringAndSize(low, nlen);
    if (key == NULL)
        return -1;
    int rc = 0;
    int odd = PySet_Contains(unusual, key);
    int want = odd == 0 ? PySet_Contains(wanted, key) : 0;
    if (odd != 0) {
        rc = odd < 0 ? -1 : 1;
    } else if (want < 0) {
        rc = -1;
    } else if (want) {
        PyObject *skey = PyUnicode_DecodeASCII(low, nlen, NULL);
        PyObject *sval = skey ? PyUnicode_DecodeASCII(v, vlen, NULL) : NULL;
        if (sval == NULL || PyDict_SetDefault(headers, skey, sval) == NULL)  /* the first one counts */
            rc = -1;
        Py_XDECREF(skey);
        Py_XDECREF(sval);
    }
    Py_DECREF(key);
    return rc;
}

/* The request line: "POST " path " HTTP/1.1\r\n"; the endpoint (a new reference), or NULL: not a hot
 * request (no error set), or a Python error. */
static PyObject *request_line(const char **pp, const char *end) {
    const char *p = *pp;
    if (end - p < 5 || memcmp(p, "POST ", 5) != 0)
        return NULL;
    p += 5;
    const char *path = p;
    while (p < end && *p != ' ' && *p != '\r')
        p++;
    if (end - p < 11 || memcmp(p, " HTTP/1.1\r\n", 11) != 0)
        return NULL;
    PyObject *key = PyBytes_FromStringAndSize(path, p - path);
    if (key == NULL)
        return NULL;
    PyObject *endpoint = PyDict_GetItemWithError(hot_paths, key);
    Py_DECREF(key);
    if (endpoint == NULL)
        return NULL;
    *pp = p + 11;
    Py_INCREF(endpoint);
    return endpoint;
}

static PyObject *head(PyObject *self, PyObject *arg) {
    if (hot_paths == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_http_head.configure() was not called");
        return NULL;
    }
    Py_buffer buf;
    if (PyObject_GetBuffer(arg, &buf, PyBUF_SIMPLE) < 0)
        return NULL;
    const char *p = buf.buf, *end = p + buf.len;
    PyObject *endpoint = NULL, *headers = NULL, *result = NULL;
    long long length = -1;
    int rc = 1;
    endpoint = request_line(&p, end);
    if (endpoint == NULL)
        goto done;
    headers = PyDict_New();
    if (headers == NULL)
        goto done;
    for (;;) {
        if (end - p >= 2 && p[0] == '\r' && p[1] == '\n') {
            rc = p + 2 == end ? 0 : 1; /* the empty line, and nothing after it */
            break;
        }
        const char *name = p;
        while (p < end && is_tchar((unsigned char)*p))
            p++;
        Py_ssize_t nlen = p - name;
        if (nlen == 0 || nlen > MAX_NAME || p >= end || *p != ':')
            break;
        p++;
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        const char *v = p;
        while (p < end && (unsigned char)*p >= 0x20 && (unsigned char)*p < 0x7f)
            p++;
        Py_ssize_t vlen = p - v;
        if (end - p < 2 || p[0] != '\r' || p[1] != '\n' || vlen == 0 || v[vlen - 1] == ' ')
            break; /* a control byte, a byte outside ASCII, an empty value or trailing space: llhttp decides */
        p += 2;
        int t = take_header(name, nlen, v, vlen, headers, &length);
        if (t < 0)
            goto done;
        if (t > 0)
            break;
    }
    if (rc == 0 && length >= 0)
        result = Py_BuildValue("(OOL)", endpoint, headers, length);
done:
    PyBuffer_Release(&buf);
    Py_XDECREF(endpoint);
    Py_XDECREF(headers);
    if (result == NULL && !PyErr_Occurred())
        Py_RETURN_NONE;
    return result;
}

static PyObject *configure(PyObject *self, PyObject *args) {
    PyObject *h, *w, *u;
    if (!PyArg_ParseTuple(args, "O!O!O!", &PyDict_Type, &h, &PyFrozenSet_Type, &w, &PyFrozenSet_Type, &u))
        return NULL;
    Py_INCREF(h);
    Py_INCREF(w);
    Py_INCREF(u);
    Py_XSETREF(hot_paths, h);
    Py_XSETREF(wanted, w);
    Py_XSETREF(unusual, u);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"head", head, METH_O, "(endpoint, headers, length) of an ordinary hot request head; None: not sure."},
    {"configure", configure, METH_VARARGS, "configure(hot, wanted, unusual): the routes and header names."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_http_head", "An ordinary request head in C (see cluster/router/http_fast.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__http_head(void) { return PyModule_Create(&module); }
