'use strict'
// Helpers that make `spdy-transport` behave on the wire like Go's spdystream
// (github.com/moby/spdystream), which is what kubectl/client-go and the kubelet
// streaming library use:
//   * SPDY/3 framing (version field 3, no SPDY/3.1 session flow control);
//   * no SETTINGS and no WINDOW_UPDATE frames are ever sent, and the peer's
//     windows are never waited for (spdystream implements no flow control);
//   * SYN_STREAM / SYN_REPLY carry only the application headers: no
//     `:method`, `:path`, `:version`, `:host`, `:scheme`, `:status`;
//   * a SYN_REPLY without `:status` is a valid reply;
//   * an incoming SYN_STREAM without `:method`/`:path` is accepted (server side).

const transport = require('spdy-transport')

const BIG = 0x3fffffff

function noopFrame (frame, callback) {
  if (callback) process.nextTick(callback)
}

// Make a window "side" never block and never overflow.
function neuterSendSide (side) {
  side.current = BIG
  side.max = BIG
  side.update = function (size, callback) {
    if (callback) process.nextTick(callback)
  }
  side.updateMax = function () {}
  side.setMax = function () {}
  side.getCurrent = function () { return BIG }
  side.getMax = function () { return BIG }
  side.isEmpty = function () { return false }
}

function neuterRecvSide (side) {
  // Receiving more than we advertised must not be an error (Go peers ignore
  // windows); accounting can go negative, overflow is only checked upwards.
  side.limit = Infinity
}

/**
 * Create a spdy-transport Connection over an already-upgraded socket and
 * patch it to speak like spdystream.
 * @param {net.Socket} socket
 * @param {{isServer: boolean, record?: object}} opts  record: optional object
 *        that receives `frameTypes` (Set of received frame types) and
 *        `pseudoHeaders` (true if a received SYN_STREAM had `:` headers).
 */
function createConnection (socket, opts) {
  const conn = transport.connection.create(socket, {
    protocol: 'spdy',
    isServer: !!opts.isServer,
    // accept whatever the peer sends without a flow-control error
    windowSize: 0x7fffffff,
    maxChunk: 32 * 1024,
    headerCompression: true
  })
  const state = conn._spdyState
  const framer = state.framer
  const parser = state.parser

  // --- outgoing frames -----------------------------------------------------
  const origHeadersToDict = framer.headersToDict
  framer.headersToDict = function (headers, preprocess, callback) {
    return origHeadersToDict.call(this, headers, function (h) {
      if (preprocess) preprocess(h)
      for (const k of Object.keys(h)) {
        if (k.startsWith(':')) delete h[k]
      }
    }, callback)
  }
  framer.settingsFrame = noopFrame
  framer.windowUpdateFrame = noopFrame

  // --- flow control --------------------------------------------------------
  neuterSendSide(state.window.send)
  neuterRecvSide(state.window.recv)
  neuterRecvSide(state.streamWindow.recv)

  const origCreateStream = conn._createStream
  conn._createStream = function (uri) {
    const stream = origCreateStream.call(this, uri)
    const sstate = stream._spdyState
    neuterSendSide(sstate.window.send)
    neuterRecvSide(sstate.window.recv)
    // Go's SYN_REPLY has no headers at all: accept a reply without :status.
    stream._handleResponse = function (frame) {
      this._spdyState.needResponse = false
      this.emit('response', 200, frame.headers)
    }
    return stream
  }

  // --- incoming frames -----------------------------------------------------
  const record = opts.record
  if (record) {
    record.frameTypes = record.frameTypes || new Set()
    conn.on('frame', (f) => record.frameTypes.add(f.type))
  }
  const origParseKVs = parser.parseKVs
  parser.parseKVs = function (buffer, callback) {
    return origParseKVs.call(this, buffer, function (err, headers) {
      if (err) return callback(err)
      if (record && Object.keys(headers).some((k) => k.startsWith(':'))) {
        record.pseudoHeaders = true
      }
      // spdy-transport insists on these for SYN_STREAM; Go never sends them.
      if (headers[':method'] === undefined) headers[':method'] = 'POST'
      if (headers[':path'] === undefined) headers[':path'] = '/'
      callback(null, headers)
    })
  }

  conn.on('error', () => {}) // surfaced through stream/socket events instead
  return conn
}

/** Client side: start the session (SPDY/3 framing, like spdystream). */
function startClient (conn) {
  conn.start(3)
}

/**
 * Record how/when a stream's readable side finished, so that callers that
 * start waiting later do not miss the event. stream.k8sEnd: 'fin' (DATA/FIN
 * received) or 'reset' (RST_STREAM, GOAWAY or connection loss before FIN);
 * stream.k8sDone: Promise resolved at that moment.
 */
function trackEnd (stream) {
  stream.k8sEnd = null
  stream.k8sDone = new Promise((resolve) => {
    stream.once('end', () => { if (!stream.k8sEnd) stream.k8sEnd = 'fin'; resolve() })
    stream.once('close', () => { if (!stream.k8sEnd) stream.k8sEnd = 'reset'; resolve() })
  })
}

/**
 * Open a client stream with the given k8s headers and wait for the SYN_REPLY,
 * like k8s.io/apimachinery/pkg/util/httpstream/spdy connection.CreateStream
 * (which waits up to 30 s for the reply before returning).
 */
function createStream (conn, headers, timeoutMs) {
  return new Promise((resolve, reject) => {
    let done = false
    const stream = conn.request({ method: 'POST', path: '/', headers }, (err) => {
      if (err && !done) { done = true; reject(err) }
    })
    stream.on('error', (err) => { stream._lastError = err })
    trackEnd(stream)
    const timer = setTimeout(() => {
      if (done) return
      done = true
      reject(new Error('timed out waiting for SYN_REPLY for ' + JSON.stringify(headers)))
    }, timeoutMs || 30000)
    stream.once('response', () => {
      if (done) return
      done = true
      clearTimeout(timer)
      resolve(stream)
    })
    stream.once('close', () => {
      if (done) return
      done = true
      clearTimeout(timer)
      reject(stream._lastError || new Error('stream reset before reply: ' + JSON.stringify(headers)))
    })
  })
}

module.exports = { createConnection, startClient, createStream, trackEnd }
