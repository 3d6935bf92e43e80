/*
 * tls.c - OpenSSL settings and diagnosis for mqtts:// (built WITH_TLS only).
 *
 * Paho speaks TLS itself; two things it cannot do are done here:
 *
 *   - the minimum TLS version. Paho 1.3 creates its SSL_CTX with
 *     TLS_client_method() and ignores its sslVersion option with OpenSSL >=
 *     1.1. OpenSSL applies the "system_default" section of its configuration
 *     to every SSL_CTX it creates, so mrb_tls_init() sets MinProtocol there.
 *   - saying why a handshake failed. Paho reports every TLS failure as
 *     "TCP/TLS connect failure"; OpenSSL's error line says "certificate
 *     verify failed" without the reason, and a host name mismatch leaves no
 *     error line at all. mrb_tls_diagnose() makes one handshake of its own
 *     with the same settings and reads the verification result.
 *
 * Main thread only. mrb_tls_diagnose() blocks, for at most about 3 s (a
 * connect, a handshake and a read, each with a 1 s timeout); the caller
 * runs it once per outage.
 */
#include "mrb/tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <openssl/bio.h>
#include <openssl/conf.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "mrb/log.h"

#define PROBE_TIMEOUT_MS 1000

mrb_err mrb_tls_init(mrb_tls_version min_version)
{
    char text[200];
    snprintf(text, sizeof(text),
             "mrb = mrb_sect\n[mrb_sect]\nssl_conf = mrb_ssl\n"
             "[mrb_ssl]\nsystem_default = mrb_tls\n"
             "[mrb_tls]\nMinProtocol = %s\n",
             min_version == MRB_TLS_1_3 ? "TLSv1.3" : "TLSv1.2");
    /* the system configuration first: ours then replaces its ssl_conf
     * settings (Debian 12 has none) instead of being replaced by them */
    OPENSSL_init_ssl(OPENSSL_INIT_LOAD_CONFIG, NULL);
    BIO *bio = BIO_new_mem_buf(text, -1);
    CONF *conf = NCONF_new(NULL);
    long line = 0;
    int ok = bio && conf && NCONF_load_bio(conf, bio, &line) > 0 &&
             CONF_modules_load(conf, "mrb", 0) > 0;
    NCONF_free(conf);
    BIO_free(bio);
    if (!ok) {
        mrb_error("mqtt: cannot set the minimum TLS version in OpenSSL");
        return MRB_ERR_INVALID;
    }
    return MRB_OK;
}

/* A TCP connection to host:port within PROBE_TIMEOUT_MS, with send and
 * receive timeouts as long; -1 if there is none. */
static int probe_connect(const char *host, int port)
{
    struct addrinfo hints, *res = NULL;
    char service[16];
    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    snprintf(service, sizeof(service), "%d", port);
    if (getaddrinfo(host, service, &hints, &res) != 0 || !res)
        return -1;
    int fd = socket(res->ai_family, res->ai_socktype | SOCK_CLOEXEC, 0);
    int ok = fd >= 0;
    if (ok) {
        int flags = fcntl(fd, F_GETFL);
        fcntl(fd, F_SETFL, flags | O_NONBLOCK);
        if (connect(fd, res->ai_addr, res->ai_addrlen) != 0) {
            struct pollfd p = {fd, POLLOUT, 0};
            int soerr = 0;
            socklen_t len = sizeof(soerr);
            ok = errno == EINPROGRESS && poll(&p, 1, PROBE_TIMEOUT_MS) == 1 &&
                 getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) == 0 &&
                 soerr == 0;
        }
        fcntl(fd, F_SETFL, flags);
        struct timeval tv = {PROBE_TIMEOUT_MS / 1000,
                             (suseconds_t)(PROBE_TIMEOUT_MS % 1000) * 1000};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    }
    freeaddrinfo(res);
    if (!ok && fd >= 0) {
        close(fd);
        fd = -1;
    }
    return fd;
}

/* The oldest OpenSSL error queued, as text ("" if none); clears the queue. */
static const char *ssl_reason(char *buf, size_t len)
{
    unsigned long e = ERR_get_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    snprintf(buf, len, "%s", r ? r : "");
    ERR_clear_error();
    return buf;
}

