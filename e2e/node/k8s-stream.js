#!/usr/bin/env node
'use strict'
// k8s-stream.js — a kubectl-like client for the CRI streaming endpoints
// (/exec/{token}, /attach/{token}, /portforward/{token}) served by a container
// runtime, speaking SPDY/3.1 (as client-go/spdystream do) or WebSocket
// (channel.k8s.io family). Prints exactly one JSON line on stdout.
//
//   node k8s-stream.js exec|attach <url> --transport spdy|ws [--protocol P]...
//        [--stdin TEXT | --stdin-bytes N] [--stdin-hold-ms N] [--tty]
//        [--no-stdout] [--no-stderr] [--resize COLSxROWS[,COLSxROWS...]]
//        [--resize-after-ms N] [--resize-interval-ms N] [--timeout-ms N]
//        [--ping-ms N] [--method POST|GET] [--no-output-text]
//   node k8s-stream.js portforward <url>[,<url>...] --transport spdy|ws --port P
//        [--send TEXT] [--send-bytes N] [--connections N] [--read-bytes N]
//        [--idle-ms N] [--no-half-close] [--protocol P]... [--timeout-ms N]
//   node k8s-stream.js raw-status <url> [--transport spdy|ws|plain] [--method M] [--protocol P]...
//
// See README.md in this directory for the semantics and the output format.

const WebSocket = require('ws')
const { request, spdyUpgradeHeaders, wsUpgradeHeaders } = require('./lib/http-raw')
const spdy = require('./lib/spdy-go')

const SPDY_EXEC_PROTOCOLS = ['v5.channel.k8s.io', 'v4.channel.k8s.io', 'v3.channel.k8s.io', 'v2.channel.k8s.io', 'channel.k8s.io']
const WS_EXEC_PROTOCOLS = ['v5.channel.k8s.io', 'v4.channel.k8s.io']
const SPDY_PF_PROTOCOLS = ['portforward.k8s.io']
const WS_PF_PROTOCOLS = ['v4.channel.k8s.io']

// ---------------------------------------------------------------------------
// argument parsing

const VALUE_FLAGS = new Set([
  'transport', 'protocol', 'stdin', 'stdin-bytes', 'stdin-hold-ms', 'resize', 'resize-after-ms',
  'resize-interval-ms', 'timeout-ms', 'ping-ms', 'method', 'port', 'send', 'send-bytes', 'connections',
  'read-bytes', 'idle-ms'
])
const BOOL_FLAGS = new Set(['tty', 'no-stdout', 'no-stderr', 'no-output-text', 'no-half-close'])

function usage (msg) {
  process.stderr.write((msg ? msg + '\n' : '') +
    'usage: k8s-stream.js exec|attach|portforward|raw-status <url> [options] (see header of k8s-stream.js)\n')
  process.exit(2)
}

function parseArgs (argv) {
  const [command, url, ...rest] = argv
  if (!command || !url) usage()
  const opts = { command, url, protocol: [] }
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i]
    if (!a.startsWith('--')) usage('unexpected argument ' + a)
    let name = a.slice(2)
    let value
    const eq = name.indexOf('=')
    if (eq >= 0) { value = name.slice(eq + 1); name = name.slice(0, eq) }
    if (BOOL_FLAGS.has(name)) { opts[name] = true; continue }
    if (!VALUE_FLAGS.has(name)) usage('unknown option --' + name)
    if (value === undefined) {
      if (i + 1 >= rest.length) usage('missing value for --' + name)
      value = rest[++i]
    }
    if (name === 'protocol') {
      for (const p of value.split(',')) if (p.trim()) opts.protocol.push(p.trim())
    } else {
      opts[name] = value
    }
  }
  return opts
}

function num (v, dflt) {
  if (v === undefined) return dflt
  const n = Number(v)
  if (!Number.isFinite(n)) usage('not a number: ' + v)
  return n
}

