/*
 * docgen.c - mrb-docgen, a build tool (not installed): writes the options
 * reference into the man pages and docs/CONFIGURATION.md from the two tables
 * it is kept in, config.c's schema (mrb_config_keys) and cli.c's options
 * (mrb_cli_options), so that --help, mqtt-redis-bridge(8),
 * mqtt-redis-bridge.json(5) and the docs cannot disagree.
 *
 *   mrb-docgen [-o OUT] FILE   FILE with its markers filled in, to OUT or
 *                              stdout
 *   mrb-docgen --check FILE    exit 1 if FILE is not what it would be filled
 *                              in (a committed Markdown file gone stale)
 *
 * Markers: in roff, a line `.\" MRB-OPTIONS` or `.\" MRB-KEYS` is replaced
 * by the list; in Markdown the lines between `<!-- MRB-KEYS -->` and
 * `<!-- /MRB-KEYS -->` (and the same for MRB-OPTIONS) are, the markers stay.
 * The texts are plain with `code` in backquotes (bold in roff).
 */
#include "mrb/cli.h"
#include "mrb/config.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_KEYS 128

/* Text with `code` spans as roff: code bold, backslashes and the minus
 * signs of code escaped, no line starting with a control character. */
static void roff(FILE *out, const char *t)
{
    int code = 0, bol = 1;
    for (; *t; t++) {
        if (bol && (*t == '.' || *t == '\''))
            fputs("\\&", out);
        bol = 0;
        if (*t == '`') {
            fputs(code ? "\\fR" : "\\fB", out);
            code = !code;
        } else if (*t == '\\') {
            fputs("\\e", out);
        } else if (*t == '-' && code) {
            fputs("\\-", out);
        } else if (*t == '\n') {
            fputc('\n', out);
            bol = 1;
        } else {
            fputc(*t, out);
        }
    }
    fputc('\n', out);
}

/* Text for a Markdown table cell: '|' escaped, lines joined. */
static void md_cell(FILE *out, const char *t)
{
    for (; *t; t++) {
        if (*t == '|')
            fputs("\\|", out);
        else
            fputc(*t == '\n' ? ' ' : *t, out);
    }
}

/* "integer 1-3600", "one of `a`, `b`", "string, required", ... */
static void type_text(const mrb_config_key *k, char *buf, size_t len)
{
    if (strcmp(k->type, "integer") == 0) {
        snprintf(buf, len, "integer %" PRId64 "-%" PRId64, k->min, k->max);
    } else if (strcmp(k->type, "enum") == 0) {
        size_t o = (size_t)snprintf(buf, len, "one of");
        for (size_t i = 0; k->allowed[i] && o < len; i++)
            o += (size_t)snprintf(buf + o, len - o, "%s `%s`", i ? "," : "",
                                  k->allowed[i]);
    } else if (strcmp(k->type, "array") == 0) {
        snprintf(buf, len, "array of objects, not empty");
    } else {
        snprintf(buf, len, "%s%s", k->type, k->required ? ", required" : "");
    }
}

static void keys_roff(FILE *out, const mrb_config_key *keys, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char type[160], line[300];
        type_text(&keys[i], type, sizeof(type));
        snprintf(line, sizeof(line), "%s%s%s%s", type,
                 keys[i].def[0] ? " (default: " : "", keys[i].def,
                 keys[i].def[0] ? ")" : "");
        fprintf(out, ".TP\n.B %s\n", keys[i].path);
        roff(out, line);
        fputs(".br\n", out);
        roff(out, keys[i].doc);
    }
}

static void keys_md(FILE *out, const mrb_config_key *keys, size_t n)
{
    fputs("| key | type | default | meaning |\n|---|---|---|---|\n", out);
    for (size_t i = 0; i < n; i++) {
        char type[160];
        type_text(&keys[i], type, sizeof(type));
        fprintf(out, "| `%s` | ", keys[i].path);
        md_cell(out, type);
        fputs(" | ", out);
        md_cell(out, keys[i].def);
        fputs(" | ", out);
        md_cell(out, keys[i].doc);
        fputs(" |\n", out);
    }
}

