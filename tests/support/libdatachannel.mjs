// Shared pieces of the libdatachannel (npm node-datachannel) test peers: loading the package from
// NODE_PATH, loopback-only peers, and waiting for a peer's gathering or connection state.
import { createRequire } from 'node:module';

// ES modules ignore NODE_PATH; require() honours it (the tests install into .node_modules/).
export const ndc = createRequire(import.meta.url)('node-datachannel');

// A peer that gathers only a 127.0.0.1 host candidate and contacts no STUN/TURN server.
export function loopbackPeer(name) {
  return new ndc.PeerConnection(name, { iceServers: [], bindAddress: '127.0.0.1' });
}

// Resolves with the first of `states` that `subscribe(cb)` reports, or 'timeout'.
function firstOf(subscribe, current, states, timeoutMs) {
  return new Promise((resolve) => {
    if (states.includes(current)) return resolve(current);
    const timer = setTimeout(() => resolve('timeout'), timeoutMs);
    subscribe((state) => {
      if (states.includes(state)) {
        clearTimeout(timer);
        resolve(state);
      }
    });
  });
}

// setLocalDescription, then the offer: once gathering is complete, with its candidates (as OBS up
// to 30 and libdatachannel WHEP players send it), or at once without any (as OBS 31+, which starts
// gathering only after the answer: libdatachannel's node binding cannot defer it, so the
// candidates are left out of the offer; the server then learns the address from ICE checks).
export async function makeOffer(pc, withCandidates) {
  const gathered = firstOf((cb) => pc.onGatheringStateChange(cb), pc.gatheringState(),
    ['complete'], 5000);
  pc.setLocalDescription();
  if (!withCandidates) {
    return pc.localDescription().sdp.split('\r\n')
      .filter((line) => !line.startsWith('a=candidate:') && line !== 'a=end-of-candidates')
      .join('\r\n');
  }
  await gathered;
  return pc.localDescription().sdp;
}

// 'connected', 'failed', 'closed' or 'timeout': DTLS is done once libdatachannel says connected.
export function connection(pc, timeoutMs = 10000) {
  return firstOf((cb) => pc.onStateChange(cb), pc.state(), ['connected', 'failed', 'closed'],
    timeoutMs);
}

export function fingerprints(sdp) {
  return sdp.split(/\r?\n/).filter((l) => l.startsWith('a=fingerprint:')).map((l) => l.slice(14));
}

// Flag values of `--name value` arguments, with defaults.
export function options(defaults) {
  const args = process.argv.slice(2);
  const found = { ...defaults, _: [] };
  for (let i = 0; i < args.length; i++) {
    if (args[i].startsWith('--')) found[args[i].slice(2)] = args[++i];
    else found._.push(args[i]);
  }
  return found;
}

// One JSON line on stdout for the Python test; then leave (libdatachannel's threads stay
// otherwise).
export function report(result) {
  process.stdout.write(`${JSON.stringify(result)}\n`, () => {
    process.exit(0);
  });
}