static void explain_verify(long vr, const mrb_config *cfg, char *out,
                           size_t outlen)
{
    const char *host = cfg->mqtt.host, *what = NULL;
    switch (vr) {
    case X509_V_ERR_CERT_HAS_EXPIRED:
        what = "the broker's certificate has expired";
        break;
    case X509_V_ERR_CERT_NOT_YET_VALID:
        what = "the broker's certificate is not valid yet (is this device's "
               "clock right?)";
        break;
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_CERT_SIGNATURE_FAILURE:
        what = cfg->tls_ca_file || cfg->tls_ca_path
                   ? "the broker's certificate is not signed by a CA in "
                     "mqtt.tls.ca_file / mqtt.tls.ca_path"
                   : "the broker's certificate is not signed by a CA the "
                     "system trusts (set mqtt.tls.ca_file)";
        break;
    case X509_V_ERR_HOSTNAME_MISMATCH:
    case X509_V_ERR_IP_ADDRESS_MISMATCH:
        snprintf(out, outlen, "the broker's certificate does not name the host "
                 "\"%s\" of mqtt.url (connect by a name the certificate holds, "
                 "or set mqtt.tls.verify_hostname false)", host);
        return;
    default:
        break;
    }
    snprintf(out, outlen, "%s%s(OpenSSL: %s)", what ? what : "", what ? " " : "",
             X509_verify_cert_error_string(vr));
}

void mrb_tls_diagnose(const mrb_config *cfg, char *out, size_t outlen)
{
    const char *host = cfg->mqtt.host;
    char reason[256];
    SSL_CTX *ctx = NULL;
    SSL *ssl = NULL;
    out[0] = '\0';
    int fd = probe_connect(host, cfg->mqtt.port);
    if (fd < 0)
        return; /* not TLS: the broker is not reachable */
    ERR_clear_error();
    if (!(ctx = SSL_CTX_new(TLS_client_method())))
        goto done;
    /* the handshake goes on whatever the result: it is read below */
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    if (cfg->tls_ca_file || cfg->tls_ca_path
            ? SSL_CTX_load_verify_locations(ctx, cfg->tls_ca_file,
                                            cfg->tls_ca_path) != 1
            : SSL_CTX_set_default_verify_paths(ctx) != 1) {
        snprintf(out, outlen, "cannot load the CA certificates of "
                 "mqtt.tls.ca_file / ca_path: %s", ssl_reason(reason, sizeof(reason)));
        goto done;
    }
    if (cfg->tls_cert_file &&
        (SSL_CTX_use_certificate_chain_file(ctx, cfg->tls_cert_file) != 1 ||
         SSL_CTX_use_PrivateKey_file(ctx, cfg->tls_key_file ? cfg->tls_key_file
                                                            : cfg->tls_cert_file,
                                     SSL_FILETYPE_PEM) != 1 ||
         SSL_CTX_check_private_key(ctx) != 1)) {
        snprintf(out, outlen, "cannot use the client certificate "
                 "mqtt.tls.cert_file / key_file: %s",
                 ssl_reason(reason, sizeof(reason)));
        goto done;
    }
    if (!(ssl = SSL_new(ctx)) || SSL_set_fd(ssl, fd) != 1)
        goto done;
    unsigned char ip[16];
    int is_ip = inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1;
    if (!is_ip)
        SSL_set_tlsext_host_name(ssl, host);
    if (cfg->tls_verify_hostname) {
        X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
        if (is_ip)
            X509_VERIFY_PARAM_set1_ip_asc(param, host);
        else
            X509_VERIFY_PARAM_set1_host(param, host, 0);
    }
    int rc = SSL_connect(ssl);
    long vr = SSL_get_verify_result(ssl);
    char byte;
    /* TLS 1.3: the server refuses a client certificate (or its absence)
     * after the client's side of the handshake is done; its alert is the
     * first thing to read. (A broker that accepts us sends nothing before
     * CONNECT: the read times out.) */
    if (rc == 1 && SSL_read(ssl, &byte, 1) <= 0 && ERR_peek_error())
        rc = 0;
    if (SSL_get0_peer_certificate(ssl) && vr != X509_V_OK)
        explain_verify(vr, cfg, out, outlen);
    else if (rc != 1)
        snprintf(out, outlen, "TLS handshake failed: %s",
                 ssl_reason(reason, sizeof(reason))[0] ? reason
                 : "the broker closed the connection");
done:
    ERR_clear_error();
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    close(fd);
}
