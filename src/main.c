/* main.c - command line and configuration in, bridge run, exit status out. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mrb/bridge.h"
#include "mrb/cli.h"
#include "mrb/config.h"
#include "mrb/log.h"
#include "mrb/statscmd.h"

#define EXIT_USAGE 2

/* A reload reads the configuration as the start did: the file, then the
 * command line over it (its URLs as given: argv is masked by then). */
static mrb_err reload_config(void *ctx, mrb_config *out, char *msg, size_t msglen)
{
    const mrb_cli *cli = ctx;
    mrb_err err = MRB_OK;
    if ((cli->config_file &&
         (err = mrb_config_load_file(out, cli->config_file, msg, msglen)) != MRB_OK) ||
        (err = mrb_config_apply_cli(out, cli, msg, msglen)) != MRB_OK ||
        (err = mrb_config_finish(out, msg, msglen)) != MRB_OK)
        return err;
    return MRB_OK;
}

int main(int argc, char **argv)
{
    mrb_cli cli;
    mrb_config cfg;
    char msg[1024];
    int status = EXIT_USAGE;

    if (argc > 1 && strcmp(argv[1], "stats") == 0) {
#if MRB_WITH_STATS_CMD
        return mrb_statscmd_main(argc - 1, argv + 1);
#else
        fprintf(stderr, "mqtt-redis-bridge: built without the stats subcommand "
                "(cmake -DWITH_STATS_CMD=OFF): read the reports with redis-cli "
                "HGETALL bridge:<id>:stats\n");
        return EXIT_USAGE;
#endif
    }
    mrb_config_init(&cfg);
    mrb_err err = mrb_cli_parse(argc, argv, &cli, msg, sizeof(msg));
    if (err != MRB_OK) {
        fprintf(stderr, "mqtt-redis-bridge: %s\n",
                err == MRB_ERR_INVALID ? msg : mrb_strerror(err));
        goto out;
    }
    if (cli.help) {
        mrb_cli_usage(stdout);
        status = 0;
        goto out;
    }
    if (cli.version) {
        printf("mqtt-redis-bridge %s (TLS: %s, stats command: %s)\n", MRB_VERSION,
               MRB_WITH_TLS ? "yes" : "no", MRB_WITH_STATS_CMD ? "yes" : "no");
        status = 0;
        goto out;
    }
    if ((cli.config_file &&
         (err = mrb_config_load_file(&cfg, cli.config_file, msg, sizeof(msg))) != MRB_OK) ||
        (err = mrb_config_apply_cli(&cfg, &cli, msg, sizeof(msg))) != MRB_OK ||
        (err = mrb_config_finish(&cfg, msg, sizeof(msg))) != MRB_OK) {
        fprintf(stderr, "mqtt-redis-bridge: %s\n",
                err == MRB_ERR_INVALID ? msg : mrb_strerror(err));
        status = err == MRB_ERR_INVALID ? EXIT_USAGE : 1;
        goto out;
    }
    /* for reloads: the URLs as given, before argv is masked; the rest of
     * the command line as it is after (the mask moves argv's strings) */
    char *mqtt_url = cli.mqtt_url ? strdup(cli.mqtt_url) : NULL;
    char *redis_url = cli.redis_url ? strdup(cli.redis_url) : NULL;
    mrb_cli rcli;
    if ((cli.mqtt_url && !mqtt_url) || (cli.redis_url && !redis_url)) {
        fprintf(stderr, "mqtt-redis-bridge: out of memory\n");
        status = 1;
        goto out_urls;
    }
    mrb_cli_scrub(&cli); /* the URLs were copied: hide their passwords */
    rcli = cli;
    rcli.mqtt_url = mqtt_url;
    rcli.redis_url = redis_url;
    if (cli.check) {
        mrb_config_print(&cfg, stdout);
        for (size_t i = 0; i < cfg.n_warnings; i++)
            printf("warning: %s\n", cfg.warnings[i]);
        printf("configuration OK\n");
        status = 0;
        goto out_urls;
    }
    mrb_log_set_level(cfg.log_level);
    if (cfg.syslog)
        mrb_log_use_syslog();
    for (size_t i = 0; i < cfg.n_warnings; i++)
        mrb_warn("%s", cfg.warnings[i]);
    status = mrb_bridge_run(&cfg, reload_config, &rcli);
out_urls:
    free(mqtt_url);
    free(redis_url);
out:
    mrb_log_close();
    mrb_config_free(&cfg);
    mrb_cli_free(&cli);
    return status;
}
