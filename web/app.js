// streamvsr's page: send the camera (at the chosen size) to POST /offer, show what comes back
// upscaled 4x on the same RTCPeerConnection, and live stats from getStats() and /api/stats.
// Plain ES module, no dependencies.

const $ = (id) => document.getElementById(id);

const ui = {
  status: $("server-status"),
  start: $("start"),
  stop: $("stop"),
  camera: $("camera"),
  resolution: $("resolution"),
  compare: $("compare"),
  trueSize: $("truesize"),
  probe: $("probe"),
  notice: $("notice"),
  noticeText: $("notice-text"),
  retry: $("retry"),
  engineNotice: $("engine-notice"),
  source: $("camera-source"),
  input: $("input"),
  output: $("output"),
  compareInput: $("compare-input"),
  stage: $("stage"),
  split: $("split"),
  splitLine: $("split-line"),
  splitControl: $("split-control"),
  inputCaption: $("input-caption"),
  outputCaption: $("output-caption"),
  tokenField: $("token-field"),
  token: $("token"),
};

const FPS = 30;
const SCALE = 4;
const STATS_INTERVAL_MS = 1000;
const DISCONNECTED_GRACE_MS = 3000; // "disconnected" for this long counts as lost
const STALL_MS = 10000; // connected, but no new output frame for this long: a warning
const MAX_NOT_READY_WAIT_S = 10;

// Everything about the current run. `camera` outlives connection attempts (retries keep it).
const run = {
  active: false, // between Start and Stop
  camera: null, // MediaStream from getUserMedia
  canvas: null, // the exactly-sized canvas that is sent
  sent: null, // canvas.captureStream(FPS)
  pc: null,
  attempt: 0, // increases with every connection attempt; stale callbacks check it
  retryTimer: 0,
  statsTimer: 0,
  disconnectedTimer: 0,
  answer: null,
  previous: null, // the previous stats sample
  serverStart: null, // /api/stats at the start of the connection
  lastFrameAt: 0,
  captureDelays: [], // camera capture -> drawn into the canvas (ms)
  probeSamples: [], // marker-measured glass-to-glass (ms)
};

// --- messages ------------------------------------------------------------------------------

function showNotice(text, { kind = "info", retry = false } = {}) {
  delete ui.notice.dataset.stalled;
  ui.noticeText.textContent = text;
  ui.notice.className = `notice ${kind}`;
  ui.notice.dataset.kind = kind;
  ui.retry.hidden = !retry;
  ui.notice.hidden = false;
}

function clearNotice() {
  delete ui.notice.dataset.stalled;
  ui.notice.hidden = true;
  ui.noticeText.textContent = "";
  delete ui.notice.dataset.kind;
  ui.retry.hidden = true;
}

function setStatus(text, state = "") {
  ui.status.textContent = text;
  ui.status.className = `badge ${state}`;
}

function showEngine(engine, reason) {
  $("stat-engine").textContent = engine || "–";
  if (engine === "bicubic") {
    ui.engineNotice.textContent =
      "Bicubic fallback: the server is not running Stream-DiffVSR, so the output is plain " +
      `bicubic upscaling. Reason: ${reason || "not given"}`;
    ui.engineNotice.hidden = false;
  } else {
    ui.engineNotice.hidden = true;
    ui.engineNotice.textContent = "";
  }
}

function unsupportedReason() {
  if (!window.isSecureContext) {
    return (
      "This page needs a secure context for the camera: open it on https:// or on " +
      "http://localhost (start the server with --tls-cert/--tls-key for other machines)."
    );
  }
  if (!("RTCPeerConnection" in window)) {
    return "This browser does not support WebRTC (RTCPeerConnection). Use a current Chrome, Edge, Firefox or Safari.";
  }
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    return "This browser cannot capture a camera (navigator.mediaDevices.getUserMedia is missing). Use a current Chrome, Edge, Firefox or Safari.";
  }
  return null;
}

function cameraErrorMessage(error) {
  switch (error && error.name) {
    case "NotAllowedError":
    case "SecurityError":
    case "PermissionDeniedError":
      return "Camera permission was denied. Allow camera access for this site (the camera icon in the address bar), then press Start again.";
    case "NotFoundError":
    case "DevicesNotFoundError":
      return "No camera was found. Connect a camera, then press Start again.";
    case "OverconstrainedError":
      return "The chosen camera is not available any more. Pick another camera and press Start again.";
    case "NotReadableError":
    case "TrackStartError":
      return "The camera could not be started: another application may be using it. Close it, then press Start again.";
    default:
      return `The camera could not be started: ${(error && (error.message || error.name)) || error}`;
  }
}

