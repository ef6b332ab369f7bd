"""The real-time WebRTC server: the page's offer/answer, WHIP ingest, WHEP playback, metrics."""
