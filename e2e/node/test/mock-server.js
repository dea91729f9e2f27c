'use strict'
// A small mock of a container runtime's CRI streaming server, following
// /tmp/streaming-brief.md (i.e. the kubelet streaming library's behaviour):
//   GET|POST /exec/{token}, /attach/{token}, /portforward/{token}
//   single-use tokens with a TTL, 404 for unknown ones;
//   SPDY/3.1 (spdystream-like, no flow control) and WebSocket channel protocols.
// "Containers" are simulated: exec commands are interpreted in-process, and
// port-forward connects to 127.0.0.1:<port>.

const http = require('http')
const net = require('net')
const crypto = require('crypto')
const WebSocket = require('ws')
const spdy = require('../lib/spdy-go')

const SPDY_PROTOCOLS = ['v5.channel.k8s.io', 'v4.channel.k8s.io', 'v3.channel.k8s.io', 'v2.channel.k8s.io', 'channel.k8s.io']
const WS_PROTOCOLS = ['channel.k8s.io', 'base64.channel.k8s.io', 'v4.channel.k8s.io', 'v4.base64.channel.k8s.io', 'v5.channel.k8s.io']
const WS_PF_PROTOCOLS = ['v4.channel.k8s.io', 'v4.base64.channel.k8s.io']

function protoVersion (p) {
  const m = /^v(\d+)\./.exec(p || '')
  return m ? Number(m[1]) : 1
}

function newToken () {
  return crypto.randomBytes(6).toString('base64url').slice(0, 8)
}

// ---------------------------------------------------------------------------
// status objects (kubelet lib flavour: metav1.Status always has "metadata":{})

function statusFor (outcome) {
  if (outcome.kind === 'ok') return { metadata: {}, status: 'Success' }
  if (outcome.kind === 'exit') {
    return {
      metadata: {},
      status: 'Failure',
      message: `command terminated with non-zero exit code: error executing command [${outcome.cmd.join(' ')}], exit code ${outcome.code}`,
      reason: 'NonZeroExitCode',
      details: { causes: [{ reason: 'ExitCode', message: String(outcome.code) }] }
    }
  }
  const msg = `error executing command in container: ${outcome.message}`
  return {
    metadata: {},
    status: 'Failure',
    message: `Internal error occurred: ${msg}`,
    reason: 'InternalError',
    details: { causes: [{ message: msg }] },
    code: 500
  }
}

function statusBytes (version, outcome) {
  const st = statusFor(outcome)
  if (version >= 4) return Buffer.from(JSON.stringify(st))
  if (outcome.kind === 'ok') return null // v1-v3: nothing on success
  return Buffer.from(st.message)
}

// ---------------------------------------------------------------------------
// the simulated process: io = { stdin(EventEmitter-ish), write(fd, buf), resizes }

function runCommand (spec, io) {
  const cmd = spec.kind === 'attach' ? ['cat'] : spec.cmd
  return new Promise((resolve) => {
    const [name, ...args] = cmd
    switch (name) {
      case 'echo':
        io.write(1, Buffer.from(args.join(' ') + '\n'))
        return resolve({ kind: 'ok' })
      case 'stderr':
        io.write(2, Buffer.from(args.join(' ') + '\n'))
        return resolve({ kind: 'ok' })
      case 'exit':
        return resolve(Number(args[0]) === 0 ? { kind: 'ok' } : { kind: 'exit', code: Number(args[0]), cmd })
      case 'fail':
        return resolve({ kind: 'error', message: args.join(' ') || 'boom' })
      case 'sleep':
        return setTimeout(() => resolve({ kind: 'ok' }), Number(args[0]))
      case 'big': { // big N: write N bytes to stdout
        let left = Number(args[0])
        const chunk = Buffer.alloc(64 * 1024, 0x61)
        while (left > 0) {
          const n = Math.min(left, chunk.length)
          io.write(1, chunk.slice(0, n))
          left -= n
        }
        return resolve({ kind: 'ok' })
      }
      case 'cat': // copy stdin to stdout until stdin EOF
        io.onStdin((d) => io.write(1, d), () => resolve({ kind: 'ok' }))
        return
      case 'wc': // count stdin bytes, print at EOF
      {
        let n = 0
        io.onStdin((d) => { n += d.length }, () => { io.write(1, Buffer.from(n + '\n')); resolve({ kind: 'ok' }) })
        return
      }
      case 'resize-echo': { // print each resize event, exit after N of them
        let n = Number(args[0] || 1)
        io.onResize((s) => {
          io.write(1, Buffer.from(`${s.Width}x${s.Height}\n`))
          if (--n === 0) resolve({ kind: 'ok' })
        })
        return
      }
      default:
        return resolve({ kind: 'error', message: `executable file not found: ${name}` })
    }
  })
}