// --- server readiness ----------------------------------------------------------------------

async function checkServer() {
  try {
    const response = await fetch("/readyz", { cache: "no-store" });
    const body = await response.json().catch(() => ({}));
    if (response.ok) {
      // The engine is named to users with the api permission only (else: once connected).
      setStatus(body.engine ? `Server ready · ${body.engine}` : "Server ready", "ok");
      if (!run.active && body.engine) showEngine(body.engine, body.reason);
    } else {
      setStatus("Server loading its engine…", "bad");
    }
  } catch {
    setStatus("Server unreachable", "bad");
  }
}

// --- camera and the exactly-sized canvas ---------------------------------------------------

function chosenSize() {
  const [width, height] = ui.resolution.value.split("x").map(Number);
  return { width, height };
}

async function listCameras() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return;
  let devices = [];
  try {
    devices = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === "videoinput");
  } catch {
    return;
  }
  const selected = ui.camera.value;
  ui.camera.replaceChildren(new Option("Default camera", ""));
  devices.forEach((device, n) => {
    if (!device.deviceId) return; // no permission yet: ids and labels are hidden
    ui.camera.append(new Option(device.label || `Camera ${n + 1}`, device.deviceId));
  });
  const current = run.camera && run.camera.getVideoTracks()[0];
  const active = current && current.getSettings().deviceId;
  ui.camera.value = [...ui.camera.options].some((o) => o.value === (active || selected))
    ? active || selected
    : "";
}

async function openCamera() {
  const { width, height } = chosenSize();
  const video = { width: { ideal: width }, height: { ideal: height }, frameRate: { ideal: FPS } };
  video.resizeMode = { ideal: "crop-and-scale" };
  if (ui.camera.value) video.deviceId = { exact: ui.camera.value };
  const stream = await navigator.mediaDevices.getUserMedia({ video, audio: false });
  const track = stream.getVideoTracks()[0];
  track.addEventListener("ended", () => {
    if (run.active && run.camera === stream) {
      stopAll();
      showNotice("The camera stopped (unplugged or taken by another application).", {
        kind: "error",
        retry: true,
      });
    }
  });
  return stream;
}

function setupCanvas() {
  const { width, height } = chosenSize();
  if (!run.canvas) {
    run.canvas = document.createElement("canvas");
  }
  run.canvas.width = width;
  run.canvas.height = height;
  const context = run.canvas.getContext("2d", { alpha: false });
  context.fillStyle = "#000";
  context.fillRect(0, 0, width, height);
  if (!run.sent) {
    run.sent = run.canvas.captureStream(FPS);
    const track = run.sent.getVideoTracks()[0];
    // Keep the chosen resolution: under load, lower the frame rate rather than the size.
    if ("contentHint" in track) track.contentHint = "detail";
  }
  ui.input.srcObject = run.sent;
  ui.compareInput.srcObject = run.sent;
  ui.inputCaption.textContent = `· ${width}×${height} sent`;
}

// Draw each new camera frame into the canvas: cover-crop to 16:9, scaled to the chosen size.
function startDrawing() {
  const source = ui.source;
  source.srcObject = run.camera;
  source.play().catch(() => {});
  const context = run.canvas.getContext("2d", { alpha: false });
  const stream = run.camera;
  const draw = (captureTime) => {
    const { width, height } = run.canvas;
    const vw = source.videoWidth;
    const vh = source.videoHeight;
    if (!vw || !vh) return;
    const scale = Math.max(width / vw, height / vh);
    const sw = width / scale;
    const sh = height / scale;
    context.drawImage(source, (vw - sw) / 2, (vh - sh) / 2, sw, sh, 0, 0, width, height);
    const now = performance.now();
    const captured = captureTime && captureTime <= now ? captureTime : now;
    pushSample(run.captureDelays, now - captured, 30);
    if (ui.probe.checked) drawMarker(context, width, height, captured);
  };
  if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) {
    const onFrame = (_now, metadata) => {
      if (run.camera !== stream) return;
      draw(metadata.captureTime);
      source.requestVideoFrameCallback(onFrame);
    };
    source.requestVideoFrameCallback(onFrame);
  } else {
    const timer = setInterval(() => {
      if (run.camera !== stream) clearInterval(timer);
      else draw(0);
    }, 1000 / FPS);
  }
}

