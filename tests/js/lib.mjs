// Small helpers shared by the node scripts (and the page): an inbox to wait on with a
// deadline (no sleeps), a WAV reader, the result line.

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

/** Run main(params) and print its result as one JSON line; exit 1 on failure. */
export async function runMain(main) {
  const params = JSON.parse(process.argv[2] || "{}");
  const deadline = setTimeout(() => {
    console.log(JSON.stringify({ ok: false, error: "script deadline exceeded" }));
    process.exit(1);
  }, (params.deadlineMs || 60000) * Inbox.factor);
  try {
    const result = await main(params);
    console.log(JSON.stringify({ ok: true, ...result }));
    clearTimeout(deadline);
    process.exit(0);
  } catch (error) {
    console.log(JSON.stringify({ ok: false, error: String(error && error.stack || error) }));
    process.exit(1);
  }
}

/** Serve main(params) for each JSON line on stdin, one at a time, answering one JSON line
 * each (a worker the Python tests keep for a module: node and the SDK load once). */
export async function serveLines(main) {
  const { createInterface } = await import("node:readline");
  for await (const line of createInterface({ input: process.stdin })) {
    if (!line.trim()) continue;
    const params = JSON.parse(line);
    let timer;
    const deadline = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error("scenario deadline exceeded")), (params.deadlineMs || 60000) * Inbox.factor);
    });
    let reply;
    try {
      reply = { ok: true, ...(await Promise.race([main(params), deadline])) };
    } catch (error) {
      reply = { ok: false, error: String((error && error.stack) || error) };
    } finally {
      clearTimeout(timer);
    }
    process.stdout.write(JSON.stringify(reply) + "\n");
  }
  process.exit(0);
}