function protoVersion (p) {
  const m = /^v(\d+)\./.exec(p || '')
  return m ? Number(m[1]) : 1
}

function sleep (ms) { return new Promise((resolve) => setTimeout(resolve, ms)) }

function patternBytes (n) {
  const unit = Buffer.from('0123456789abcdefghijklmnopqrstuvwxyz\n')
  const b = Buffer.alloc(n)
  for (let i = 0; i < n; i += unit.length) unit.copy(b, i, 0, Math.min(unit.length, n - i))
  return b
}

function parseResizes (spec) {
  if (!spec) return []
  return spec.split(',').map((s) => {
    const m = /^(\d+)x(\d+)$/.exec(s.trim())
    if (!m) usage('bad --resize ' + s)
    return { Width: Number(m[1]), Height: Number(m[2]) }
  })
}

// Decode what came on the error stream / channel 3 the way client-go does.
function decodeStatus (version, errBuf) {
  const text = errBuf.toString('utf8')
  const out = { status: null, exitCode: null, errorText: text.length ? text : null }
  if (text.length === 0) { out.exitCode = 0; return out } // empty error stream == success
  if (version < 4) return out // v1-v3: plain text, failure only
  try {
    out.status = JSON.parse(text)
  } catch (e) {
    out.statusParseError = String(e.message)
    return out
  }
  const st = out.status
  if (st.status === 'Success') {
    out.exitCode = 0
  } else if (st.status === 'Failure' && st.reason === 'NonZeroExitCode') {
    const causes = (st.details && st.details.causes) || []
    const c = causes.find((c) => c.reason === 'ExitCode')
    if (c && /^\d+$/.test(c.message)) out.exitCode = Number(c.message)
  }
  return out
}

function waitEnded (stream) {
  if (!stream) return Promise.resolve()
  return stream.k8sDone
}

function collect (stream, sink) {
  if (!stream) return
  stream.on('data', (d) => { sink.chunks.push(d); sink.bytes += d.length; sink.last = Date.now() })
}

function withTimeout (promise, ms, what) {
  let t
  return Promise.race([
    promise.finally(() => clearTimeout(t)),
    new Promise((resolve, reject) => { t = setTimeout(() => reject(new Error('timeout: ' + what)), ms) })
  ])
}

// ---------------------------------------------------------------------------
// exec / attach over SPDY

async function spdyUpgrade (u, protocols, opts) {
  const res = await request(u, {
    method: opts.method || 'POST',
    headers: spdyUpgradeHeaders(protocols),
    timeoutMs: opts.timeoutMs
  })
  if (res.statusCode !== 101) {
    const err = new Error(`unable to upgrade connection: ${res.statusCode} ${res.body.trim()}`)
    err.httpStatus = res.statusCode
    err.body = res.body
    err.headers = res.headers
    throw err
  }
  const conn = (res.headers.connection || []).join(',').toLowerCase()
  const upg = (res.headers.upgrade || []).join(',').toLowerCase()
  if (!conn.includes('upgrade') || !upg.includes('spdy/3.1')) {
    res.socket.destroy()
    const err = new Error('101 without Connection: Upgrade / Upgrade: SPDY/3.1')
    err.httpStatus = 101
    throw err
  }
  return { socket: res.socket, protocol: (res.headers['x-stream-protocol-version'] || [''])[0] }
}

function teardownSpdy (conn, socket, streams) {
  // kubectl: conn.Close() == RST every stream, GOAWAY, close TCP
  for (const s of streams) {
    if (s && !s.destroyed) { try { s.abort() } catch (e) {} }
  }
  try { conn.end() } catch (e) {}
  return new Promise((resolve) => {
    const t = setTimeout(() => { socket.destroy(); resolve() }, 300)
    socket.once('close', () => { clearTimeout(t); resolve() })
    setTimeout(() => { try { socket.end() } catch (e) {} }, 20)
  })
}

