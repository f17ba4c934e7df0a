// Small helpers shared by the node scripts and the page (so: no node-only imports here):
// an inbox to wait on with a deadline (no sleeps), a WAV reader. Node-only: node_lib.mjs.

/** A queue of values; next() resolves with the next one matching, or rejects at the deadline
 * (scaled by Inbox.factor: ELEVENCONV_TESTS_TIMEOUT_FACTOR, as the Python tests' waits). */
export class Inbox {
  static factor = Number((globalThis.process && globalThis.process.env.ELEVENCONV_TESTS_TIMEOUT_FACTOR) || 1);

  constructor(name) {
    this.name = name;
    this.items = [];
    this.all = [];
    this.waiters = [];
  }

  push(value) {
    this.all.push(value);
    for (const w of this.waiters) {
      if (w.match(value)) {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        clearTimeout(w.timer);
        w.resolve(value);
        return;
      }
    }
    this.items.push(value);
  }

  /** Forget what arrived so far: next() waits for something new. */
  drain() {
    this.items.length = 0;
  }

  next(timeoutMs = 10000, match = () => true, what = "") {
    const i = this.items.findIndex(match);
    if (i >= 0) return Promise.resolve(this.items.splice(i, 1)[0]);
    timeoutMs *= Inbox.factor;
    return new Promise((resolve, reject) => {
      const w = { match, resolve };
      w.timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        reject(new Error(`no ${what || this.name} within ${timeoutMs} ms; seen: ${JSON.stringify(this.all).slice(0, 800)}`));
      }, timeoutMs);
      this.waiters.push(w);
    });
  }
}

/** The samples of a PCM16 WAV file's "data" chunk, as a Buffer. */
export function wavData(buffer) {
  let offset = 12;
  while (offset + 8 <= buffer.length) {
    const id = buffer.toString("ascii", offset, offset + 4);
    const size = buffer.readUInt32LE(offset + 4);
    if (id === "data") return buffer.subarray(offset + 8, offset + 8 + size);
    offset += 8 + size + (size % 2);
  }
  throw new Error("no data chunk in the WAV file");
}
