// A js-ipfs (npm ipfs@0.66.1) node for cmbuild's IPFS tests: offline, on loopback only.
//
// usage: node start.mjs REPO_DIR
//
// Every listener binds 127.0.0.1 on a port the kernel picks (port 0), so parallel runs never
// collide; once the HTTP RPC API answers, one line goes to stdout:
//   cmbuild-ipfs-node: api=http://127.0.0.1:PORT
// The node stops cleanly on SIGTERM/SIGINT, or when stdin closes (so a test harness that dies
// without killing it still takes it down).

// ipfs@0.66.1's dependency tree (mortice, abort-error) calls Promise.withResolvers, which
// Node 20 lacks; the polyfill must exist before any of those modules is loaded, hence the
// dynamic import below.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers () {
    let resolve
    let reject
    const promise = new this((res, rej) => {
      resolve = res
      reject = rej
    })
    return { promise, resolve, reject }
  }
}

const repo = process.argv[2]
if (!repo) {
  console.error('usage: node start.mjs REPO_DIR')
  process.exit(2)
}

const { Daemon } = await import('ipfs-daemon')

// No bootstrap peers, no delegates, no MDNS, no WebRTC star, no DHT, no preload nodes: the node
// must never try to reach anything beyond 127.0.0.1.
const config = {
  Addresses: {
    Swarm: ['/ip4/127.0.0.1/tcp/0'],
    Announce: [],
    NoAnnounce: [],
    API: '/ip4/127.0.0.1/tcp/0',
    Gateway: '/ip4/127.0.0.1/tcp/0',
    RPC: '',
    Delegates: []
  },
  Bootstrap: [],
  Discovery: {
    MDNS: { Enabled: false, Interval: 10 },
    webRTCStar: { Enabled: false }
  },
  Pubsub: { Enabled: false },
  Swarm: { DisableNatPortMap: true },
  Routing: { Type: 'none' }
}

const daemon = new Daemon({
  repo,
  init: { emptyRepo: true, algorithm: 'Ed25519' },
  config,
  preload: { enabled: false },
  silent: true
})

await daemon.start()

const info = daemon._httpApi._apiServers[0].info
console.log(`cmbuild-ipfs-node: api=http://127.0.0.1:${info.port}`)

let stopping = false
async function stop () {
  if (stopping) return
  stopping = true
  try {
    await daemon.stop()
  } finally {
    process.exit(0)
  }
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
process.stdin.on('end', stop)
process.stdin.on('error', stop)
process.stdin.resume()
