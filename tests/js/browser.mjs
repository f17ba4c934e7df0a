// Drive the test page in Debian's headless Chromium (playwright-core; no browser download):
//
//   node browser.mjs '{"chromium": "/usr/bin/chromium", "pageUrl": "http://127.0.0.1:P/index.html",
//                      "scenario": "text", "params": {...}, "fakeAudio": "/tmp/speech.wav"}'
//
// Runs window.harness.run(scenario, params) in the page and prints one JSON line with its
// result plus the page's console output and errors. A fresh profile every run.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { chromium } from "playwright-core";

import { Inbox } from "./lib.mjs";
import { runMain } from "./node_lib.mjs";

runMain(async ({ chromium: executablePath, pageUrl, scenario, params, fakeAudio, timeoutMs: baseTimeoutMs = 45000 }) => {
  const timeoutMs = baseTimeoutMs * Inbox.factor;
  const profile = mkdtempSync(join(tmpdir(), "elevenconv-chromium-"));
  const args = [
    // As the machine's notes say: without these, Chromium's own background connections are
    // refused by the closed network, many at a time.
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    // The page may start audio without a click.
    "--autoplay-policy=no-user-gesture-required",
  ];
  if (fakeAudio) {
    args.push(
      "--use-fake-device-for-media-stream",
      "--use-fake-ui-for-media-stream",
      // %noloop: the user says it once, then the microphone is silent.
      `--use-file-for-fake-audio-capture=${fakeAudio}%noloop`,
    );
  }
  // launchPersistentContext passes --user-data-dir=<profile> (a new empty folder).
  const context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    args,
    timeout: 30000 * Inbox.factor,
  });
  const consoleLines = [];
  const pageErrors = [];
  try {
    const page = context.pages()[0] ?? (await context.newPage());
    page.on("console", (msg) => consoleLines.push(`${msg.type()}: ${msg.text()}`));
    page.on("pageerror", (error) => pageErrors.push(String(error)));
    page.setDefaultTimeout(timeoutMs);
    await page.goto(pageUrl);
    await page.waitForFunction(() => window.harness && window.harness.ready);
    const result = await page.evaluate(
      ([name, p, ms, factor]) =>
        Promise.race([
          window.harness.run(name, p, factor),
          new Promise((_, reject) => setTimeout(() => reject(new Error(`scenario ${name}: no result within ${ms} ms`)), ms)),
        ]),
      [scenario, params, timeoutMs, Inbox.factor],
    );
    return { result, console: consoleLines, pageErrors, userAgent: await page.evaluate(() => navigator.userAgent) };
  } catch (error) {
    throw new Error(`${error}\n--- page console\n${consoleLines.join("\n")}\n--- page errors\n${pageErrors.join("\n")}`);
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  }
});
