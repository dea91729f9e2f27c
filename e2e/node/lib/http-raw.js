'use strict'
// Minimal HTTP/1.1 client on a raw socket, used for the SPDY upgrade (which
// Node's http client cannot hand over cleanly) and for raw status probes.

const net = require('net')
const tls = require('tls')
const crypto = require('crypto')

function connect (u, timeoutMs) {
  return new Promise((resolve, reject) => {
    const port = Number(u.port) || (u.protocol === 'https:' || u.protocol === 'wss:' ? 443 : 80)
    const host = u.hostname.replace(/^\[|\]$/g, '')
    const secure = u.protocol === 'https:' || u.protocol === 'wss:'
    const socket = secure
      ? tls.connect({ host, port, servername: net.isIP(host) ? undefined : host, rejectUnauthorized: false })
      : net.connect({ host, port })
    const timer = setTimeout(() => {
      socket.destroy()
      reject(new Error(`connect timeout to ${u.host}`))
    }, timeoutMs)
    socket.once(secure ? 'secureConnect' : 'connect', () => {
      clearTimeout(timer)
      socket.setNoDelay(true)
      resolve(socket)
    })
    socket.once('error', (err) => { clearTimeout(timer); reject(err) })
  })
}

function parseHead (text) {
  const lines = text.split('\r\n')
  const m = /^HTTP\/1\.[01] (\d{3})(?: (.*))?$/.exec(lines[0])
  if (!m) throw new Error('bad HTTP status line: ' + JSON.stringify(lines[0]))
  const headers = {}
  for (const line of lines.slice(1)) {
    const i = line.indexOf(':')
    if (i <= 0) continue
    const k = line.slice(0, i).trim().toLowerCase()
    const v = line.slice(i + 1).trim()
    if (headers[k] === undefined) headers[k] = []
    headers[k].push(v)
  }
  return { statusCode: Number(m[1]), statusText: m[2] || '', headers }
}

/**
 * Send one request and read the response head. For a 101 the socket is
 * returned paused with any bytes after the head unshifted back onto it.
 * For other statuses the body is read (Content-Length, or until close/idle).
 * @param {URL} u
 * @param {{method: string, headers: Array<[string,string]>, timeoutMs: number}} opts
 */
async function request (u, opts) {
  const socket = await connect(u, opts.timeoutMs)
  const path = (u.pathname || '/') + (u.search || '')
  let req = `${opts.method} ${path} HTTP/1.1\r\nHost: ${u.host}\r\n`
  for (const [k, v] of opts.headers) req += `${k}: ${v}\r\n`
  req += '\r\n'
  socket.write(req)

  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0)
    let head = null
    let body = Buffer.alloc(0)
    const timer = setTimeout(() => finish(new Error('timeout waiting for HTTP response')), opts.timeoutMs)
    function finish (err) {
      clearTimeout(timer)
      socket.removeListener('data', onData)
      socket.removeListener('end', onEnd)
      socket.removeListener('error', onError)
      if (err && !head) { socket.destroy(); reject(err); return }
      if (head.statusCode === 101) {
        resolve({ ...head, socket })
      } else {
        socket.destroy()
        resolve({ ...head, body: body.toString('utf8') })
      }
    }
    function onData (chunk) {
      if (head) {
        body = Buffer.concat([body, chunk])
        const cl = head.headers['content-length']
        if (cl && body.length >= Number(cl[0])) finish()
        return
      }
      buf = Buffer.concat([buf, chunk])
      const idx = buf.indexOf('\r\n\r\n')
      if (idx < 0) return
      try {
        head = parseHead(buf.slice(0, idx).toString('latin1'))
      } catch (e) {
        finish(e)
        return
      }
      const rest = buf.slice(idx + 4)
      if (head.statusCode === 101) {
        socket.pause()
        if (rest.length) socket.unshift(rest)
        finish()
        return
      }
      body = rest
      const cl = head.headers['content-length']
      if (cl && body.length >= Number(cl[0])) { finish(); return }
      if (cl && Number(cl[0]) === 0) { finish(); return }
      // no content-length: read until close, but don't wait long
      setTimeout(() => finish(), Math.min(500, opts.timeoutMs))
    }
    function onEnd () { if (head) finish(); else finish(new Error('connection closed before HTTP response')) }
    function onError (err) { if (head) finish(); else finish(err) }
    socket.on('data', onData)
    socket.on('end', onEnd)
    socket.on('error', onError)
  })
}

function spdyUpgradeHeaders (protocols) {
  const h = [['Connection', 'Upgrade'], ['Upgrade', 'SPDY/3.1']]
  for (const p of protocols) h.push(['X-Stream-Protocol-Version', p])
  h.push(['Content-Length', '0'])
  return h
}

function wsUpgradeHeaders (protocols) {
  const h = [
    ['Connection', 'Upgrade'],
    ['Upgrade', 'websocket'],
    ['Sec-WebSocket-Version', '13'],
    ['Sec-WebSocket-Key', crypto.randomBytes(16).toString('base64')]
  ]
  if (protocols.length) h.push(['Sec-WebSocket-Protocol', protocols.join(', ')])
  return h
}

module.exports = { request, spdyUpgradeHeaders, wsUpgradeHeaders }
