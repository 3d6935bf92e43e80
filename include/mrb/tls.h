/*
 * tls.h - OpenSSL settings and diagnosis for mqtts:// (src/tls.c; only in
 * builds WITH_TLS). Main thread only.
 */
#ifndef MRB_TLS_H
#define MRB_TLS_H

#include <stddef.h>

#include "mrb/config.h"
#include "mrb/err.h"

/* Make TLS connections of this process refuse versions below min_version.
 * Before the first TLS connection. Logs and returns MRB_ERR_INVALID if
 * OpenSSL refuses. */
mrb_err mrb_tls_init(mrb_tls_version min_version);

/* After a failed TLS connect to cfg's broker: one handshake of our own with
 * the same CA, client certificate and host name settings, and in out why it
 * fails ("the broker's certificate has expired", ...), or "" when it cannot
 * tell (the broker is unreachable, or the handshake works). Blocks for at
 * most about 3 s. */
void mrb_tls_diagnose(const mrb_config *cfg, char *out, size_t outlen);

#endif
