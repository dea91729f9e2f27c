'use strict'
// npm test: runs k8s-stream.js (as a child process, the way the Rust e2e tests
// will) against the mock SPDY/WebSocket servers in mock-server.js.

const path = require('path')
const net = require('net')
const assert = require('assert')
const { execFile } = require('child_process')
const { createMockServer } = require('./mock-server')

const CLI = path.join(__dirname, '..', 'k8s-stream.js')

function cli (args, timeoutMs = 20000) {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [CLI, ...args], { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      const line = stdout.trim().split('\n').pop()
      let json
      try { json = JSON.parse(line) } catch (e) {
        return reject(new Error(`no JSON from CLI (exit ${err && err.code}): ${stdout}\n${stderr}`))
      }
      resolve({ json, code: err ? err.code : 0, stderr })
    })
  })
}

function listen (handler) {
  return new Promise((resolve) => {
    const srv = net.createServer({ allowHalfOpen: true }, handler)
    srv.listen(0, '127.0.0.1', () => resolve(srv))
  })
}

const tests = []
function test (name, fn) { tests.push({ name, fn }) }

async function main () {
  const mock = await createMockServer({ streamCreationTimeoutMs: 1500 })
  const echo = await listen((s) => { s.on('data', (d) => s.write(d)); s.on('end', () => s.end()); s.on('error', () => {}) })
  const source = await listen((s) => { // endless byte source
    s.on('error', () => {})
    const chunk = Buffer.alloc(64 * 1024, 0x7a)
    let open = true
    s.on('close', () => { open = false })
    const pump = () => { while (open && s.write(chunk)) {} if (open) s.once('drain', pump) }
    pump()
  })
  const closedPort = await new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)) })
  })
  const ECHO = echo.address().port
  const SOURCE = source.address().port

  // ---------------- SPDY exec ----------------
  test('spdy exec echo: negotiates v5 (served as v4), Success status', async () => {
    const { url, token } = mock.get('exec', { cmd: ['echo', 'hello', 'world'] })
    const { json } = await cli(['exec', url, '--transport', 'spdy'])
    assert.strictEqual(json.protocol, 'v5.channel.k8s.io')
    assert.strictEqual(json.stdout, 'hello world\n')
    assert.strictEqual(json.exitCode, 0)
    assert.deepStrictEqual(json.status, { metadata: {}, status: 'Success' })
    assert.deepStrictEqual(json.streamEnds, { error: 'fin', stdout: 'fin', stderr: 'fin' }, 'graceful finish = FIN')
    assert.ok(json.ms < 3000, 'client closes as soon as outputs and error stream ended')
    const rec = mock.record(token)
    assert.deepStrictEqual(rec.streamTypes, ['error', 'stdout', 'stderr'], 'kubectl stream order')
    assert.strictEqual(rec.pseudoHeaders, undefined, 'client must not send :method/:path like spdystream')
    assert.ok(!rec.frameTypes.has('SETTINGS') && !rec.frameTypes.has('WINDOW_UPDATE'), 'no SETTINGS/WINDOW_UPDATE from client')
    assert.deepStrictEqual(rec.offered, ['v5.channel.k8s.io', 'v4.channel.k8s.io', 'v3.channel.k8s.io', 'v2.channel.k8s.io', 'channel.k8s.io'])
    assert.strictEqual(rec.method, 'POST')
  })

  test('spdy exec non-zero exit -> NonZeroExitCode/ExitCode cause', async () => {
    const { url } = mock.get('exec', { cmd: ['exit', '3'] })
    const { json } = await cli(['exec', url, '--transport', 'spdy', '--protocol', 'v4.channel.k8s.io'])
    assert.strictEqual(json.protocol, 'v4.channel.k8s.io')
    assert.strictEqual(json.exitCode, 3)
    assert.strictEqual(json.status.reason, 'NonZeroExitCode')
    assert.deepStrictEqual(json.status.details.causes, [{ reason: 'ExitCode', message: '3' }])
  })

  test('spdy exec stdin half-close (cat)', async () => {
    const { url, token } = mock.get('exec', { cmd: ['cat'], stdin: true })
    const { json } = await cli(['exec', url, '--transport', 'spdy', '--stdin', 'abc\ndef\n', '--stdin-hold-ms', '100'])
    assert.strictEqual(json.stdout, 'abc\ndef\n')
    assert.strictEqual(json.exitCode, 0)
    assert.deepStrictEqual(mock.record(token).streamTypes, ['error', 'stdin', 'stdout', 'stderr'])
  })

  test('spdy exec 4 MiB stdin through cat + 8 MiB stdout (no flow-control deadlock)', async () => {
    const a = mock.get('exec', { cmd: ['wc'], stdin: true })
    const r1 = await cli(['exec', a.url, '--transport', 'spdy', '--stdin-bytes', String(4 << 20)])
    assert.strictEqual(r1.json.stdout, String(4 << 20) + '\n')
    const b = mock.get('exec', { cmd: ['big', String(8 << 20)] })
    const r2 = await cli(['exec', b.url, '--transport', 'spdy', '--no-output-text'])
    assert.strictEqual(r2.json.stdoutBytes, 8 << 20)
    assert.strictEqual(r2.json.exitCode, 0)
  })

  test('spdy exec stderr stream', async () => {
    const { url } = mock.get('exec', { cmd: ['stderr', 'oops'] })
    const { json } = await cli(['exec', url, '--transport', 'spdy'])
    assert.strictEqual(json.stderr, 'oops\n')
    assert.strictEqual(json.stdout, '')
  })

  test('spdy exec tty + resize stream', async () => {
    const { url, token } = mock.get('exec', { cmd: ['resize-echo', '2'], tty: true, stdin: true })
    const { json } = await cli(['exec', url, '--transport', 'spdy', '--tty', '--stdin', '', '--stdin-hold-ms', '-1',
      '--resize', '80x24,100x30', '--resize-after-ms', '20'])
    assert.strictEqual(json.stdout, '80x24\n100x30\n')
    assert.strictEqual(json.exitCode, 0)
    assert.deepStrictEqual(mock.record(token).streamTypes, ['error', 'stdin', 'stdout', 'resize'])
    assert.deepStrictEqual(mock.record(token).resizes, [{ Width: 80, Height: 24 }, { Width: 100, Height: 30 }])
  })

  test('spdy exec internal error status', async () => {
    const { url } = mock.get('exec', { cmd: ['fail', 'container gone'] })
    const { json } = await cli(['exec', url, '--transport', 'spdy'])
    assert.strictEqual(json.exitCode, null)
    assert.strictEqual(json.status.reason, 'InternalError')
    assert.strictEqual(json.status.code, 500)
  })

  test('spdy v3: plain-text error stream, nothing on success', async () => {
    const a = mock.get('exec', { cmd: ['exit', '2'] })
    const r1 = await cli(['exec', a.url, '--transport', 'spdy', '--protocol', 'v3.channel.k8s.io'])
    assert.strictEqual(r1.json.protocol, 'v3.channel.k8s.io')
    assert.strictEqual(r1.json.status, null)
    assert.strictEqual(r1.json.exitCode, null)
    assert.match(r1.json.errorText, /non-zero exit code/)
    const b = mock.get('exec', { cmd: ['echo', 'x'] })
    const r2 = await cli(['exec', b.url, '--transport', 'spdy', '--protocol', 'v3.channel.k8s.io'])
    assert.strictEqual(r2.json.exitCode, 0)
    assert.strictEqual(r2.json.errorText, null)
  })

  test('spdy legacy close (RST+GOAWAY right after status) still yields output+status', async () => {
    const { url } = mock.get('exec', { cmd: ['echo', 'legacy'], closeMode: 'legacy' })
    const { json } = await cli(['exec', url, '--transport', 'spdy', '--method', 'GET'])
    assert.strictEqual(json.stdout, 'legacy\n')
    assert.strictEqual(json.exitCode, 0)
    assert.strictEqual(json.streamEnds.stdout, 'reset', 'legacy servers RST instead of FIN')
  })

  test('spdy attach', async () => {
    const { url } = mock.get('attach', { stdin: true })
    const { json } = await cli(['attach', url, '--transport', 'spdy', '--stdin', 'attached'])
    assert.strictEqual(json.stdout, 'attached')
    assert.deepStrictEqual(json.status, { metadata: {}, status: 'Success' })
  })

  test('session cut short by --timeout-ms still reports partial output (ws and spdy)', async () => {
    for (const transport of ['ws', 'spdy']) {
      const { url, token } = mock.get('attach', { stdin: true })
      const { json, code } = await cli(['attach', url, '--transport', transport, '--stdin', 'partial\n',
        '--stdin-hold-ms', '-1', '--timeout-ms', '800'])
      assert.strictEqual(code, 1)
      assert.match(json.error, /did not finish/)
      assert.strictEqual(json.stdout, 'partial\n', transport)
      await new Promise((r) => setTimeout(r, 100))
      assert.ok(mock.record(token).clientClosed, transport + ': connection closed when the client exits')
    }
  })

  test('--stdin-hold-ms alone attaches an empty stdin (tty exec expecting stdin)', async () => {
    const { url, token } = mock.get('exec', { cmd: ['resize-echo', '1'], tty: true, stdin: true })
    const { json } = await cli(['exec', url, '--transport', 'spdy', '--tty', '--stdin-hold-ms', '500', '--resize', '100x30'])
    assert.strictEqual(json.stdout, '100x30\n')
    assert.deepStrictEqual(mock.record(token).streamTypes, ['error', 'stdin', 'stdout', 'resize'])
  })

  test('spdy protocol mismatch -> 403 + X-Accepted-Stream-Protocol-Versions', async () => {
    const { url } = mock.get('exec', { cmd: ['echo'] })
    const { json, code } = await cli(['exec', url, '--transport', 'spdy', '--protocol', 'v9.channel.k8s.io'])
    assert.strictEqual(code, 1)
    assert.strictEqual(json.httpStatus, 403)
    assert.ok(json.acceptedProtocols.includes('v4.channel.k8s.io'))
  })

  test('spdy missing streams -> server times out; client reports error, no hang', async () => {
    const { url, token } = mock.get('exec', { cmd: ['cat'], stdin: true }) // client won't open stdin
    const { json } = await cli(['exec', url, '--transport', 'spdy', '--timeout-ms', '6000'])
    assert.ok(mock.record(token).streamTimeout)
    assert.strictEqual(json.exitCode, null)
    assert.strictEqual(json.status.status, 'Failure')
    assert.match(json.status.message, /timed out waiting for client to create streams/)
    assert.ok(json.ms < 5000)
  })

  // ---------------- WebSocket exec ----------------
  test('ws v5 exec echo + initial empty message', async () => {
    const { url } = mock.get('exec', { cmd: ['echo', 'ws'] })
    const { json } = await cli(['exec', url, '--transport', 'ws'])
    assert.strictEqual(json.protocol, 'v5.channel.k8s.io')
    assert.strictEqual(json.stdout, 'ws\n')
    assert.strictEqual(json.exitCode, 0)
    assert.deepStrictEqual(json.emptyMessages, { 1: 1 })
    assert.strictEqual(json.closeCode, 1000)
  })

  test('ws v5 stdin CLOSE signal + exit code', async () => {
    const a = mock.get('exec', { cmd: ['cat'], stdin: true })
    const r1 = await cli(['exec', a.url, '--transport', 'ws', '--stdin', 'over ws'])
    assert.strictEqual(r1.json.stdout, 'over ws')
    assert.deepStrictEqual(mock.record(a.token).closeSignals, [0])
    const b = mock.get('exec', { cmd: ['exit', '7'] })
    const r2 = await cli(['exec', b.url, '--transport', 'ws'])
    assert.strictEqual(r2.json.exitCode, 7)
  })

  test('ws v4 exec (kubelet-lib protocol set) and v4.base64', async () => {
    const a = mock.get('exec', { cmd: ['exit', '4'], wsProtocols: ['channel.k8s.io', 'v4.channel.k8s.io', 'v4.base64.channel.k8s.io'] })
    const r1 = await cli(['exec', a.url, '--transport', 'ws'])
    assert.strictEqual(r1.json.protocol, 'v4.channel.k8s.io')
    assert.strictEqual(r1.json.exitCode, 4)
    const b = mock.get('exec', { cmd: ['stderr', 'b64'] })
    const r2 = await cli(['exec', b.url, '--transport', 'ws', '--protocol', 'v4.base64.channel.k8s.io'])
    assert.strictEqual(r2.json.protocol, 'v4.base64.channel.k8s.io')
    assert.strictEqual(r2.json.stderr, 'b64\n')
    assert.strictEqual(r2.json.exitCode, 0)
  })

  test('ws tty resize on channel 4', async () => {
    const { url, token } = mock.get('exec', { cmd: ['resize-echo', '1'], tty: true })
    const { json } = await cli(['exec', url, '--transport', 'ws', '--tty', '--resize', '132x43'])
    assert.strictEqual(json.stdout, '132x43\n')
    assert.deepStrictEqual(mock.record(token).resizes, [{ Width: 132, Height: 43 }])
  })

  test('ws protocol mismatch -> 403', async () => {
    const { url } = mock.get('exec', { cmd: ['echo'] })
    const { json } = await cli(['exec', url, '--transport', 'ws', '--protocol', 'v9.channel.k8s.io'])
    assert.strictEqual(json.httpStatus, 403)
  })

  // ---------------- tokens / raw-status ----------------
  test('raw-status: used, unknown, wrong-kind and expired tokens -> 404', async () => {
    const { url, token } = mock.get('exec', { cmd: ['echo', 'once'] })
    const first = await cli(['exec', url, '--transport', 'spdy'])
    assert.strictEqual(first.json.stdout, 'once\n')
    assert.strictEqual((await cli(['raw-status', url])).json, 404, 'replayed token')
    assert.strictEqual((await cli(['raw-status', mock.url('exec', 'nope1234')])).json, 404, 'unknown token')
    assert.strictEqual((await cli(['raw-status', mock.url('exec', 'nope1234'), '--transport', 'ws'])).json, 404)
    const pf = mock.get('portforward', {})
    assert.strictEqual((await cli(['raw-status', mock.url('exec', pf.token)])).json, 404, 'wrong kind')
    assert.strictEqual((await cli(['raw-status', pf.url, '--protocol', 'portforward.k8s.io'])).json, 404, 'wrong-kind attempt burnt it')
    const exp = mock.get('exec', { cmd: ['echo'], ttlMs: 50 })
    await new Promise((r) => setTimeout(r, 120))
    assert.strictEqual((await cli(['raw-status', exp.url])).json, 404, 'expired')
    const ok = mock.get('exec', { cmd: ['echo'] })
    assert.strictEqual((await cli(['raw-status', ok.url])).json, 101, 'fresh token upgrades')
    assert.strictEqual(token.length, 8)
  })

  // ---------------- port-forward ----------------
  test('spdy portforward echo + half-close', async () => {
    const { url, token } = mock.get('portforward', {})
    const { json } = await cli(['portforward', url, '--transport', 'spdy', '--port', String(ECHO), '--send', 'ping'])
    assert.strictEqual(json.protocol, 'portforward.k8s.io')
    assert.strictEqual(json.connections[0].text, 'ping')
    assert.strictEqual(json.connections[0].error, null)
    assert.deepStrictEqual(mock.record(token).pairs, [{ id: '0', port: ECHO }])
  })

  test('spdy portforward: 4 concurrent connections paired by requestID', async () => {
    const { url } = mock.get('portforward', {})
    const { json } = await cli(['portforward', url, '--transport', 'spdy', '--port', String(ECHO), '--send', 'conn-{i}', '--connections', '4'])
    assert.deepStrictEqual(json.connections.map((c) => c.text), ['conn-0', 'conn-1', 'conn-2', 'conn-3'])
  })

  test('spdy portforward to closed port -> error stream JSON', async () => {
    const { url } = mock.get('portforward', {})
    const { json } = await cli(['portforward', url, '--transport', 'spdy', '--port', String(closedPort), '--send', 'x'])
    const c = json.connections[0]
    assert.match(c.error, /error forwarding port/)
    assert.strictEqual(c.errorJson.closeConnection, true)
  })

  test('spdy portforward throughput (--read-bytes)', async () => {
    const { url } = mock.get('portforward', {})
    const { json } = await cli(['portforward', url, '--transport', 'spdy', '--port', String(SOURCE), '--read-bytes', String(16 << 20), '--no-half-close'])
    assert.ok(json.connections[0].bytes >= 16 << 20)
    assert.ok(json.mbps > 0)
    assert.strictEqual(json.connections[0].text, undefined)
  })

  test('ws portforward echo with 2-byte port prefix', async () => {
    const { url } = mock.get('portforward', { ports: [ECHO] })
    const { json } = await cli(['portforward', url, '--transport', 'ws', '--port', String(ECHO), '--send', 'hello ws', '--idle-ms', '300'])
    assert.strictEqual(json.protocol, 'v4.channel.k8s.io')
    const c = json.connections[0]
    assert.strictEqual(c.text, 'hello ws')
    assert.deepStrictEqual(c.portPrefix, { data: ECHO, error: ECHO })
  })

  test('ws portforward: one URL per connection (comma-separated)', async () => {
    const urls = [0, 1, 2].map(() => mock.get('portforward', { ports: [ECHO] }).url)
    const { json } = await cli(['portforward', urls.join(','), '--transport', 'ws', '--port', String(ECHO),
      '--send', 'c{i}', '--connections', '3', '--idle-ms', '300'])
    assert.deepStrictEqual(json.connections.map((c) => c.text), ['c0', 'c1', 'c2'])
  })

  test('ws portforward closed port -> error channel text', async () => {
    const { url } = mock.get('portforward', { ports: [closedPort] })
    const { json } = await cli(['portforward', url, '--transport', 'ws', '--port', String(closedPort), '--idle-ms', '2000'])
    assert.match(json.connections[0].error, /error forwarding port/)
  })

  // ---------------- run ----------------
  let failed = 0
  for (const t of tests) {
    const t0 = Date.now()
    try {
      await t.fn()
      console.log(`ok   ${t.name} (${Date.now() - t0} ms)`)
    } catch (e) {
      failed++
      console.log(`FAIL ${t.name}\n     ${e && e.stack ? e.stack.split('\n').slice(0, 4).join('\n     ') : e}`)
    }
  }
  await mock.close()
  echo.close(); source.close()
  console.log(`${tests.length - failed}/${tests.length} passed`)
  process.exit(failed ? 1 : 0)
}

main().catch((e) => { console.error(e); process.exit(1) })
