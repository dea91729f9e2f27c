// Produces a SPDY/3.1 client->server byte stream with spdy-transport's own
// framer (real zlib header compression with the SPDY/3 dictionary) and
// prints it as hex. Used to create the vector checked in tests/vectors.rs.
'use strict'
const transport = require('spdy-transport')
const spdy = transport.protocol.spdy

const window = new transport.Window({
  id: 0, isServer: false,
  recv: { size: 1 << 20, max: 0x7fffffff },
  send: { size: 1 << 20, max: 0x7fffffff }
})
const pool = spdy.compressionPool.create(true)
const framer = spdy.framer.create({ window })
framer.setCompression(pool.get(3.1))
framer.setVersion(3.1)
framer.enablePush(false)

const chunks = []
framer.on('data', (c) => chunks.push(c))

const steps = [
  (cb) => framer.settingsFrame({ initial_window_size: 1 << 20 }, cb),
  (cb) => framer.windowUpdateFrame({ id: 0, delta: 983040 }, cb),
  (cb) => framer.requestFrame({
    id: 1, method: 'POST', path: '/exec', host: 'localhost',
    headers: { streamtype: 'stdin', 'X-Upper': 'Value', multi: ['a', 'b'] }
  }, cb),
  (cb) => framer.requestFrame({
    id: 3, method: 'POST', path: '/exec', host: 'localhost', fin: true,
    headers: { streamtype: 'stdout', requestid: '0' }
  }, cb),
  (cb) => framer.dataFrame({ id: 1, fin: false, data: Buffer.from('hello') }, cb),
  (cb) => framer.dataFrame({ id: 1, fin: true, data: Buffer.alloc(0) }, cb),
  (cb) => framer.pingFrame({ opaque: Buffer.from([0, 0, 0, 1]) }, cb),
  (cb) => framer.rstFrame({ id: 3, code: 'CANCEL' }, cb),
  (cb) => framer.goawayFrame({ lastId: 0, code: 'OK' }, cb)
]

function run (i) {
  if (i === steps.length) {
    // Let the scheduler flush.
    setImmediate(() => process.stdout.write(Buffer.concat(chunks).toString('hex') + '\n'))
    return
  }
  steps[i]((err) => {
    if (err) throw err
    run(i + 1)
  })
}
run(0)
