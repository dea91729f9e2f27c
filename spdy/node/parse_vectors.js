// Reads a hex-encoded SPDY/3.1 server->client byte stream on stdin, parses
// it with spdy-transport's parser (client side) and prints one JSON object
// per frame. Used by tests/vectors.rs to check our encoder.
'use strict'
const transport = require('spdy-transport')
const spdy = transport.protocol.spdy

const window = new transport.Window({
  id: 0, isServer: false,
  recv: { size: 1 << 20, max: 0x7fffffff },
  send: { size: 1 << 20, max: 0x7fffffff }
})
const pool = spdy.compressionPool.create(true)
const parser = spdy.parser.create({ isServer: false, window })
parser.setCompression(pool.get(3.1))

const frames = []
parser.on('data', (f) => {
  const out = Object.assign({}, f)
  if (out.data) out.data = out.data.toString('hex')
  if (out.opaque) out.opaque = out.opaque.toString('hex')
  frames.push(out)
})
parser.on('error', (e) => { console.error('parse error: ' + e.message); process.exit(2) })

let input = ''
process.stdin.on('data', (d) => { input += d })
process.stdin.on('end', () => {
  parser.on('end', () => { process.stdout.write(JSON.stringify(frames) + '\n') })
  parser.end(Buffer.from(input.trim(), 'hex'))
})