async function remoteCommandSpdy (o, result) {
  const protocols = o.protocol.length ? o.protocol : SPDY_EXEC_PROTOCOLS
  const { socket, protocol } = await spdyUpgrade(new URL(o.url), protocols, o)
  result.protocol = protocol
  const version = protoVersion(protocol)
  const conn = spdy.createConnection(socket, { isServer: false })
  spdy.startClient(conn)

  const sinks = { stdout: { chunks: [], bytes: 0 }, stderr: { chunks: [], bytes: 0 }, error: { chunks: [], bytes: 0 } }
  const created = []
  const mk = async (type) => {
    const s = await spdy.createStream(conn, { streamtype: type }, 30000)
    s.k8sType = type
    created.push(s)
    return s
  }
  o.partial = () => finishOutput(o, sinks, version)
  let pinger = null
  let socketClosed = false
  socket.once('close', () => { socketClosed = true })
  try {
    // client-go v2/v3 createStreams order
    const errorS = await mk('error')
    collect(errorS, sinks.error)
    const stdinS = o.wantStdin ? await mk('stdin') : null
    if (stdinS) stdinS.on('data', () => {}) // server never writes; keep it flowing
    const stdoutS = o.wantStdout ? await mk('stdout') : null
    collect(stdoutS, sinks.stdout)
    const stderrS = o.wantStderr && !o.tty ? await mk('stderr') : null
    collect(stderrS, sinks.stderr)
    const resizeS = o.tty && version >= 3 ? await mk('resize') : null
    if (resizeS) resizeS.on('data', () => {})
    result.streams = created.length

    if (o.pingMs > 0) pinger = setInterval(() => { try { conn.ping(() => {}) } catch (e) {} }, o.pingMs)

    if (resizeS) {
      scheduleResizes(o, (size) => resizeS.write(JSON.stringify(size) + '\n'))
    } else if (o.resizes.length) {
      result.warnings.push('--resize ignored: no resize stream (needs --tty and protocol >= v3)')
    }
    if (stdinS) {
      writeStdin(o, (buf) => new Promise((resolve) => {
        if (!stdinS.write(buf)) stdinS.once('drain', resolve); else resolve()
      }), () => stdinS.end())
    }

    await Promise.all([waitEnded(stdoutS), waitEnded(stderrS), waitEnded(errorS)])
  } finally {
    if (pinger) clearInterval(pinger)
    // how each stream we read from ended: 'fin' (graceful) or 'reset'
    result.streamEnds = {}
    for (const s of created) {
      if (['error', 'stdout', 'stderr'].includes(s.k8sType)) result.streamEnds[s.k8sType] = s.k8sEnd || 'open'
    }
    if (!socketClosed) await teardownSpdy(conn, socket, created)
    Object.assign(result, finishOutput(o, sinks, version))
  }
}

function finishOutput (o, sinks, version) {
  const out = {}
  const stdout = Buffer.concat(sinks.stdout.chunks)
  const stderr = Buffer.concat(sinks.stderr.chunks)
  out.stdout = o['no-output-text'] ? '' : stdout.toString('utf8')
  out.stderr = o['no-output-text'] ? '' : stderr.toString('utf8')
  out.stdoutBytes = stdout.length
  out.stderrBytes = stderr.length
  Object.assign(out, decodeStatus(version, Buffer.concat(sinks.error.chunks)))
  return out
}

function scheduleResizes (o, send) {
  o.resizes.forEach((size, i) => {
    setTimeout(() => { try { send(size) } catch (e) {} }, o.resizeAfterMs + i * o.resizeIntervalMs)
  })
}

async function writeStdin (o, write, close) {
  try {
    if (o.stdinBytes > 0) {
      const data = patternBytes(o.stdinBytes)
      for (let off = 0; off < data.length; off += 32 * 1024) {
        await write(data.slice(off, off + 32 * 1024))
      }
    } else if (o.stdin !== undefined && o.stdin.length) {
      await write(Buffer.from(o.stdin, 'utf8'))
    }
    if (o.stdinHoldMs < 0) return // keep stdin open
    if (o.stdinHoldMs > 0) await sleep(o.stdinHoldMs)
    close()
  } catch (e) {}
}