static void options_roff(FILE *out)
{
    size_t n;
    const mrb_cli_option *o = mrb_cli_options(&n);
    for (size_t i = 0; i < n; i++, o++) {
        fputs(".TP\n", out);
        if (o->short_name)
            fprintf(out, "\\fB\\-%c\\fR, ", o->short_name);
        fputs("\\fB\\-\\-", out);
        for (const char *p = o->long_name; *p; p++)
            fputs(*p == '-' ? "\\-" : (char[2]){*p, 0}, out);
        fputs("\\fR", out);
        if (o->arg)
            fprintf(out, " \\fI%s\\fR", o->arg);
        fputc('\n', out);
        if (o->doc) {
            roff(out, o->doc);
        } else { /* the --help line, as a sentence */
            fprintf(out, "%c%s.\n", o->help[0] - 'a' + 'A', o->help + 1);
        }
    }
}

static void options_md(FILE *out)
{
    size_t n;
    const mrb_cli_option *o = mrb_cli_options(&n);
    fputs("| option | meaning |\n|---|---|\n", out);
    for (size_t i = 0; i < n; i++, o++) {
        fputs("| `", out);
        if (o->short_name)
            fprintf(out, "-%c, ", o->short_name);
        fprintf(out, "--%s%s%s` | ", o->long_name, o->arg ? " " : "",
                o->arg ? o->arg : "");
        if (o->doc) {
            md_cell(out, o->doc);
        } else {
            fprintf(out, "%c", o->help[0] - 'a' + 'A');
            md_cell(out, o->help + 1);
            fputc('.', out);
        }
        fputs(" |\n", out);
    }
}

/* FILE's text with its markers filled in, into out. */
static int fill(FILE *in, FILE *out)
{
    static mrb_config_key keys[MAX_KEYS];
    size_t n = mrb_config_keys(keys, MAX_KEYS);
    if (n > MAX_KEYS) {
        fprintf(stderr, "mrb-docgen: more than %d keys\n", MAX_KEYS);
        return 1;
    }
    char line[4096];
    const char *skip_to = NULL;
    while (fgets(line, sizeof(line), in)) {
        if (skip_to) {
            if (strcmp(line, skip_to) != 0)
                continue;
            skip_to = NULL;
        }
        if (strcmp(line, ".\\\" MRB-OPTIONS\n") == 0) {
            options_roff(out);
        } else if (strcmp(line, ".\\\" MRB-KEYS\n") == 0) {
            keys_roff(out, keys, n);
        } else if (strcmp(line, "<!-- MRB-OPTIONS -->\n") == 0) {
            fputs(line, out);
            options_md(out);
            skip_to = "<!-- /MRB-OPTIONS -->\n";
        } else if (strcmp(line, "<!-- MRB-KEYS -->\n") == 0) {
            fputs(line, out);
            keys_md(out, keys, n);
            skip_to = "<!-- /MRB-KEYS -->\n";
        } else {
            fputs(line, out); /* an end marker too: it stays */
        }
    }
    if (skip_to) {
        fprintf(stderr, "mrb-docgen: no %s", skip_to);
        return 1;
    }
    return ferror(in) || ferror(out);
}

int main(int argc, char **argv)
{
    int check = argc == 3 && strcmp(argv[1], "--check") == 0;
    const char *outpath = argc == 4 && strcmp(argv[1], "-o") == 0 ? argv[2] : NULL;
    if (argc != 2 && !check && !outpath) {
        fputs("usage: mrb-docgen [-o OUT] FILE | mrb-docgen --check FILE\n", stderr);
        return 2;
    }
    const char *path = argv[argc - 1];
    FILE *in = fopen(path, "r");
    if (!in) {
        perror(path);
        return 2;
    }
    char *buf = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&buf, &len); /* in full first: OUT may be FILE */
    if (!out) {
        perror("open_memstream");
        fclose(in);
        return 2;
    }
    int rc = fill(in, out);
    if (fclose(out) != 0)
        rc = 1;
    if (rc == 0 && check) {
        rewind(in);
        char *old = malloc(len + 2);
        size_t got = old ? fread(old, 1, len + 1, in) : 0;
        if (!old || got != len || memcmp(old, buf, len) != 0) {
            fprintf(stderr, "mrb-docgen: %s is stale: the tables in src/config.c "
                    "and src/cli.c say otherwise; run cmake --build BUILD "
                    "--target docs (or mrb-docgen -o %s %s)\n", path, path, path);
            rc = 1;
        }
        free(old);
    } else if (rc == 0) {
        FILE *o = outpath ? fopen(outpath, "w") : stdout;
        if (!o || fwrite(buf, 1, len, o) != len || (o != stdout && fclose(o) != 0)) {
            perror(outpath ? outpath : "stdout");
            rc = 1;
        }
    }
    free(buf);
    fclose(in);
    return rc;
}
