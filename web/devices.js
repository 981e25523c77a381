// The pre-join device test: camera preview, microphone level meter, speaker test tone and
// device choice. Used by page.js; keeps the chosen devices for publishing and the floor.
import { t } from './i18n.js';

const CAM_KEY = 'kursrelay.camera';
const MIC_KEY = 'kursrelay.mic';

function load(key) { try { return localStorage.getItem(key) || ''; } catch { return ''; } }
function save(key, v) { try { if (v) localStorage.setItem(key, v); else localStorage.removeItem(key); } catch { /* */ } }

export class DeviceTest {
  constructor({ video, meter, meterText, message, cameraSelect, micSelect, speakerButton }) {
    this.video = video;
    this.meter = meter;
    this.meterBar = meter.querySelector('.meter-bar');
    this.meterText = meterText;
    this.message = message;
    this.cameraSelect = cameraSelect;
    this.micSelect = micSelect;
    this.speakerButton = speakerButton;
    this.cameraId = load(CAM_KEY);
    this.micId = load(MIC_KEY);
    this.stream = null;
    this.pending = null; // the running acquire()
    this.problem = null; // i18n key of the last device problem, or null
    this.heard = false;
    this._ctx = null;
    this._timer = null;
    this._toneCtx = null;
    this._want = { video: true, audio: true };

    cameraSelect.addEventListener('change', () => {
      this.cameraId = cameraSelect.value;
      save(CAM_KEY, this.cameraId);
      if (this.stream) this.acquire(this._want);
    });
    micSelect.addEventListener('change', () => {
      this.micId = micSelect.value;
      save(MIC_KEY, this.micId);
      if (this.stream) this.acquire(this._want);
    });
    speakerButton.addEventListener('click', () => this.playTone());
    // Browsers start audio contexts suspended until the person does something on the page.
    const resume = () => {
      if (this._ctx && this._ctx.state === 'suspended') this._ctx.resume().catch(() => {});
    };
    addEventListener('pointerdown', resume, true);
    addEventListener('keydown', resume, true);
    if (navigator.mediaDevices && navigator.mediaDevices.addEventListener) {
      navigator.mediaDevices.addEventListener('devicechange', () => this.listDevices());
    }
  }

  constraints(kind) {
    const id = kind === 'video' ? this.cameraId : this.micId;
    return id ? { deviceId: { exact: id } } : true;
  }

  /** Ask for camera and/or microphone; never throws; sets this.problem. */
  acquire(want = { video: true, audio: true }) {
    this._want = want;
    const run = (this.pending || Promise.resolve()).then(() => this._acquire(want));
    this.pending = run;
    run.finally(() => { if (this.pending === run) this.pending = null; });
    return run;
  }