// ---------------------------------------------------------------------------
// exec / attach over WebSocket

function toWsUrl (url) {
  return url.replace(/^http:/, 'ws:').replace(/^https:/, 'wss:')
}

// handlers.message / handlers.close are attached before the handshake completes:
// the server may send (and even close) in the same TCP segment as the 101.
function openWebSocket (url, protocols, o, handlers) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(toWsUrl(url), protocols, {
      handshakeTimeout: o.timeoutMs,
      perMessageDeflate: false,
      rejectUnauthorized: false
    })
    ws.binaryType = 'nodebuffer'
    ws.k8sClosed = new Promise((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })))
    if (handlers && handlers.message) ws.on('message', (data, isBinary) => handlers.message(ws, data, isBinary))
    ws.once('open', () => resolve(ws))
    ws.once('unexpected-response', (req, res) => {
      let body = ''
      res.on('data', (d) => { body += d })
      const done = () => {
        const err = new Error(`unable to upgrade connection: ${res.statusCode} ${body.trim()}`)
        err.httpStatus = res.statusCode
        err.body = body
        req.destroy()
        reject(err)
      }
      res.on('end', done)
      res.on('error', done)
      setTimeout(done, 500)
    })
    ws.once('error', (err) => reject(err))
  })
}

function wsCodec (ws) {
  const base64 = /(^|\.)base64\./.test(ws.protocol)
  return {
    base64,
    send (ch, buf) {
      if (base64) ws.send(String.fromCharCode(48 + ch) + buf.toString('base64'))
      else ws.send(Buffer.concat([Buffer.from([ch]), buf]))
    },
    decode (data) {
      const b = Buffer.isBuffer(data) ? data : Buffer.from(data)
      if (b.length === 0) return null
      if (base64) return { ch: b[0] - 48, payload: Buffer.from(b.slice(1).toString('latin1'), 'base64') }
      return { ch: b[0], payload: b.slice(1) }
    }
  }
}

async function remoteCommandWs (o, result) {
  const protocols = o.protocol.length ? o.protocol : WS_EXEC_PROTOCOLS
  const sinks = { stdout: { chunks: [], bytes: 0 }, stderr: { chunks: [], bytes: 0 }, error: { chunks: [], bytes: 0 } }
  result.emptyMessages = {}
  let codec = null
  const ws = await openWebSocket(o.url, protocols, o, {
    message (ws, data) {
      if (!codec) codec = wsCodec(ws)
      const m = codec.decode(data)
      if (!m) return
      if (m.payload.length === 0) {
        result.emptyMessages[m.ch] = (result.emptyMessages[m.ch] || 0) + 1
        return
      }
      const sink = m.ch === 1 ? sinks.stdout : m.ch === 2 ? sinks.stderr : m.ch === 3 ? sinks.error : null
      if (sink) { sink.chunks.push(m.payload); sink.bytes += m.payload.length }
    }
  })
  result.protocol = ws.protocol
  const version = protoVersion(ws.protocol)
  o.partial = () => finishOutput(o, sinks, version)
  if (!codec) codec = wsCodec(ws)
  const closed = ws.k8sClosed.then(({ code, reason }) => {
    result.closeCode = code
    result.closeReason = reason
  })
  ws.on('error', (e) => { result.warnings.push('websocket error: ' + e.message) })
  const pinger = o.pingMs > 0 ? setInterval(() => { try { ws.ping() } catch (e) {} }, o.pingMs) : null
  try {
    if (o.tty) scheduleResizes(o, (size) => codec.send(4, Buffer.from(JSON.stringify(size) + '\n')))
    if (o.wantStdin) {
      writeStdin(o, async (buf) => codec.send(0, buf), () => {
        if (version >= 5) ws.send(Buffer.from([255, 0])) // CLOSE signal for stdin
        else result.warnings.push(`stdin EOF cannot be signalled with ${ws.protocol || '(no subprotocol)'}`)
      })
    }
    await closed
  } finally {
    if (pinger) clearInterval(pinger)
    if (ws.readyState !== WebSocket.CLOSED) ws.terminate()
    Object.assign(result, finishOutput(o, sinks, version))
  }
}

