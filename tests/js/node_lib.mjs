// Node-only helpers for the scripts: run one scenario and print its result line, or serve
// one scenario per stdin line (the tests' module-wide worker).
import { createInterface } from "node:readline";

import { Inbox } from "./lib.mjs";

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