function makeIo () {
  const io = {
    stdinQueue: [],
    stdinEnded: false,
    stdinCbs: null,
    resizeCb: null,
    resizeQueue: [],
    writers: {},
    write (fd, buf) { if (io.writers[fd]) io.writers[fd](buf) },
    onStdin (onData, onEnd) {
      io.stdinCbs = { onData, onEnd }
      for (const d of io.stdinQueue) onData(d)
      io.stdinQueue = []
      if (io.stdinEnded) onEnd()
    },
    pushStdin (d) { if (io.stdinCbs) io.stdinCbs.onData(d); else io.stdinQueue.push(d) },
    endStdin () {
      if (io.stdinEnded) return
      io.stdinEnded = true
      if (io.stdinCbs) io.stdinCbs.onEnd()
    },
    onResize (cb) { io.resizeCb = cb; for (const s of io.resizeQueue) cb(s); io.resizeQueue = [] },
    pushResize (s) { if (io.resizeCb) io.resizeCb(s); else io.resizeQueue.push(s) }
  }
  return io
}

// Go's json.Decoder over the resize stream: consecutive JSON objects.
function resizeParser (onSize) {
  let buf = ''
  return (chunk) => {
    buf += chunk.toString('utf8')
    let i
    while ((i = buf.indexOf('}')) >= 0) {
      const obj = buf.slice(0, i + 1).trim()
      buf = buf.slice(i + 1)
      try { onSize(JSON.parse(obj)) } catch (e) {}
    }
  }
}

// ---------------------------------------------------------------------------