// --- the latency marker: 16 black/white blocks at the top carry a millisecond time code -----

const MARK_BITS = 16;

function markerHeight(height) {
  return Math.max(6, Math.round(height / 15));
}

function drawMarker(context, width, height, time) {
  const code = Math.round(time) & 0xffff;
  const block = width / MARK_BITS;
  const h = markerHeight(height);
  for (let bit = 0; bit < MARK_BITS; bit++) {
    context.fillStyle = (code >> bit) & 1 ? "#fff" : "#000";
    context.fillRect(Math.round(bit * block), 0, Math.ceil(block), h);
  }
}

let probeCanvas = null;

function readMarker(video, displayTime) {
  const vw = video.videoWidth;
  const vh = video.videoHeight;
  if (!vw || !vh) return;
  probeCanvas ||= document.createElement("canvas");
  probeCanvas.width = MARK_BITS * 4;
  probeCanvas.height = 1;
  const context = probeCanvas.getContext("2d", { willReadFrequently: true });
  const h = markerHeight(vh / SCALE) * SCALE;
  // One row through the middle of the marker strip, 4 samples per block.
  context.drawImage(video, 0, h / 2, vw, 1, 0, 0, MARK_BITS * 4, 1);
  const pixels = context.getImageData(0, 0, MARK_BITS * 4, 1).data;
  let code = 0;
  for (let bit = 0; bit < MARK_BITS; bit++) {
    const i = (bit * 4 + 2) * 4; // the middle of the block, away from its edges
    const level = (pixels[i] + pixels[i + 1] + pixels[i + 2]) / 3;
    if (level > 60 && level < 195) return; // not a clean marker (probe just turned on, or lossy)
    if (level >= 195) code |= 1 << bit;
  }
  const latency = (((Math.round(displayTime) & 0xffff) - code) + 0x10000) & 0xffff;
  if (latency < 10000) pushSample(run.probeSamples, latency, 60);
}

function watchOutputFrames() {
  const video = ui.output;
  if (!("requestVideoFrameCallback" in HTMLVideoElement.prototype)) return;
  const attempt = run.attempt;
  const onFrame = (now, metadata) => {
    if (run.attempt !== attempt) return;
    run.lastFrameAt = performance.now();
    if (ui.probe.checked) readMarker(video, metadata.expectedDisplayTime || now);
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
}

// --- connecting ----------------------------------------------------------------------------

function waitForIceGathering(pc, timeoutMs = 3000) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState !== "complete") return;
      pc.removeEventListener("icegatheringstatechange", done);
      resolve();
    };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, timeoutMs); // send what we have: the server does not trickle either
  });
}

class HttpProblem extends Error {
  constructor(status, title, detail, retryAfter) {
    super(`${status} ${title}${detail ? `: ${detail}` : ""}`);
    this.status = status;
    this.title = title;
    this.detail = detail;
    this.retryAfter = retryAfter;
  }
}