// ---------------------------------------------------------------------------
// port-forward

function sendPayload (o, i) {
  if (o.sendBytes > 0) return patternBytes(o.sendBytes)
  if (o.send !== undefined) return Buffer.from(o.send.replace(/\{i\}/g, String(i)), 'utf8')
  return Buffer.alloc(0)
}

function pfConnResult (o, i, dataSink, errText, t0) {
  const data = Buffer.concat(dataSink.chunks)
  const ms = Date.now() - t0
  const r = { requestId: i, bytes: data.length, ms }
  if (o.readBytes > 0) {
    r.mbps = ms > 0 ? Number(((data.length / (1024 * 1024)) / (ms / 1000)).toFixed(2)) : null
  } else if (!o['no-output-text']) {
    r.text = data.toString('utf8')
  }
  r.error = errText && errText.length ? errText : null
  r.errorJson = null
  if (r.error) {
    try { r.errorJson = JSON.parse(r.error) } catch (e) {}
  }
  return r
}

// Read from a data source until EOF, --read-bytes, or --idle-ms of silence.
function readUntil (o, sink, ended, idleDefault) {
  const idleMs = o.idleMs !== undefined ? o.idleMs : idleDefault
  return new Promise((resolve) => {
    let done = false
    const fin = (why) => { if (!done) { done = true; clearInterval(iv); resolve(why) } }
    ended.then(() => fin('eof'))
    const iv = setInterval(() => {
      if (o.readBytes > 0 && sink.bytes >= o.readBytes) fin('read-bytes')
      else if (idleMs > 0 && Date.now() - sink.last > idleMs) fin('idle')
    }, 5)
  })
}

async function portForwardSpdy (o, result) {
  const protocols = o.protocol.length ? o.protocol : SPDY_PF_PROTOCOLS
  const { socket, protocol } = await spdyUpgrade(new URL(o.url), protocols, o)
  result.protocol = protocol
  const conn = spdy.createConnection(socket, { isServer: false })
  spdy.startClient(conn)
  const all = []
  const pinger = o.pingMs > 0 ? setInterval(() => { try { conn.ping(() => {}) } catch (e) {} }, o.pingMs) : null

  async function one (i) {
    const t0 = Date.now()
    const headers = { streamtype: 'error', port: String(o.port), requestid: String(i) }
    const errSink = { chunks: [], bytes: 0, last: Date.now() }
    const dataSink = { chunks: [], bytes: 0, last: Date.now() }
    o.pfPartial[i] = () => pfConnResult(o, i, dataSink, Buffer.concat(errSink.chunks).toString('utf8'), t0)
    let errorS = null
    let dataS = null
    let stage = 'error-stream'
    try {
      errorS = await spdy.createStream(conn, headers, 30000)
      all.push(errorS)
      errorS.end() // "we're not writing to this stream"
      collect(errorS, errSink)
      stage = 'data-stream'
      dataS = await spdy.createStream(conn, { ...headers, streamtype: 'data' }, 30000)
      all.push(dataS)
      collect(dataS, dataSink)
      stage = 'forwarding'
      const payload = sendPayload(o, i)
      if (payload.length) dataS.write(payload)
      if (!o['no-half-close']) dataS.end()
      dataSink.last = Date.now()
      await readUntil(o, dataSink, waitEnded(dataS), 0)
      if (!dataS.destroyed) dataS.abort() // kubectl: dataStream.Reset()
      await withTimeout(waitEnded(errorS), 5000, 'error stream EOF').catch(() => {})
      return pfConnResult(o, i, dataSink, Buffer.concat(errSink.chunks).toString('utf8'), t0)
    } catch (e) {
      const r = pfConnResult(o, i, dataSink, Buffer.concat(errSink.chunks).toString('utf8'), t0)
      r.failure = `${stage}: ${e.message}`
      return r
    }
  }
  try {
    const ids = Array.from({ length: o.connections }, (_, i) => i)
    result.connections = await Promise.all(ids.map(one))
  } finally {
    if (pinger) clearInterval(pinger)
    await teardownSpdy(conn, socket, all)
  }
}

