'use strict';
// The Node peer of bench/run.py: what a user would write to bridge MQTT and
// Redis pub/sub with mqtt.js and ioredis, both ways, reading the routes of
// the bridge's own configuration file so that it maps topics as the bridge
// does: route {"mqtt": "b0/in/+", "redis": "b0:in:*"} carries MQTT b0/in/X to
// Redis channel b0:in:X (mqtt_to_redis) or Redis b0:in:X to MQTT b0/in/X
// (redis_to_mqtt), at the route's QoS (0 or 1).
//
//   node peer.js CONFIG.json      (NODE_PATH: the node_modules of npm ci)
//
// Like a user's few lines, and unlike the bridge: QoS 1 MQTT -> Redis is
// acknowledged to the broker when the message arrives (mqtt.js's default),
// not after Redis accepted it; there is no echo suppression, so a route
// that goes both ways would loop (bench/run.py gives it one-way routes); no
// reconnect handling beyond the libraries' defaults.
const fs = require('fs');
const mqtt = require('mqtt');
const Redis = require('ioredis');

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const stem = (s) => s.replace(/[+#*]$/, ''); // "b0/in/+" -> "b0/in/"
const toRedis = [];
const toMqtt = [];
for (const r of cfg.routes) {
  const route = { mqtt: stem(r.mqtt), redis: stem(r.redis), qos: r.qos || 0 };
  if (r.direction === 'mqtt_to_redis') toRedis.push({ ...route, filter: r.mqtt });
  else if (r.direction === 'redis_to_mqtt') toMqtt.push({ ...route, pattern: r.redis });
  else throw new Error('peer.js: one-way routes only: ' + JSON.stringify(r));
}

const pub = new Redis(cfg.redis.url); // PUBLISH
const sub = new Redis(cfg.redis.url); // PSUBSCRIBE
const client = mqtt.connect(cfg.mqtt.url, { clean: true, reconnectPeriod: 1000 });

client.on('connect', () => {
  for (const r of toRedis) client.subscribe(r.filter, { qos: r.qos });
});
client.on('message', (topic, payload) => {
  const r = toRedis.find((x) => topic.startsWith(x.mqtt));
  if (r) pub.publish(r.redis + topic.slice(r.mqtt.length), payload);
});

for (const r of toMqtt) sub.psubscribe(r.pattern);
sub.on('pmessageBuffer', (pattern, channel, message) => {
  const p = pattern.toString();
  const r = toMqtt.find((x) => x.pattern === p);
  const ch = channel.toString();
  client.publish(r.mqtt + ch.slice(r.redis.length), message, { qos: r.qos });
});

function stop() {
  client.end(false, () => process.exit(0));
  pub.disconnect();
  sub.disconnect();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
