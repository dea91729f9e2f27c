// End-to-end client for tests/e2e_node.rs: speaks SPDY/3.1 with
// spdy-transport over TCP to the Rust session server on argv[2].
// Prints a JSON summary; exits non-zero on any failure.
'use strict'
const net = require('net')
const crypto = require('crypto')
const transport = require('spdy-transport')

const port = Number(process.argv[2])
const deadline = setTimeout(() => fail(new Error('timeout')), 60000)
const results = {}

function fail (err) {
  process.stderr.write('e2e client failure: ' + (err && err.stack || err) + '\n')
  process.exit(1)
}

// Deterministic payload: byte i = (i * 7 + seed) & 0xff.
function pattern (len, seed) {
  const b = Buffer.alloc(len)
  for (let i = 0; i < len; i++) b[i] = (i * 7 + seed) & 0xff
  return b
}
const sha = (b) => crypto.createHash('sha256').update(b).digest('hex')

function open (conn, headers) {
  return new Promise((resolve, reject) => {
    const stream = conn.request({ method: 'POST', path: '/spdy', headers }, (err) => {
      if (err) reject(err)
    })
    stream.on('response', (status, h) => resolve({ stream, status, headers: h }))
    stream.on('error', reject)
  })
}

function readAll (stream) {
  return new Promise((resolve, reject) => {
    const chunks = []
    stream.on('data', (c) => chunks.push(c))
    stream.on('end', () => resolve(Buffer.concat(chunks)))
    stream.on('error', reject)
  })
}

function writeAll (stream, buf) {
  // Write in 64 KiB pieces to let flow control interleave.
  for (let off = 0; off < buf.length; off += 65536) {
    stream.write(buf.slice(off, off + 65536))
  }
  stream.end()
}

async function main (conn) {
  // PING: the server must echo our (odd) id.
  const ping = new Promise((resolve) => conn.ping(() => resolve(true)))

  // 1. Echo 1.5 MiB both ways.
  const up = pattern(1536 * 1024, 1)
  const echo = await open(conn, { 'x-test': 'echo', 'x-multi': ['one', 'two'] })
  const echoBody = readAll(echo.stream)
  writeAll(echo.stream, up)

  // 2. Download 2 MiB after sending a small body.
  const dl = await open(conn, { 'x-test': 'download' })
  const dlBody = readAll(dl.stream)
  dl.stream.end('hello')

  // 3. Client-side reset: wait for the server's "ready", send, then RST.
  const cr = await open(conn, { 'x-test': 'client-reset' })
  await new Promise((resolve, reject) => {
    cr.stream.once('data', (d) => {
      if (d.toString() !== 'ready') reject(new Error('expected ready, got ' + d))
      cr.stream.write('partial', () => setTimeout(() => { cr.stream.abort(); resolve() }, 50))
    })
  })

  // 4. Server-side reset: the server sends RST_STREAM(REFUSED_STREAM).
  const sr = await open(conn, { 'x-test': 'server-reset' })
  const srErr = await new Promise((resolve) => {
    sr.stream.on('error', (e) => resolve(e.message))
    sr.stream.on('data', () => {})
    sr.stream.write('please reset me')
  })

  const gotEcho = await echoBody
  const gotDl = await dlBody
  results.status = [echo.status, dl.status, cr.status, sr.status]
  results.echo_len = gotEcho.length
  results.echo_ok = gotEcho.equals(up)
  results.download_len = gotDl.length
  results.download_ok = gotDl.equals(pattern(2 * 1024 * 1024, 9))
  results.download_sha = sha(gotDl)
  results.server_reset_error = srErr
  results.ping = await ping
}

const socket = net.connect(port, '127.0.0.1', () => {
  const conn = transport.connection.create(socket, {
    protocol: 'spdy', isServer: false, headerCompression: true
  })
  conn.on('error', fail)
  conn.start(3.1)
  main(conn).then(() => {
    // GOAWAY(OK); the socket closes once every stream is done.
    conn.end()
    socket.on('close', () => {
      clearTimeout(deadline)
      process.stdout.write(JSON.stringify(results) + '\n')
      process.exit(0)
    })
  }, fail)
})
socket.on('error', fail)