async function portForwardWs (o, result) {
  const urls = o.url.split(',')
  const protocols = o.protocol.length ? o.protocol : WS_PF_PROTOCOLS
  async function one (url, i) {
    const t0 = Date.now()
    const u = new URL(url)
    if (!u.searchParams.has('port')) u.searchParams.append('port', String(o.port))
    const dataSink = { chunks: [], bytes: 0, last: Date.now() }
    const errChunks = []
    o.pfPartial[i] = () => pfConnResult(o, i, dataSink, Buffer.concat(errChunks).toString('utf8'), t0)
    const prefix = {} // first message on each channel starts with the port (uint16 LE)
    let codec = null
    let ws
    try {
      ws = await openWebSocket(u.toString(), protocols, o, {
        message (ws, data) {
          if (!codec) codec = wsCodec(ws)
          const m = codec.decode(data)
          if (!m) return
          let payload = m.payload
          if (!(m.ch in prefix)) {
            if (payload.length >= 2) {
              prefix[m.ch] = payload.readUInt16LE(0)
              payload = payload.slice(2)
            } else {
              prefix[m.ch] = null
            }
          }
          if (payload.length === 0) return
          if (m.ch === 0) {
            dataSink.chunks.push(payload); dataSink.bytes += payload.length; dataSink.last = Date.now()
          } else if (m.ch === 1) {
            errChunks.push(payload)
          }
        }
      })
    } catch (e) {
      const r = pfConnResult(o, i, dataSink, '', t0)
      r.failure = e.message
      r.httpStatus = e.httpStatus
      return r
    }
    result.protocol = ws.protocol
    if (!codec) codec = wsCodec(ws)
    const closed = ws.k8sClosed
    ws.on('error', () => {})
    const payload = sendPayload(o, i)
    if (payload.length) codec.send(0, payload)
    dataSink.last = Date.now()
    await readUntil(o, dataSink, closed, 1000)
    if (ws.readyState === WebSocket.OPEN) ws.close(1000)
    await withTimeout(closed, 1000, 'ws close').catch(() => ws.terminate())
    const r = pfConnResult(o, i, dataSink, Buffer.concat(errChunks).toString('utf8'), t0)
    r.portPrefix = { data: prefix[0] === undefined ? null : prefix[0], error: prefix[1] === undefined ? null : prefix[1] }
    return r
  }
  if (urls.length === 1 && o.connections > 1) {
    result.warnings.push('WebSocket port-forward carries one connection per port per URL; pass one token URL per connection (comma-separated)')
  }
  result.connections = await Promise.all(urls.map((u, i) => one(u, i)))
}

// ---------------------------------------------------------------------------

async function rawStatus (o) {
  const u = new URL(o.url)
  const transport = o.transport || 'spdy'
  let headers
  if (transport === 'spdy') headers = spdyUpgradeHeaders(o.protocol.length ? o.protocol : SPDY_EXEC_PROTOCOLS)
  else if (transport === 'ws') headers = wsUpgradeHeaders(o.protocol.length ? o.protocol : WS_EXEC_PROTOCOLS)
  else headers = []
  const res = await request(u, { method: o.method || (transport === 'spdy' ? 'POST' : 'GET'), headers, timeoutMs: o.timeoutMs })
  if (res.socket) res.socket.destroy()
  return res.statusCode
}

