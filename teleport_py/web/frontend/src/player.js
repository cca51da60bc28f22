// Plays an asciicast v2 document (what /web/api/recordings/<id>/asciicast
// serves) into an xterm.js terminal: play, pause, seek, speed; "r" events
// resize the terminal as recorded, "m" markers (port-forwards, exit status)
// go to a list beside it, never into the terminal.

export function parseAsciicast(text) {
  const lines = text.split("\n").filter((line) => line.length > 0);
  if (!lines.length) throw new Error("the recording is empty");
  const header = JSON.parse(lines[0]);
  if (header.version !== 2) throw new Error("not an asciicast v2 recording");
  const events = lines.slice(1).map((line) => JSON.parse(line));
  const duration = events.length ? events[events.length - 1][0] : 0;
  return { header, events, duration };
}

// The longest wait between two updates of the clock while playing, ms.
const TICK = 100;

export class Player {
  constructor(cast, terminal, hooks) {
    this.cast = cast;
    this.terminal = terminal;
    this.hooks = hooks;
    this.speed = 1;
    this.position = 0; // seconds of recording shown
    this.next = 0; // index of the first event not yet applied
    this.playing = false;
    this.timer = null;
    this.startedAt = 0;
    this.startPosition = 0;
  }

  apply(event) {
    const [, kind, data] = event;
    if (kind === "o") this.terminal.write(data);
    else if (kind === "r") {
      const [cols, rows] = String(data).split("x").map(Number);
      if (cols > 0 && rows > 0) this.terminal.resize(cols, rows);
    } else if (kind === "m") this.hooks.onMarker(event);
  }

  // Everything up to `seconds`, at once, from a blank terminal of the recorded size.
  seek(seconds) {
    const target = Math.max(0, Math.min(seconds, this.cast.duration));
    this.terminal.reset();
    this.terminal.resize(this.cast.header.width, this.cast.header.height);
    this.next = 0;
    this.advanceTo(target);
    if (this.playing) {
      this.startedAt = performance.now();
      this.startPosition = target;
      this.schedule();
    }
  }

  advanceTo(target) {
    const { events } = this.cast;
    while (this.next < events.length && events[this.next][0] <= target) this.apply(events[this.next++]);
    this.position = target;
    this.hooks.onTick(target);
  }

  current() {
    return this.startPosition + ((performance.now() - this.startedAt) / 1000) * this.speed;
  }

  play() {
    if (this.playing) return;
    if (this.position >= this.cast.duration) this.seek(0);
    this.playing = true;
    this.startedAt = performance.now();
    this.startPosition = this.position;
    this.hooks.onState(true);
    this.schedule();
  }

  pause() {
    if (!this.playing) return;
    this.advanceTo(Math.min(this.current(), this.cast.duration));
    this.stop();
  }

  stop() {
    this.playing = false;
    clearTimeout(this.timer);
    this.timer = null;
    this.hooks.onState(false);
  }

  setSpeed(speed) {
    if (this.playing) {
      this.advanceTo(Math.min(this.current(), this.cast.duration));
      this.startedAt = performance.now();
      this.startPosition = this.position;
    }
    this.speed = speed;
    if (this.playing) this.schedule();
  }

  schedule() {
    clearTimeout(this.timer);
    const now = Math.min(this.current(), this.cast.duration);
    this.advanceTo(now);
    const { events } = this.cast;
    if (this.next >= events.length) {
      this.stop();
      return;
    }
    const wait = ((events[this.next][0] - now) / this.speed) * 1000;
    this.timer = setTimeout(() => this.schedule(), Math.max(0, Math.min(wait, TICK)));
  }
}
