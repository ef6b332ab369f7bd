// A WHIP publisher on libdatachannel (npm node-datachannel) that behaves as OBS Studio's WHIP output
// (plugins/obs-webrtc/whip-output.cpp): sendonly Opus (mid 0, PT 111) and H.264 42e01f (mid 1,
// PT 96) with SSRCs and a NACK responder, the offer POSTed at once without candidates, Bearer
// token, 8 s timeout, 201 + Location required; media paced as the encoder makes it (and dropped
// until the track is open); on stop: close the peer, then DELETE.
//
//   node obs_like_whip.mjs WHIP_URL --video AU_FILE --audio PACKET_FILE [--token T] [--fps 30]
//        [--seconds 8]
//
// AU_FILE holds H.264 access units (Annex-B), PACKET_FILE Opus packets (20 ms), each preceded by
// its 32-bit big-endian length; both are sent in a loop. Prints one JSON line: {status, location,
// offerCandidates, fingerprints, state, sent: {video, audio}, deleted}.
import { readFileSync } from 'node:fs';
import { connection, fingerprints, loopbackPeer, makeOffer, ndc, options, report } from './libdatachannel.mjs';

const MAX_FRAGMENT = 1200; // OBS's MAX_VIDEO_FRAGMENT_SIZE
const CNAME = 'obslikecname0001';
const STREAM_ID = 'obslikestream001';

function units(path) {
  const data = readFileSync(path);
  const found = [];
  for (let at = 0; at < data.length; at += 4 + data.readUInt32BE(at)) {
    found.push(data.subarray(at + 4, at + 4 + data.readUInt32BE(at)));
  }
  return found;
}

// A sendonly track whose messages (one frame each) are packetized as OBS's are.
function sendTrack(pc, media, ssrc, payloadType, clockRate, makePacketizer) {
  media.addSSRC(ssrc, CNAME, STREAM_ID, `${STREAM_ID}-${media.mid() === '0' ? 'audio' : 'video'}`);
  const track = pc.addTrack(media);
  const config = new ndc.RtpPacketizationConfig(ssrc, CNAME, payloadType, clockRate);
  const packetizer = makePacketizer(config);
  packetizer.addToChain(new ndc.RtcpSrReporter(config));
  packetizer.addToChain(new ndc.RtcpNackResponder());
  track.setMediaHandler(packetizer);
  return { track, config };
}

// Sends frames[n % length] every `periodMs` from now, advancing the RTP clock by `ticks` each;
// counts what went out while the track was open. Returns a stop function.
function pace({ track, config }, frames, periodMs, ticks, counts, key) {
  const start = performance.now();
  let n = 0;
  let timer;
  const tick = () => {
    config.timestamp = (config.timestamp + ticks) >>> 0;
    if (track.isOpen()) {
      track.sendMessageBinary(frames[n % frames.length]);
      counts[key] += 1;
    }
    n += 1;
    timer = setTimeout(tick, Math.max(0, start + n * periodMs - performance.now()));
  };
  timer = setTimeout(tick, 0);
  return () => clearTimeout(timer);
}

const args = options({ fps: '30', seconds: '8' });
const url = args._[0];
const auth = args.token ? { Authorization: `Bearer ${args.token}` } : {};
const headers = { 'User-Agent': 'Mozilla/5.0 (OBS-Studio/31.0.0; Linux x86_64; en-US)', ...auth };
const video = units(args.video);
const audio = units(args.audio);

const pc = loopbackPeer('obs-like-whip');
const ssrc = 0x10000000 + Math.floor(Math.random() * 0x10000000);
const audioMedia = new ndc.Audio('0', 'SendOnly');
audioMedia.addOpusCodec(111);
const audioTrack = sendTrack(pc, audioMedia, ssrc, 111, 48000, (c) => new ndc.RtpPacketizer(c));
const videoMedia = new ndc.Video('1', 'SendOnly');
videoMedia.addH264Codec(96);
const videoTrack = sendTrack(pc, videoMedia, ssrc + 1, 96, 90000,
  (c) => new ndc.H264RtpPacketizer('StartSequence', c, MAX_FRAGMENT));

const offer = await makeOffer(pc, false);
const response = await fetch(url, {
  method: 'POST', body: offer, headers: { 'Content-Type': 'application/sdp', ...headers },
  signal: AbortSignal.timeout(8000),
});
const answer = await response.text();
const result = { status: response.status, offerCandidates: offer.includes('a=candidate:') };
if (response.status !== 201 || !response.headers.get('Location')) {
  report({ ...result, error: answer });
} else {
  result.location = response.headers.get('Location');
  result.fingerprints = fingerprints(answer);
  const connected = connection(pc);
  pc.setRemoteDescription(answer.slice(answer.indexOf('v=0')), 'answer');
  const fps = Number(args.fps);
  result.sent = { video: 0, audio: 0 };
  const stops = [
    pace(videoTrack, video, 1000 / fps, Math.round(90000 / fps), result.sent, 'video'),
    pace(audioTrack, audio, 20, 960, result.sent, 'audio'),
  ];
  result.state = await connected;
  await new Promise((resolve) => setTimeout(resolve, Number(args.seconds) * 1000));
  stops.forEach((stop) => stop());
  pc.close();
  const deleted = await fetch(new URL(result.location, url), { method: 'DELETE', headers });
  result.deleted = deleted.status;
  report(result);
}