// A token, when the server's operator requires one for the page (401 asks for it); kept for
// this tab only.
function authHeaders() {
  const token = ui.token.value.trim();
  if (token) sessionStorage.setItem("streamvsr-token", token);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function postOffer(offer) {
  const response = await fetch("/offer", {
    method: "POST",
    headers: { "Content-Type": "application/json", ...authHeaders() },
    body: JSON.stringify({ type: offer.type, sdp: offer.sdp }),
  });
  if (response.ok) return response.json();
  let problem = {};
  try {
    problem = await response.json();
  } catch {
    // not a problem document: the status line is all there is
  }
  const retryAfter = Number(response.headers.get("Retry-After")) || 0;
  throw new HttpProblem(response.status, problem.title || response.statusText, problem.detail || "", retryAfter);
}

function closePeer() {
  clearTimeout(run.disconnectedTimer);
  clearInterval(run.statsTimer);
  run.statsTimer = 0;
  if (run.pc) {
    run.pc.close();
    run.pc = null;
  }
  ui.output.srcObject = null;
}

async function connect() {
  clearTimeout(run.retryTimer);
  closePeer();
  const attempt = ++run.attempt;
  const stale = () => attempt !== run.attempt || !run.active;
  showNotice("Connecting to the server…");
  setStatus("Connecting…");
  const pc = new RTCPeerConnection({ iceServers: [] });
  run.pc = pc;
  const track = run.sent.getVideoTracks()[0];
  const transceiver = pc.addTransceiver(track, { direction: "sendrecv", streams: [run.sent] });
  try {
    const parameters = transceiver.sender.getParameters();
    parameters.degradationPreference = "maintain-resolution";
    await transceiver.sender.setParameters(parameters);
  } catch {
    // not supported everywhere; contentHint = "detail" asks for the same
  }
  pc.addEventListener("track", (event) => {
    if (stale()) return;
    ui.output.srcObject = event.streams[0] || new MediaStream([event.track]);
    ui.output.play().catch(() => {});
  });
  pc.addEventListener("connectionstatechange", () => onConnectionState(pc, attempt));

  let answer;
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc);
    if (stale()) return;
    answer = await postOffer(pc.localDescription);
    if (stale()) return;
    await pc.setRemoteDescription({ type: answer.type, sdp: answer.sdp });
  } catch (error) {
    if (stale()) return;
    closePeer();
    onConnectError(error);
    return;
  }
  run.answer = answer;
  document.body.dataset.session = answer.session;
  run.previous = null;
  run.serverStart = await fetchServerStats(answer.session);
  run.lastFrameAt = performance.now();
  showEngine(answer.engine, answer.engine_reason);
  showNotice(`Connected (engine: ${answer.engine}). Waiting for the upscaled video…`);
  setStatus(`Streaming · ${answer.engine}`, "ok");
  watchOutputFrames();
  run.statsTimer = setInterval(() => updateStats(attempt), STATS_INTERVAL_MS);
}

function onConnectError(error) {
  if (error instanceof HttpProblem) {
    if (error.status === 503 && error.title === "Not ready") {
      const wait = Math.min(Math.max(error.retryAfter || 3, 1), MAX_NOT_READY_WAIT_S);
      scheduleRetry(wait, (left) =>
        `The server is not ready yet: it is still loading its engine. Retrying automatically in ${left} s…`,
      );
      setStatus("Server loading its engine…", "bad");
      return;
    }
    if (error.status === 401 || error.status === 403) {
      ui.tokenField.hidden = false;
      const ask = ui.token.value ? "This token is not allowed to" : "This server needs an access token to";
      showNotice(`${ask} upscale (${error.detail || error.title}). Enter it above and press Retry.`, {
        kind: "error",
        retry: true,
      });
      setStatus("Token needed", "bad");
      ui.token.focus();
      return;
    }
    if (error.status === 503) {
      const after = error.retryAfter ? ` Try again in about ${error.retryAfter} s.` : "";
      showNotice(`Server busy: every session slot is in use (${error.detail || error.title}).${after}`, {
        kind: "error",
        retry: true,
      });
      setStatus("Server busy", "bad");
      return;
    }
    showNotice(`The server refused the connection: ${error.message}`, { kind: "error", retry: true });
    setStatus("Refused", "bad");
    return;
  }
  showNotice(`Could not connect to the server: ${error.message || error}`, { kind: "error", retry: true });
  setStatus("Connection failed", "bad");
}

function scheduleRetry(seconds, message) {
  let left = seconds;
  const attempt = run.attempt;
  const tick = () => {
    if (attempt !== run.attempt || !run.active) return;
    if (left <= 0) {
      connect();
      return;
    }
    showNotice(message(left), { kind: "warning" });
    left -= 1;
    run.retryTimer = setTimeout(tick, 1000);
  };
  tick();
}

function onConnectionState(pc, attempt) {
  if (attempt !== run.attempt || !run.active) return;
  const state = pc.connectionState;
  clearTimeout(run.disconnectedTimer);
  if (state === "connected") {
    if (ui.notice.dataset.kind !== "error") clearNotice();
  } else if (state === "disconnected") {
    showNotice("The connection is interrupted; waiting for it to come back…", { kind: "warning" });
    run.disconnectedTimer = setTimeout(() => connectionLost("it was interrupted for too long (the server stopped, or the network is down)"), DISCONNECTED_GRACE_MS);
  } else if (state === "failed") {
    connectionLost("the network path to the server failed");
  } else if (state === "closed") {
    connectionLost("the connection was closed");
  }
}

function connectionLost(why) {
  if (!run.active) return;
  run.attempt++; // outdate this connection's callbacks
  closePeer();
  showNotice(`Connection lost: ${why}.`, {
    kind: "error",
    retry: true,
  });
  setStatus("Disconnected", "bad");
}