  async _acquire(want) {
    this.stop();
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      this.setProblem('dev.unsupported');
      return null;
    }
    const get = (video, audio) => navigator.mediaDevices.getUserMedia({
      video: video ? this.constraints('video') : false,
      audio: audio ? this.constraints('audio') : false,
    });
    let stream = null;
    let problem = null;
    try {
      stream = await get(want.video, want.audio);
    } catch (err) {
      if (err.name === 'OverconstrainedError') {
        // A remembered device is gone: forget it and try the default ones.
        this.cameraId = ''; this.micId = ''; save(CAM_KEY, ''); save(MIC_KEY, '');
        try { stream = await get(want.video, want.audio); } catch (e2) { err = e2; }
      }
      if (!stream && err.name === 'NotAllowedError') problem = 'dev.denied';
      else if (!stream) {
        // One of the two may still work (e.g. a laptop without a camera).
        const parts = [];
        for (const kind of ['video', 'audio']) {
          if (!want[kind]) continue;
          try { parts.push(...(await get(kind === 'video', kind === 'audio')).getTracks()); } catch { /* missing */ }
        }
        if (parts.length) {
          stream = new MediaStream(parts);
          problem = stream.getVideoTracks().length ? 'dev.no_mic' : 'dev.no_camera';
        } else {
          problem = { NotFoundError: 'dev.none', NotReadableError: 'dev.busy' }[err.name] || 'dev.failed';
        }
      }
    }
    this.stream = stream;
    this.setProblem(problem);
    this.video.srcObject = stream && stream.getVideoTracks().length ? stream : null;
    this.video.hidden = !this.video.srcObject;
    if (this.video.srcObject) this.video.play().catch(() => {});
    this.startMeter();
    await this.listDevices();
    return stream;
  }

  setProblem(key) {
    this.problem = key;
    this.render();
  }

  /** Re-render texts (also on a language change). */
  render() {
    this.message.hidden = !this.problem;
    this.message.textContent = this.problem ? t(this.problem) : '';
    this.renderMeterText();
    this.fillSelect(this.cameraSelect, 'videoinput', this.cameraId, 'prejoin.camera_n');
    this.fillSelect(this.micSelect, 'audioinput', this.micId, 'prejoin.microphone_n');
  }

  async listDevices() {
    try {
      this._devices = await navigator.mediaDevices.enumerateDevices();
    } catch {
      this._devices = [];
    }
    this.render();
  }

  fillSelect(select, kind, chosen, fallbackKey) {
    const list = (this._devices || []).filter((d) => d.kind === kind && d.deviceId);
    const current = this.stream && this.stream.getTracks().find((tr) => tr.kind === (kind === 'videoinput' ? 'video' : 'audio'));
    const activeId = current && current.getSettings ? current.getSettings().deviceId : chosen;
    select.replaceChildren();
    if (!list.length) {
      const o = document.createElement('option');
      o.value = '';
      o.textContent = t('prejoin.no_device');
      select.append(o);
      select.disabled = true;
      return;
    }
    select.disabled = false;
    list.forEach((d, i) => {
      const o = document.createElement('option');
      o.value = d.deviceId;
      o.textContent = d.label || t(fallbackKey, { n: i + 1 });
      select.append(o);
    });
    if (list.some((d) => d.deviceId === activeId)) select.value = activeId;
  }

  startMeter() {
    this.stopMeter();
    const track = this.stream && this.stream.getAudioTracks()[0];
    this.meter.parentElement.classList.toggle('no-mic', !track);
    if (!track) { this.setLevel(0); return; }
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) return;
    const ctx = new Ctx();
    const source = ctx.createMediaStreamSource(new MediaStream([track]));
    const analyser = ctx.createAnalyser();
    analyser.fftSize = 1024;
    source.connect(analyser);
    const buf = new Float32Array(analyser.fftSize);
    this._ctx = ctx;
    this.heard = false;
    let shown = -1;
    this._timer = setInterval(() => {
      analyser.getFloatTimeDomainData(buf);
      let sum = 0;
      for (const v of buf) sum += v * v;
      const rms = Math.sqrt(sum / buf.length);
      const db = 20 * Math.log10(rms || 1e-8);
      const level = Math.max(0, Math.min(100, Math.round(((db + 60) / 60) * 100)));
      this.setLevel(level);
      if (level > 15 && !this.heard) { this.heard = true; this.renderMeterText(); }
      const rounded = Math.round(level / 10) * 10;
      if (rounded !== shown) {
        shown = rounded;
        this.meter.setAttribute('aria-valuenow', String(rounded));
        this.meter.setAttribute('aria-valuetext', t('prejoin.meter_value', { n: rounded }));
      }
    }, 100);
  }

  setLevel(level) {
    this.meterBar.style.width = `${level}%`;
    if (level === 0) {
      this.meter.setAttribute('aria-valuenow', '0');
      this.meter.setAttribute('aria-valuetext', t('prejoin.meter_value', { n: 0 }));
    }
  }

  renderMeterText() {
    const hasMic = this.stream && this.stream.getAudioTracks().length;
    this.meterText.textContent = !hasMic ? t('prejoin.meter_none')
      : this.heard ? t('prejoin.meter_ok') : t('prejoin.meter_speak');
  }

  stopMeter() {
    clearInterval(this._timer);
    this._timer = null;
    if (this._ctx) this._ctx.close().catch(() => {});
    this._ctx = null;
  }

  /** A 1 s, 440 Hz tone with soft edges. */
  async playTone() {
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) return;
    this._toneCtx = this._toneCtx || new Ctx();
    const ctx = this._toneCtx;
    await ctx.resume().catch(() => {});
    const osc = ctx.createOscillator();
    const gain = ctx.createGain();
    const now = ctx.currentTime;
    osc.type = 'sine';
    osc.frequency.value = 440;
    gain.gain.setValueAtTime(0, now);
    gain.gain.linearRampToValueAtTime(0.3, now + 0.05);
    gain.gain.setValueAtTime(0.3, now + 0.9);
    gain.gain.linearRampToValueAtTime(0, now + 1);
    osc.connect(gain).connect(ctx.destination);
    osc.start(now);
    osc.stop(now + 1);
  }

  /** Hand the tracks over (the caller owns them now) and stop the test. */
  take() {
    const stream = this.stream;
    this.stream = null;
    this.stopMeter();
    this.video.srcObject = null;
    return stream;
  }

  stop() {
    this.stopMeter();
    if (this.stream) for (const tr of this.stream.getTracks()) tr.stop();
    this.stream = null;
    this.video.srcObject = null;
  }
}