function emit (obj, code) {
  process.stdout.write(JSON.stringify(obj) + '\n', () => process.exit(code))
}

async function main () {
  const o = parseArgs(process.argv.slice(2))
  o.timeoutMs = num(o['timeout-ms'], 30000)
  o.pingMs = num(o['ping-ms'], 5000)
  const t0 = Date.now()
  const hardTimer = setTimeout(() => {
    emit({ error: 'timeout', ms: Date.now() - t0 }, 1)
  }, o.timeoutMs + 2000)
  hardTimer.unref()

  if (o.command === 'raw-status') {
    try {
      const code = await rawStatus(o)
      emit(code, 0)
    } catch (e) {
      emit({ error: e.message }, 1)
    }
    return
  }

  const transport = o.transport || 'spdy'
  if (transport !== 'spdy' && transport !== 'ws') usage('--transport must be spdy or ws')
  const result = { protocol: null, warnings: [] }

  let work
  if (o.command === 'exec' || o.command === 'attach') {
    // any stdin option attaches stdin (an empty one when only --stdin-hold-ms is given)
    o.wantStdin = o.stdin !== undefined || o['stdin-bytes'] !== undefined || o['stdin-hold-ms'] !== undefined
    o.stdinBytes = num(o['stdin-bytes'], 0)
    o.stdinHoldMs = num(o['stdin-hold-ms'], 0)
    o.tty = !!o.tty
    o.wantStdout = !o['no-stdout']
    o.wantStderr = !o['no-stderr']
    o.resizes = parseResizes(o.resize)
    o.resizeAfterMs = num(o['resize-after-ms'], 0)
    o.resizeIntervalMs = num(o['resize-interval-ms'], 50)
    Object.assign(result, { stdout: '', stderr: '', status: null, exitCode: null })
    work = transport === 'spdy' ? remoteCommandSpdy(o, result) : remoteCommandWs(o, result)
  } else if (o.command === 'portforward') {
    if (o.port === undefined) usage('--port is required')
    o.port = num(o.port)
    o.connections = num(o.connections, 1)
    o.readBytes = num(o['read-bytes'], 0)
    o.sendBytes = num(o['send-bytes'], 0)
    o.idleMs = o['idle-ms'] !== undefined ? num(o['idle-ms']) : undefined
    result.connections = []
    o.pfPartial = []
    work = transport === 'spdy' ? portForwardSpdy(o, result) : portForwardWs(o, result)
  } else {
    usage('unknown command ' + o.command)
  }

  let failed = false
  try {
    await withTimeout(work, o.timeoutMs, 'session did not finish within --timeout-ms')
  } catch (e) {
    failed = true
    result.error = e.message
    if (e.httpStatus !== undefined) result.httpStatus = e.httpStatus
    if (e.body !== undefined) result.body = e.body
    if (e.headers && e.headers['x-accepted-stream-protocol-versions']) {
      result.acceptedProtocols = e.headers['x-accepted-stream-protocol-versions']
    }
    // a session cut short still reports what had arrived
    if (o.partial && !result.stdoutBytes) {
      try { Object.assign(result, o.partial()) } catch (err) {}
    }
    if (o.pfPartial && !result.connections.length) {
      result.connections = o.pfPartial.filter(Boolean).map((f) => { const r = f(); r.failure = 'timeout'; return r })
    }
  }
  if (result.connections) {
    const total = result.connections.reduce((a, c) => a + (c.bytes || 0), 0)
    result.totalBytes = total
    const ms = Date.now() - t0
    if (o.readBytes > 0) result.mbps = Number(((total / (1024 * 1024)) / (ms / 1000)).toFixed(2))
  }
  if (!result.warnings.length) delete result.warnings
  result.ms = Date.now() - t0
  emit(result, failed ? 1 : 0)
}

main().catch((e) => emit({ error: 'internal: ' + (e && e.stack ? e.stack : e) }, 1))