// --- stats ---------------------------------------------------------------------------------

async function fetchServerStats(session) {
  try {
    const query = session ? `?session=${encodeURIComponent(session)}` : "";
    const response = await fetch(`/api/stats${query}`, { cache: "no-store", headers: authHeaders() });
    return response.ok ? await response.json() : null;
  } catch {
    return null;
  }
}

function pushSample(list, value, keep) {
  list.push(value);
  if (list.length > keep) list.shift();
}

function median(values) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

function perItem(now, before, sumKey, countKey) {
  if (!now || !before) return null;
  const count = (now[countKey] || 0) - (before[countKey] || 0);
  const sum = (now[sumKey] || 0) - (before[sumKey] || 0);
  return count > 0 ? sum / count : null;
}

function readReports(report) {
  const out = { t: performance.now() };
  const byId = new Map();
  report.forEach((s) => byId.set(s.id, s));
  report.forEach((s) => {
    if (s.type === "outbound-rtp" && s.kind === "video") out.outbound = s;
    else if (s.type === "inbound-rtp" && s.kind === "video") out.inbound = s;
    else if (s.type === "transport" && s.selectedCandidatePairId) out.pair = byId.get(s.selectedCandidatePairId);
    else if (s.type === "remote-inbound-rtp" && s.kind === "video") out.remoteInbound = s;
  });
  if (!out.pair) {
    report.forEach((s) => {
      if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") out.pair = s;
    });
  }
  const codecOf = (s) => s && s.codecId && byId.get(s.codecId);
  out.codecIn = codecOf(out.inbound);
  out.codecOut = codecOf(out.outbound);
  return out;
}

