// aedes_broker.js - an MQTT 3.1.1-only broker for the tests: aedes (npm),
// which refuses an MQTT 5 CONNECT with CONNACK return code 1 ("unacceptable
// protocol version"). test_mqtt311 uses it to check mqtt.protocol "auto"
// against a broker without MQTT 5; mosquitto always speaks MQTT 5.
//
//   node aedes_broker.js PORT
//
// Listens on 127.0.0.1:PORT only, logs one line per client event to
// stdout, exits 0 on SIGTERM or SIGINT. NODE_PATH must name the
// node_modules that holds aedes (scripts/test.sh installs it into
// build/_tools/node_modules; the harness sets NODE_PATH).
'use strict'

const net = require('net')
const aedes = require('aedes')()

const port = Number(process.argv[2])
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error('usage: node aedes_broker.js PORT')
  process.exit(2)
}

function log (line) {
  console.log(new Date().toISOString() + ' ' + line)
}

aedes.on('client', (c) => log('client connected: ' + c.id + ' (protocol level ' + c.version + ')'))
aedes.on('clientDisconnect', (c) => log('client disconnected: ' + c.id))
aedes.on('connectionError', (c, err) => log('connection refused: ' + err.message))
aedes.on('clientError', (c, err) => log('client error: ' + (c && c.id) + ': ' + err.message))

const server = net.createServer(aedes.handle)
server.listen(port, '127.0.0.1', () => log('listening on 127.0.0.1:' + port))
server.on('error', (err) => {
  console.error('aedes_broker: ' + err.message)
  process.exit(1)
})

function stop () {
  server.close()
  aedes.close(() => process.exit(0))
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
