/* What crosses the files of the router's per-token relay in C (cluster/router/pump.py is the same in Python,
 * and says what it does).  One extension, cluster.router._pump, from three sources:
 *   _pump_wire.c    the few OpenAIChunk fields the pump needs, read straight off the wire;
 *   _pump.c         the Pump type (one stream's chunks to the client's socket) and the module's init;
 *   _pump_frames.c  the FrameProtocol type (the relay connection's frame split, CHUNKs to its pump).
 * Each name here is the module's own: prefixed ``pumpc_`` and hidden from the shared object's exports.
 */
#ifndef LLM_CLUSTER_PUMP_H
#define LLM_CLUSTER_PUMP_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#if defined(__GNUC__) || defined(__clang__)
#define PUMPC_HIDDEN __attribute__((visibility("hidden")))
#else
#define PUMPC_HIDDEN
#endif

#define MAX_BOUNDS 64

/* ---- _pump_wire.c ----------------------------------------------------------------------------------- */

typedef struct {
    const unsigned char *data, *text, *finish;
    Py_ssize_t data_len, text_len, finish_len;
    unsigned long long prompt, completion, status;
    Py_ssize_t n_ids;
    int resumable;
} Chunk;

PUMPC_HIDDEN int pumpc_parse_chunk(const unsigned char *p, Py_ssize_t size, Chunk *c);
PUMPC_HIDDEN int pumpc_append_ids(const unsigned char *p, Py_ssize_t size, PyObject *out);

/* ---- _pump.c ---------------------------------------------------------------------------------------- */

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

PUMPC_HIDDEN extern PyTypeObject pumpc_PumpType;
PUMPC_HIDDEN int pumpc_feed(Pump *self, const unsigned char *p, Py_ssize_t size);
PUMPC_HIDDEN int pumpc_send(Pump *self);
PUMPC_HIDDEN int pumpc_end(Pump *self);

/* ---- _pump_frames.c --------------------------------------------------------------------------------- */

PUMPC_HIDDEN extern PyTypeObject pumpc_FrameProtocolType;

#endif