const fmt = {
  ms: (v) => (v == null || !Number.isFinite(v) ? "–" : `${Math.round(v)} ms`),
  fps: (v) => (v == null || !Number.isFinite(v) ? "–" : v.toFixed(1)),
  bits: (v) => {
    if (v == null || !Number.isFinite(v)) return "–";
    if (v >= 1e6) return `${(v / 1e6).toFixed(2)} Mbit/s`;
    return `${Math.round(v / 1e3)} kbit/s`;
  },
  size: (w, h) => (w && h ? `${w}×${h}` : "–"),
  codec: (c) => (c ? c.mimeType.replace(/^video\//, "") : null),
};

async function updateStats(attempt) {
  const pc = run.pc;
  if (!pc || attempt !== run.attempt) return;
  let report;
  let server;
  try {
    [report, server] = await Promise.all([pc.getStats(), fetchServerStats(run.answer.session)]);
  } catch {
    return; // the connection closed meanwhile
  }
  if (attempt !== run.attempt) return;
  if (server && server.session_open === false) {
    connectionLost("the server ended this session (idle timeout, restart or shutdown)");
    return;
  }
  const now = readReports(report);
  now.server = server;
  const before = run.previous;
  run.previous = now;
  const out = now.outbound || {};
  const inb = now.inbound || {};
  const set = (id, text) => {
    $(id).textContent = text;
  };

  // Resolutions, engine and codec do not need a previous sample.
  set("stat-input-res", fmt.size(out.frameWidth, out.frameHeight));
  set("stat-output-res", fmt.size(inb.frameWidth || ui.output.videoWidth, inb.frameHeight || ui.output.videoHeight));
  const codecs = [fmt.codec(now.codecOut), fmt.codec(now.codecIn)].filter(Boolean);
  set("stat-codec", codecs.length === 2 && codecs[0] === codecs[1] ? codecs[0] : codecs.join(" up / ") || "–");
  if (ui.output.videoWidth) {
    ui.outputCaption.textContent = `· ${ui.output.videoWidth}×${ui.output.videoHeight}`;
  }
  const rttSeconds = now.pair?.currentRoundTripTime ?? now.remoteInbound?.roundTripTime;
  const rtt = rttSeconds == null ? null : rttSeconds * 1000;
  set("stat-rtt", fmt.ms(rtt));

  // Dropped: the browser's decoder drops plus the server's drops since this connection began.
  const clientDropped = inb.framesDropped || 0;
  const serverDropped = server && run.serverStart ? server.frames_dropped - run.serverStart.frames_dropped : null;
  set(
    "stat-dropped",
    serverDropped == null
      ? `${clientDropped} (browser)`
      : `${clientDropped + serverDropped} (browser ${clientDropped} · server ${serverDropped})`,
  );

  // Stall warning: connected, but no output frame for a while (a slow engine, or a lost stream).
  if ((inb.framesDecoded || 0) > (before?.inbound?.framesDecoded || 0)) {
    run.lastFrameAt = Math.max(run.lastFrameAt, performance.now());
  }
  const quiet = performance.now() - run.lastFrameAt;
  if (pc.connectionState === "connected" && quiet > STALL_MS) {
    showNotice(`No video has come back from the server for ${Math.round(quiet / 1000)} s.`, {
      kind: "warning",
      retry: true,
    });
    ui.notice.dataset.stalled = "1";
  } else if (ui.notice.dataset.stalled && quiet < STALL_MS) {
    delete ui.notice.dataset.stalled;
    clearNotice();
  }
  if ((inb.framesDecoded || 0) > 0 && ui.notice.dataset.kind === "info") clearNotice();

  if (ui.probe.checked) {
    const measured = median(run.probeSamples);
    set("stat-probe", measured == null ? "waiting for marked frames…" : fmt.ms(measured));
  } else {
    run.probeSamples.length = 0;
    set("stat-probe", "off");
  }

  if (!before) return;
  const seconds = (now.t - before.t) / 1000;
  const bo = before.outbound || {};
  const bi = before.inbound || {};
  const rate = (a, b) => (a == null || b == null || seconds <= 0 ? null : (a - b) / seconds);
  const fpsIn = rate(out.framesSent ?? out.framesEncoded, bo.framesSent ?? bo.framesEncoded);
  const fpsOut = rate(inb.framesDecoded, bi.framesDecoded);
  set("stat-fps-in", fmt.fps(fpsIn));
  set("stat-fps-out", fmt.fps(fpsOut));
  set("stat-bitrate-up", fmt.bits(rate(out.bytesSent, bo.bytesSent) * 8));
  set("stat-bitrate-down", fmt.bits(rate(inb.bytesReceived, bi.bytesReceived) * 8));

  // Glass-to-glass estimate: every stage a frame passes, from camera capture to the screen.
  const ms = (v) => (v == null ? null : v * 1000);
  const capture = median(run.captureDelays);
  const encode = ms(perItem(out, bo, "totalEncodeTime", "framesEncoded"));
  const pacing = ms(perItem(out, bo, "totalPacketSendDelay", "packetsSent"));
  const serverWork = ms(perItem(server, before.server, "latency_seconds_sum", "latency_count"));
  const serverEncode = ms(perItem(server, before.server, "encode_seconds_sum", "encode_count"));
  // The server's receiver releases a frame when the next one starts arriving: ~1 frame interval.
  const serverJitter = fpsIn ? 1000 / fpsIn : 1000 / FPS;
  let receive = ms(perItem(inb, bi, "totalProcessingDelay", "framesDecoded"));
  if (receive == null) {
    const jitter = ms(perItem(inb, bi, "jitterBufferDelay", "jitterBufferEmittedCount"));
    const decode = ms(perItem(inb, bi, "totalDecodeTime", "framesDecoded"));
    receive = jitter == null && decode == null ? null : (jitter || 0) + (decode || 0);
  }
  const display = 1000 / 60; // about one refresh until the frame is on the screen
  set("stat-server-latency", fmt.ms(serverWork));
  const parts = [
    ["capture", capture],
    ["encode", (encode || 0) + (pacing || 0)],
    ["network", rtt],
    ["server", serverWork == null ? null : serverJitter + serverWork + (serverEncode || 0)],
    ["receive", receive],
    ["display", display],
  ];
  const known = parts.filter(([, v]) => v != null && Number.isFinite(v));
  const total = known.reduce((sum, [, v]) => sum + v, 0);
  const complete = known.length === parts.length;
  set("stat-latency", fpsOut ? `${complete ? "" : "≥ "}${Math.round(total)} ms` : "–");
  $("stat-latency").dataset.value = fpsOut ? String(Math.round(total)) : "";
  set("stat-breakdown", known.map(([name, v]) => `${name} ${Math.round(v)}`).join(" · ") + " (ms)");
}

function resetStats() {
  document.querySelectorAll("#stats dd").forEach((dd) => {
    dd.textContent = "–";
  });
  $("stat-probe").textContent = ui.probe.checked ? "waiting…" : "off";
  run.previous = null;
  run.probeSamples.length = 0;
  run.captureDelays.length = 0;
}

// --- start / stop --------------------------------------------------------------------------

async function start() {
  const reason = unsupportedReason();
  if (reason) {
    showNotice(reason, { kind: "error" });
    return;
  }
  run.active = true;
  ui.start.disabled = true;
  ui.stop.disabled = false;
  resetStats();
  clearNotice();
  if (!run.camera || !run.camera.getVideoTracks().some((t) => t.readyState === "live")) {
    showNotice("Asking for the camera…");
    try {
      run.camera = await openCamera();
    } catch (error) {
      stopAll();
      showNotice(cameraErrorMessage(error), { kind: "error" });
      return;
    }
    if (!run.active) return;
    await listCameras();
  }
  setupCanvas();
  startDrawing();
  await connect();
}

function stopAll() {
  run.active = false;
  run.attempt++;
  clearTimeout(run.retryTimer);
  closePeer();
  if (run.camera) {
    run.camera.getTracks().forEach((t) => t.stop());
    run.camera = null;
  }
  ui.source.srcObject = null;
  ui.start.disabled = false;
  ui.stop.disabled = true;
  ui.inputCaption.textContent = "(stopped)";
  ui.outputCaption.textContent = "(stopped)";
  setStatus("Stopped");
}

async function retry() {
  clearNotice();
  if (run.active && run.camera && run.camera.getVideoTracks().some((t) => t.readyState === "live")) {
    resetStats();
    await connect();
  } else {
    stopAll();
    await start();
  }
}

// --- view toggles --------------------------------------------------------------------------

function applyView() {
  document.body.classList.toggle("compare", ui.compare.checked);
  document.body.classList.toggle("truesize", ui.trueSize.checked);
  ui.compareInput.hidden = !ui.compare.checked;
  ui.splitLine.hidden = !ui.compare.checked;
  ui.splitControl.hidden = !ui.compare.checked;
  applyTrueSize();
}

function applyTrueSize() {
  // One video pixel per device pixel.
  const ratio = window.devicePixelRatio || 1;
  const w = ui.output.videoWidth;
  const h = ui.output.videoHeight;
  ui.stage.style.setProperty("--true-width", w ? `${w / ratio}px` : "auto");
  ui.stage.style.setProperty("--true-height", h ? `${h / ratio}px` : "auto");
}

function applySplit() {
  ui.stage.style.setProperty("--split", `${ui.split.value}%`);
  ui.split.setAttribute("aria-valuetext", `${ui.split.value}% input, ${100 - ui.split.value}% output`);
}

// --- wiring --------------------------------------------------------------------------------

function init() {
  const token = sessionStorage.getItem("streamvsr-token");
  if (token) {
    ui.token.value = token;
    ui.tokenField.hidden = false;
  }
  ui.start.addEventListener("click", start);
  ui.stop.addEventListener("click", () => {
    stopAll();
    clearNotice();
  });
  ui.retry.addEventListener("click", retry);
  ui.compare.addEventListener("change", applyView);
  ui.trueSize.addEventListener("change", applyView);
  ui.split.addEventListener("input", applySplit);
  ui.output.addEventListener("resize", () => {
    applyTrueSize();
    ui.outputCaption.textContent = `· ${ui.output.videoWidth}×${ui.output.videoHeight}`;
  });
  ui.camera.addEventListener("change", async () => {
    if (!run.active || !run.camera) return;
    // The canvas is what is sent: a new camera only changes what is drawn into it.
    const old = run.camera;
    try {
      run.camera = await openCamera();
    } catch (error) {
      run.camera = old;
      showNotice(cameraErrorMessage(error), { kind: "error" });
      return;
    }
    old.getTracks().forEach((t) => t.stop());
    startDrawing();
  });
  ui.resolution.addEventListener("change", async () => {
    if (!run.active) return;
    // A new size is a new session on the server (a model's state is per size).
    if (run.camera) run.camera.getTracks().forEach((t) => t.stop());
    run.camera = null;
    await start();
  });
  window.addEventListener("pagehide", () => closePeer());
  navigator.mediaDevices?.addEventListener?.("devicechange", listCameras);
  applyView();
  applySplit();

  const reason = unsupportedReason();
  if (reason) {
    showNotice(reason, { kind: "error" });
    setStatus("Unsupported browser", "bad");
    ui.start.disabled = true;
    return;
  }
  ui.start.disabled = false;
  listCameras();
  checkServer();
}

init();
