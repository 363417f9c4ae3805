// Audio over WebRTC as docs/protocol.md (Audio) asks: one publish section, then `slots`
// listen sections; non-trickle ICE (the offer carries its candidates).

function gathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState === "complete") {
        pc.removeEventListener("icegatheringstatechange", done);
        resolve();
      }
    };
    pc.addEventListener("icegatheringstatechange", done);
  });
}

// Level of an AnalyserNode's last window: RMS of the samples, 0..1.
function rms(analyser, buffer) {
  analyser.getFloatTimeDomainData(buffer);
  let sum = 0;
  for (const x of buffer) sum += x * x;
  return Math.sqrt(sum / buffer.length);
}

export class Audio {
  constructor(api, space) {
    this.api = api;
    this.space = space;
    this.pc = null;
    this.publish = null; // the publish transceiver: the microphone goes in on approval
    this.mic = null;
    this.ctx = new AudioContext();
    this.slotMeters = []; // one AnalyserNode per listen slot
    this.micMeter = null;
    this.elements = [];
    this.closed = false;
  }

  // Join with an offer; answers the join's response. A listener's offer has the publish
  // section too (without a track), so being approved needs no renegotiation.
  async join(slots) {
    for (let attempt = 0; ; attempt++) {
      this.pc = new RTCPeerConnection({ iceServers: [] });
      this.publish = this.pc.addTransceiver("audio", { direction: "sendonly" });
      const listen = [];
      for (let i = 0; i < slots; i++) {
        listen.push(this.pc.addTransceiver("audio", { direction: "recvonly" }));
      }
      await this.pc.setLocalDescription();
      await gathered(this.pc);
      let answer;
      try {
        answer = await this.api.call("POST", `/v1/spaces/${this.space}/join`, {
          sdp: this.pc.localDescription.sdp,
        });
      } catch (err) {
        this.pc.close();
        // bad_sdp says how many listen sections this server wants: offer again once
        if (err.code === "bad_sdp" && err.body.slots && attempt === 0) {
          slots = err.body.slots;
          continue;
        }
        throw err;
      }
      await this.pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
      this.hear(listen.map((t) => t.receiver.track));
      return answer;
    }
  }

  hear(tracks) {
    this.ctx.resume();
    for (const track of tracks) {
      const stream = new MediaStream([track]);
      // Each slot plays through an <audio> element (what we hear); the analyser only
      // measures it. (Chromium has at times fed a remote WebRTC track to WebAudio only
      // while a media element played it: the element keeps the meters working too.)
      const el = document.createElement("audio");
      el.autoplay = true;
      el.srcObject = stream;
      el.play().catch(() => {});
      this.elements.push(el);
      const analyser = this.ctx.createAnalyser();
      analyser.fftSize = 1024;
      this.ctx.createMediaStreamSource(stream).connect(analyser);
      this.slotMeters.push(analyser);
    }
  }

  // The microphone, once on stage. getUserMedia asks the user's permission the first time.
  async startMic() {
    if (this.mic || this.pc.signalingState === "closed") return;
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: false });
    if (this.mic || this.pc.signalingState === "closed") {
      stream.getTracks().forEach((t) => t.stop()); // closed (or started) meanwhile
      return;
    }
    this.mic = stream.getAudioTracks()[0];
    await this.publish.sender.replaceTrack(this.mic);
    this.micMeter = this.ctx.createAnalyser();
    this.micMeter.fftSize = 1024;
    this.ctx.createMediaStreamSource(stream).connect(this.micMeter);
  }

  async stopMic() {
    if (!this.mic) return;
    if (this.pc.signalingState !== "closed") await this.publish.sender.replaceTrack(null);
    this.mic.stop();
    this.mic = null;
    this.micMeter = null;
  }

  levels() {
    const buffer = new Float32Array(1024);
    return {
      slots: this.slotMeters.map((a) => rms(a, buffer)),
      mic: this.micMeter ? rms(this.micMeter, buffer) : 0,
    };
  }

  // What the receivers got, from getStats: bytes and decoded audio energy per slot.
  async received() {
    const out = [];
    if (!this.pc) return out;
    (await this.pc.getStats()).forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "audio") {
        out.push({
          bytes: s.bytesReceived ?? 0,
          energy: s.totalAudioEnergy ?? 0,
          packets: s.packetsReceived ?? 0,
          level: s.audioLevel ?? 0,
        });
      }
    });
    return out;
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    for (const el of this.elements) el.srcObject = null;
    if (this.mic) this.mic.stop();
    if (this.pc) this.pc.close();
    this.ctx.close();
  }
}