function createMockServer (options = {}) {
  const cfg = {
    ttlMs: 60000,
    streamCreationTimeoutMs: 30000,
    finishTimeoutMs: 10000,
    spdyProtocols: SPDY_PROTOCOLS,
    wsProtocols: WS_PROTOCOLS,
    ...options
  }
  const tokens = new Map() // token -> {spec, expires}
  const records = new Map() // token -> what the server observed
  const sockets = new Set()

  function addToken (kind, spec = {}) {
    const token = newToken()
    const full = { kind, stdin: false, stdout: true, stderr: !spec.tty, tty: false, cmd: [], ports: [], ...spec }
    tokens.set(token, { spec: full, expires: Date.now() + (spec.ttlMs || cfg.ttlMs) })
    return token
  }

  function consume (token) {
    const e = tokens.get(token)
    if (!e) return null
    tokens.delete(token) // single use: removed before the expiry check
    if (Date.now() > e.expires) return null
    return e.spec
  }

  function route (req) {
    const m = /^\/(exec|attach|portforward)\/([^/?]+)$/.exec(new URL(req.url, 'http://x').pathname)
    if (!m || (req.method !== 'GET' && req.method !== 'POST')) return null
    return { kind: m[1], token: m[2] }
  }

  function rawResponse (socket, code, text, body, extra = []) {
    let h = `HTTP/1.1 ${code} ${text}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\n`
    for (const [k, v] of extra) h += `${k}: ${v}\r\n`
    socket.end(h + '\r\n' + body)
  }

  const server = http.createServer((req, res) => {
    // non-upgrade requests
    const r = route(req)
    const spec = r && consume(r.token)
    if (!spec || spec.kind !== r.kind) {
      res.writeHead(404, { 'Content-Type': 'text/plain; charset=utf-8' })
      res.end('404 page not found\n')
      return
    }
    res.writeHead(400, { 'Content-Type': 'text/plain; charset=utf-8' })
    res.end('unable to upgrade: missing upgrade headers in request\n')
  })

  server.on('connection', (s) => { sockets.add(s); s.on('close', () => sockets.delete(s)) })

  const wss = new WebSocket.Server({ noServer: true, perMessageDeflate: false, handleProtocols: (set) => set.values().next().value })

  server.on('upgrade', (req, socket, head) => {
    const r = route(req)
    const spec = r && consume(r.token)
    if (!spec || spec.kind !== r.kind) {
      rawResponse(socket, 404, 'Not Found', '404 page not found\n')
      return
    }
    const rec = { kind: r.kind, method: req.method, headers: req.headers }
    records.set(r.token, rec)
    const upgrade = String(req.headers.upgrade || '').toLowerCase()
    if (upgrade === 'websocket') return handleWs(req, socket, head, spec, rec)
    return handleSpdy(req, socket, head, spec, rec)
  })

  // ----- SPDY ---------------------------------------------------------------

  function handleSpdy (req, socket, head, spec, rec) {
    const serverProtocols = spec.kind === 'portforward' ? ['portforward.k8s.io'] : (spec.spdyProtocols || cfg.spdyProtocols)
    const offered = []
    const raw = req.headersDistinct['x-stream-protocol-version'] || []
    for (const v of raw) for (const p of v.split(',')) if (p.trim()) offered.push(p.trim())
    rec.offered = offered
    if (!offered.length) {
      rawResponse(socket, 400, 'Bad Request', 'unable to upgrade: X-Stream-Protocol-Version is required\n')
      return
    }
    const chosen = offered.find((p) => serverProtocols.includes(p))
    if (!chosen) {
      rawResponse(socket, 403, 'Forbidden',
        `unable to upgrade: unable to negotiate protocol: client supports [${offered.join(' ')}], server accepts [${serverProtocols.join(' ')}]\n`,
        serverProtocols.map((p) => ['X-Accepted-Stream-Protocol-Versions', p]))
      return
    }
    const conn = String(req.headers.connection || '').toLowerCase()
    if (!conn.includes('upgrade') || !String(req.headers.upgrade || '').toLowerCase().includes('spdy/3.1')) {
      rawResponse(socket, 400, 'Bad Request', 'unable to upgrade: missing upgrade headers in request\n')
      return
    }
    rec.protocol = chosen
    socket.write('HTTP/1.1 101 Switching Protocols\r\n' +
      `X-Stream-Protocol-Version: ${chosen}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n` +
      `Date: ${new Date().toUTCString()}\r\n\r\n`)
    if (head && head.length) socket.unshift(head)
    const sconn = spdy.createConnection(socket, { isServer: true, record: rec })
    socket.on('error', () => {})
    socket.on('close', () => { rec.clientClosed = true })
    if (spec.kind === 'portforward') return spdyPortForward(sconn, socket, spec, rec)
    return spdyRemoteCommand(sconn, socket, spec, rec, protoVersion(chosen))
  }

  function destroySpdy (sconn, socket, streams) {
    for (const s of streams) if (s && !s.destroyed) { try { s.abort() } catch (e) {} }
    try { sconn.end() } catch (e) {}
    setTimeout(() => socket.destroy(), 50)
  }

  function spdyRemoteCommand (sconn, socket, spec, rec, version) {
    const expected = 1 + (spec.stdin ? 1 : 0) + (spec.stdout ? 1 : 0) + (spec.stderr ? 1 : 0) + (spec.tty && version >= 3 ? 1 : 0)
    const got = {}
    const all = []
    let started = false
    rec.streamTypes = []
    const timer = setTimeout(() => {
      // Upstream just gives up (and leaves the connection open). Per the brief we
      // report a Failure on the error stream, if the client opened one, and close.
      rec.streamTimeout = true
      if (got.error) {
        const bytes = statusBytes(version, { kind: 'error', message: 'timed out waiting for client to create streams' })
        got.error.end(bytes)
      }
      setTimeout(() => destroySpdy(sconn, socket, all), 100)
    }, spec.streamCreationTimeoutMs || cfg.streamCreationTimeoutMs)
    sconn.on('stream', (s) => {
      const type = s.headers.streamtype
      rec.streamTypes.push(type)
      s.on('error', () => {})
      all.push(s)
      s.respond(200, {})
      if (!['error', 'stdin', 'stdout', 'stderr', 'resize'].includes(type)) return
      got[type] = s
      if (Object.keys(got).length === expected && !started) {
        started = true
        clearTimeout(timer)
        run()
      }
    })

    async function run () {
      const io = makeIo()
      if (got.stdin) {
        got.stdin.on('data', (d) => io.pushStdin(d))
        got.stdin.on('end', () => io.endStdin())
        got.stdin.on('close', () => io.endStdin())
      }
      if (got.resize) got.resize.on('data', resizeParser((s) => { (rec.resizes = rec.resizes || []).push(s); io.pushResize(s) }))
      if (got.stdout) io.writers[1] = (b) => got.stdout.write(b)
      if (got.stderr) io.writers[2] = (b) => got.stderr.write(b)
      else if (spec.tty && got.stdout) io.writers[2] = (b) => got.stdout.write(b)
      const outcome = await runCommand(spec, io)
      rec.outcome = outcome
      const bytes = statusBytes(version, outcome)
      if (spec.closeMode === 'legacy') {
        // kubelet lib <= 1.35: status, then conn.Close() = RST all + GOAWAY + close
        if (bytes) got.error.write(bytes)
        setImmediate(() => destroySpdy(sconn, socket, all))
        return
      }
      // cri-streaming finish(): RST stdin/resize, status, FIN outputs, wait for client close
      for (const s of [got.stdin, got.resize]) if (s && !s.destroyed) s.abort()
      if (bytes) got.error.write(bytes)
      for (const s of [got.stdout, got.stderr, got.error]) if (s) s.end()
      const t = setTimeout(() => destroySpdy(sconn, socket, all), cfg.finishTimeoutMs)
      socket.once('close', () => { clearTimeout(t); rec.clientClosed = true })
    }
  }

  function spdyPortForward (sconn, socket, spec, rec) {
    const pairs = new Map()
    rec.pairs = []
    sconn.on('stream', (s) => {
      s.on('error', () => {})
      const port = Number(s.headers.port)
      const type = s.headers.streamtype
      if (!s.headers.port || !(port >= 1 && port <= 65535) || (type !== 'error' && type !== 'data')) {
        s.abort() // rejected: RST_STREAM without reply
        return
      }
      s.respond(200, {})
      let id = s.headers.requestid
      if (id === undefined) id = String(type === 'error' ? s.id : s.id - 2)
      let p = pairs.get(id)
      if (!p) {
        p = { id }
        pairs.set(id, p)
        p.timer = setTimeout(() => {
          if (p.error) p.error.end(`(conn=mock, request=${id}) timed out waiting for streams`)
          pairs.delete(id)
        }, cfg.streamCreationTimeoutMs)
      }
      if (p[type]) {
        if (p.error) p.error.write(`error processing stream for request ${id}: ${type} stream already assigned`)
        return
      }
      p[type] = s
      if (p.error && p.data) {
        clearTimeout(p.timer)
        pairs.delete(id)
        rec.pairs.push({ id, port })
        forward(p, port)
      }
    })
    socket.on('close', () => { rec.clientClosed = true })

    function forward (p, port) {
      const target = net.connect({ host: '127.0.0.1', port })
      let connected = false
      let finished = false
      const finish = (err) => {
        if (finished) return
        finished = true
        if (err) {
          const msg = `error forwarding port ${port} to pod mock-sandbox, uid : ${err.message}`
          const closeConnection = !(err.code === 'EPIPE' || err.code === 'ECONNRESET')
          p.error.write(JSON.stringify(closeConnection ? { closeConnection: true, message: msg } : { message: msg }) + '\n')
        }
        if (!p.data.destroyed) p.data.end()
        p.error.end()
      }
      target.on('connect', () => { connected = true })
      target.on('error', (e) => { target.destroy(); finish(e) })
      target.on('data', (d) => p.data.write(d))
      target.on('end', () => finish())
      target.on('close', () => finish())
      p.data.on('data', (d) => { if (connected || target.connecting) target.write(d) })
      p.data.on('end', () => { if (!target.destroyed) target.end() }) // client half-close
      p.data.on('close', () => { if (!p.data.readableEnded) target.destroy() }) // client reset
    }
  }

  // ----- WebSocket ----------------------------------------------------------

  function handleWs (req, socket, head, spec, rec) {
    const isPf = spec.kind === 'portforward'
    const supported = isPf ? WS_PF_PROTOCOLS : (spec.wsProtocols || cfg.wsProtocols)
    const offered = String(req.headers['sec-websocket-protocol'] || '').split(',').map((s) => s.trim()).filter(Boolean)
    rec.offered = offered
    let chosen = ''
    if (offered.length) {
      chosen = offered.find((p) => supported.includes(p))
      if (!chosen) {
        rawResponse(socket, 403, 'Forbidden', '')
        return
      }
    }
    rec.protocol = chosen
    // make ws pick exactly our choice
    req.headers['sec-websocket-protocol'] = chosen || undefined
    if (!chosen) delete req.headers['sec-websocket-protocol']
    wss.handleUpgrade(req, socket, head, (ws) => {
      ws.on('error', () => {})
      const base64 = chosen.includes('base64.')
      const send = (ch, buf) => {
        if (ws.readyState !== WebSocket.OPEN) return
        if (base64) ws.send(String.fromCharCode(48 + ch) + buf.toString('base64'))
        else ws.send(Buffer.concat([Buffer.from([ch]), buf]))
      }
      const decode = (data, isBinary) => {
        const b = Buffer.isBuffer(data) ? data : Buffer.concat(data)
        if (!b.length) return null
        if (b[0] === 255 && !base64) return { close: true, ch: b[1], len: b.length }
        if (base64) return { ch: b[0] - 48, payload: Buffer.from(b.slice(1).toString('latin1'), 'base64') }
        return { ch: b[0], payload: b.slice(1) }
      }
      if (isPf) return wsPortForward(ws, spec, rec, send, decode)
      return wsRemoteCommand(ws, spec, rec, send, decode, protoVersion(chosen))
    })
  }

  function wsRemoteCommand (ws, spec, rec, send, decode, version) {
    const io = makeIo()
    if (spec.stdout) io.writers[1] = (b) => send(1, b)
    if (spec.stderr) io.writers[2] = (b) => send(2, b)
    else if (spec.tty && spec.stdout) io.writers[2] = (b) => send(1, b)
    // initial empty message on the lowest writable channel
    send(spec.stdout ? 1 : spec.stderr ? 2 : 3, Buffer.alloc(0))
    const onResize = resizeParser((s) => { (rec.resizes = rec.resizes || []).push(s); io.pushResize(s) })
    ws.on('message', (data, isBinary) => {
      const m = decode(data, isBinary)
      if (!m) return
      if (m.close) {
        if (version >= 5 && m.len === 2) {
          rec.closeSignals = (rec.closeSignals || []).concat([m.ch])
          if (m.ch === 0) io.endStdin()
        }
        return
      }
      if (m.ch === 0 && spec.stdin) io.pushStdin(m.payload)
      else if (m.ch === 4) onResize(m.payload)
    })
    ws.on('close', () => { rec.clientClosed = true; io.endStdin() })
    runCommand(spec, io).then((outcome) => {
      rec.outcome = outcome
      const bytes = statusBytes(version, outcome)
      if (bytes) send(3, bytes)
      if (ws.readyState === WebSocket.OPEN) ws.close(1000)
      setTimeout(() => ws.terminate(), cfg.finishTimeoutMs)
    })
  }

  function wsPortForward (ws, spec, rec, send, decode) {
    const ports = spec.ports
    const pairs = ports.map((port, i) => ({ port, data: 2 * i, error: 2 * i + 1 }))
    let remaining = pairs.length
    const targets = []
    for (const p of pairs) {
      const pb = Buffer.alloc(2)
      pb.writeUInt16LE(p.port)
      send(p.data, pb)
      send(p.error, pb)
      const target = net.connect({ host: '127.0.0.1', port: p.port })
      targets[p.data] = target
      let done = false
      const finish = (err) => {
        if (done) return
        done = true
        if (err) send(p.error, Buffer.from(`error forwarding port ${p.port} to pod mock-sandbox, uid : ${err.message}`))
        if (--remaining === 0 && ws.readyState === WebSocket.OPEN) ws.close(1000)
      }
      target.on('data', (d) => send(p.data, d))
      target.on('error', (e) => { target.destroy(); finish(e) })
      target.on('end', () => finish())
      target.on('close', () => finish())
    }
    ws.on('message', (data, isBinary) => {
      const m = decode(data, isBinary)
      if (!m || m.close) return
      const t = targets[m.ch]
      if (t && !t.destroyed) t.write(m.payload)
    })
    ws.on('close', () => { rec.clientClosed = true; for (const t of targets) if (t) t.destroy() })
  }

  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      const base = `http://127.0.0.1:${port}`
      resolve({
        base,
        port,
        addToken,
        url: (kind, token) => `${base}/${kind}/${token}`,
        /** like GetExec/GetAttach/GetPortForward: register and return the URL */
        get (kind, spec) { const t = addToken(kind, spec); return { token: t, url: `${base}/${kind}/${t}` } },
        record: (token) => records.get(token),
        close () {
          for (const s of sockets) s.destroy()
          return new Promise((r) => server.close(() => r()))
        }
      })
    })
  })
}

module.exports = { createMockServer }

if (require.main === module) {
  // Manual use: node test/mock-server.js  -> prints a few ready-made URLs
  createMockServer().then((m) => {
    console.log(JSON.stringify({
      base: m.base,
      exec: m.get('exec', { cmd: ['echo', 'hello'] }).url,
      execCat: m.get('exec', { cmd: ['cat'], stdin: true }).url
    }))
  })
}
