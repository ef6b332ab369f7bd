// A WHEP viewer on libdatachannel (npm node-datachannel), as libdatachannel-based players do it:
// recvonly H.264 + Opus, an offer that carries its candidates, the answer applied after the POST.
//
//   node ldc_whep_viewer.mjs WHEP_URL [--connections N] [--record FILE --frames K]
//                                     [--candidates yes|no]
//
// Makes N viewers one after the other (each: POST, connect, optionally record, close, DELETE).
// With --record, the first one writes the H.264 it receives as Annex-B to FILE (depacketized here:
// libdatachannel has no depacketizer in node) until K frames (RTP marker bits) have arrived.
// Prints one JSON line: {viewers: [{status, fingerprints, state, frames, deleted}]}.
import { writeFileSync } from 'node:fs';
import { connection, fingerprints, loopbackPeer, makeOffer, ndc, options, report } from './libdatachannel.mjs';

const START = Buffer.from([0, 0, 0, 1]);

// RTP payload of an H.264 packet (RFC 6184) -> complete NAL units, Annex-B framed.
class H264Depacketizer {
  constructor() {
    this.out = [];
    this.fragment = null;
  }

  push(payload) {
    const type = payload[0] & 0x1f;
    if (type >= 1 && type <= 23) {
      this.out.push(START, payload);
    } else if (type === 24) { // STAP-A: 16-bit sizes, each followed by one NAL unit
      for (let at = 1; at + 2 <= payload.length;) {
        const size = payload.readUInt16BE(at);
        this.out.push(START, payload.subarray(at + 2, at + 2 + size));
        at += 2 + size;
      }
    } else if (type === 28) { // FU-A: start bit, end bit, the NAL header's type in the FU header
      const [indicator, header] = payload;
      if (header & 0x80) this.fragment = [Buffer.from([(indicator & 0xe0) | (header & 0x1f)])];
      if (this.fragment === null) return; // lost the start of this unit
      this.fragment.push(payload.subarray(2));
      if (header & 0x40) {
        this.out.push(START, Buffer.concat(this.fragment));
        this.fragment = null;
      }
    }
  }
}

// Feeds the track's RTP to a depacketizer until `frames` marker bits; resolves with the count.
function record(track, depacketizer, frames, timeoutMs) {
  return new Promise((resolve) => {
    let count = 0;
    const timer = setTimeout(() => resolve(count), timeoutMs);
    track.onMessage((packet) => {
      if (packet.length < 12 || (packet[1] >= 200 && packet[1] <= 207)) return; // RTCP (mux)
      const csrcs = packet[0] & 0x0f;
      let at = 12 + 4 * csrcs;
      if (packet[0] & 0x10) at += 4 + 4 * packet.readUInt16BE(at + 2); // header extension
      depacketizer.push(packet.subarray(at));
      if (packet[1] & 0x80 && ++count >= frames) {
        clearTimeout(timer);
        resolve(count);
      }
    });
  });
}

async function view(url, index, recording, withCandidates) {
  const pc = loopbackPeer(`whep-viewer-${index}`);
  const video = new ndc.Video('0', 'RecvOnly');
  video.addH264Codec(96);
  const audio = new ndc.Audio('1', 'RecvOnly');
  audio.addOpusCodec(111);
  const track = pc.addTrack(video);
  pc.addTrack(audio);
  const result = { index };
  try {
    const offer = await makeOffer(pc, withCandidates);
    const response = await fetch(url, {
      method: 'POST', body: offer, headers: { 'Content-Type': 'application/sdp' },
    });
    const answer = await response.text();
    result.status = response.status;
    if (response.status !== 201) return { ...result, error: answer };
    const location = new URL(response.headers.get('Location'), url);
    result.fingerprints = fingerprints(answer);
    const depacketizer = new H264Depacketizer();
    const recorded = recording ? record(track, depacketizer, recording.frames, 15000) : null;
    pc.setRemoteDescription(answer, 'answer');
    result.state = await connection(pc);
    if (recorded) {
      result.frames = await recorded;
      writeFileSync(recording.file, Buffer.concat(depacketizer.out));
    }
    pc.close();
    result.deleted = (await fetch(location, { method: 'DELETE' })).status;
    return result;
  } catch (error) {
    return { ...result, error: String(error) };
  } finally {
    pc.close();
  }
}

const args = options({ connections: '1', frames: '30', candidates: 'yes' });
const viewers = [];
for (let i = 0; i < Number(args.connections); i++) {
  const recording = i === 0 && args.record ? { file: args.record, frames: Number(args.frames) } : null;
  viewers.push(await view(args._[0], i, recording, args.candidates === 'yes'));
}
report({ viewers });
