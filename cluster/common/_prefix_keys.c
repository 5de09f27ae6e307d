/* The prefix keys of a prompt's text in C: cluster/common/prefix_hash.py's text_keys, without a Python
 * loop, slice or call per block.
 *
 * text_keys(text, block_bytes, max_blocks) -> list[int]: key i = i << 32 | CRC-32 of the UTF-8 text's
 * first (i + 1) * block_bytes bytes, for each full block (at most max_blocks) -- the same values as the
 * Python (zlib's CRC-32, run on from the previous block's value), which the tests check on random text.
 * The CRC is slicing-by-8 over tables built at import (little-endian loads; byte at a time elsewhere).
 * A str's UTF-8 is read where CPython keeps it (no copy for ASCII); one with a lone surrogate raises
 * UnicodeEncodeError, as str.encode() does.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static uint32_t table[8][256];

static void build_tables(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        table[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++)
        for (int k = 1; k < 8; k++)
            table[k][n] = (table[k - 1][n] >> 8) ^ table[0][table[k - 1][n] & 0xff];
}

/* zlib.crc32(data[:len], crc) */
static uint32_t crc32_run(uint32_t crc, const unsigned char *p, Py_ssize_t len) {
    crc = ~crc;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    while (len >= 8) {
        uint32_t lo, hi;
        memcpy(&lo, p, 4);
        memcpy(&hi, p + 4, 4);
        lo ^= crc;
        crc = table[7][lo & 0xff] ^ table[6][(lo >> 8) & 0xff] ^ table[5][(lo >> 16) & 0xff] ^ table[4][lo >> 24] ^
              table[3][hi & 0xff] ^ table[2][(hi >> 8) & 0xff] ^ table[1][(hi >> 16) & 0xff] ^ table[0][hi >> 24];
        p += 8;
        len -= 8;
    }
#endif
    while (len-- > 0)
        crc = table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

static PyObject *text_keys(PyObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"text", "block_bytes", "max_blocks", NULL};
    PyObject *text;
    Py_ssize_t block = 128, max_blocks = 128;  /* prefix_hash.py's defaults (TEXT_BLOCK_BYTES, 128): tested alike */
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "U|nn:text_keys", kwlist, &text, &block, &max_blocks))
        return NULL;
    if (block < 1) {
        PyErr_SetString(PyExc_ValueError, "block_bytes must be at least 1");
        return NULL;
    }
    Py_ssize_t size;
    const char *data = PyUnicode_AsUTF8AndSize(text, &size);
    if (data == NULL)
        return NULL;
    Py_ssize_t n = size / block;
    if (n > max_blocks)
        n = max_blocks < 0 ? 0 : max_blocks;
    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    uint32_t crc = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        crc = crc32_run(crc, (const unsigned char *)data + i * block, block);
        PyObject *key = PyLong_FromUnsignedLongLong(((unsigned long long)i << 32) | crc);
        if (key == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, key);
    }
    return out;
}

static PyMethodDef methods[] = {
    {"text_keys", (PyCFunction)(void (*)(void))text_keys, METH_VARARGS | METH_KEYWORDS, "Chained keys of the full blocks of a str's UTF-8 (see prefix_hash.text_keys)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_prefix_keys", "Prefix keys of text in C (see cluster/common/prefix_hash.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__prefix_keys(void) {
    build_tables();
    return PyModule_Create(&module);
}
