/*
 * config_int.h - what config.c (the schema and the JSON file),
 * config_finish.c (the configuration as a whole) and cli.c (the command
 * line) share; not for the rest of the bridge, which uses mrb/config.h and
 * mrb/cli.h.
 */
#ifndef MRB_CONFIG_INT_H
#define MRB_CONFIG_INT_H

#include <stddef.h>
#include <sys/stat.h>

#include "mrb/config.h"

/* The documentation texts of the schema and option tables (a key's meaning,
 * an option's man page paragraph): compiled into mrb-docgen only, which
 * builds these files with MRB_DOCS; the bridge does not carry them (NULL
 * there; about 8 KB). */
#ifdef MRB_DOCS
#define DOC(text) text
#else
#define DOC(text) NULL
#endif

/* The schema rows' further checks of string values (config_finish.c): msg
 * says what is wrong with the value. */
mrb_err mrb_config__check_id(const char *v, char *msg, size_t msglen);
mrb_err mrb_config__check_mqtt_url(const char *v, char *msg, size_t msglen);
mrb_err mrb_config__check_redis_url(const char *v, char *msg, size_t msglen);

/* A warning for the start (config_finish.c): a file holding a secret
 * (what, at path, with st) that every user can read. */
void mrb_config__warn_if_public(mrb_config *cfg, const char *what,
                                const char *path, const struct stat *st);
/* Whether url holds a password (config_finish.c). */
int mrb_config__has_password(const char *url);

/* The names of mqtt.protocol's and mqtt.tls.min_version's values, by the
 * value (config.c's schema; NULL-terminated). */
extern const char *const mrb_config__protocols[];
extern const char *const mrb_config__tls_versions[];

/* Replace *slot by a copy of value (config.c). */
mrb_err mrb_config__set_string(char **slot, const char *value);
/* The schema's string defaults (mqtt.url, redis.url) where the key is not
 * set (config.c). */
mrb_err mrb_config__string_defaults(mrb_config *cfg);

#endif
