/*
 * stream_off.c - a build without stream mode and replay (cmake
 * -DWITH_STREAMS=OFF, the boards' --minimal preset): what stream.c and
 * replay_io.c give the rest of the bridge, for a bridge that has no stream
 * route. The configuration refuses "mode": "stream" in such a build
 * (route.c), so nothing here is ever asked for an entry.
 */
#include <stdint.h>
#include <string.h>

#include "bridge_int.h"

mrb_err mrb_stream_init(mrb_bridge *b)
{
    mrb_queue_init(&b->sx_q, 0, 0); /* counted in the stats: always empty */
    return MRB_OK;
}

void mrb_stream_free(mrb_bridge *b) { (void)b; }
int mrb_stream_needed(const mrb_bridge *b) { (void)b; return 0; }
void mrb_stream_on_pub_up(mrb_bridge *b) { (void)b; }
void mrb_stream_on_reader_up(mrb_bridge *b) { (void)b; }
void mrb_stream_on_reader_down(mrb_bridge *b) { (void)b; }
void mrb_stream_tick(mrb_bridge *b, int64_t now) { (void)b; (void)now; }
int64_t mrb_stream_next_timer(const mrb_bridge *b) { (void)b; return INT64_MAX; }
void mrb_stream_pump(mrb_bridge *b) { (void)b; }
int mrb_stream_drained(mrb_bridge *b) { (void)b; return 1; }

mrb_err mrb_stream_apply_routes(mrb_bridge *b, const mrb_routes *old,
                                size_t *added, size_t *removed)
{
    (void)b;
    (void)old;
    *added = *removed = 0;
    return MRB_OK;
}

mrb_err mrb_replay_init(mrb_bridge *b) { b->replay = NULL; return MRB_OK; }
int mrb_replay_update(mrb_bridge *b) { (void)b; return 0; }
void mrb_replay_free(mrb_bridge *b) { (void)b; }
int mrb_replay_drained(mrb_bridge *b) { (void)b; return 1; }
void mrb_replay_closing(mrb_bridge *b) { (void)b; }
size_t mrb_replay_clear(mrb_bridge *b) { (void)b; return 0; }
const char *mrb_replay_topic(const mrb_bridge *b) { (void)b; return NULL; }

int mrb_replay_take(mrb_bridge *b, const char *topic, size_t len,
                    MQTTAsync_message *msg)
{
    (void)b;
    (void)topic;
    (void)len;
    (void)msg;
    return 0;
}

void mrb_replay_pump(mrb_bridge *b) { (void)b; }
int64_t mrb_replay_flush_warnings(mrb_bridge *b, int64_t now)
{
    (void)b;
    (void)now;
    return INT64_MAX;
}

void mrb_replay_get_counters(mrb_bridge *b, mrb_replay_counters *out)
{
    (void)b;
    memset(out, 0, sizeof(*out));
}
