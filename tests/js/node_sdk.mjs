// The official Node SDK (@elevenlabs/elevenlabs-js, its Conversation, unmodified) through
// one scenario against the simulator. Run by tests/test_official_clients.py:
//
//   node node_sdk.mjs '{"scenario": "text", "baseUrl": "http://127.0.0.1:PORT", ...}'
//   node node_sdk.mjs --serve        # the same, for each JSON line on stdin
//
// Prints one JSON line: {"ok": true, ...what the SDK saw} or {"ok": false, "error": ...}.
// Every wait has a deadline (Inbox.next); nothing sleeps.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

import { Inbox, wavData } from "./lib.mjs";
import { runMain, serveLines } from "./node_lib.mjs";

const require = createRequire(import.meta.url);
const { ElevenLabsClient } = require("@elevenlabs/elevenlabs-js");
const { Conversation, ClientTools, AudioInterface } = require(
  "@elevenlabs/elevenlabs-js/api/resources/conversationalAi/conversation",
);
const { DefaultWebSocketFactory } = require(
  "@elevenlabs/elevenlabs-js/api/resources/conversationalAi/conversation/interfaces/WebSocketInterface",
);

const PRODUCTION_WS = "wss://api.elevenlabs.io";

/** The SDK builds public agents' URLs on the production host whatever the client's base
 * URL: its webSocketFactory option is the documented way to point it elsewhere. */
class LocalWebSocketFactory extends DefaultWebSocketFactory {
  constructor(wsOrigin) {
    super();
    this.wsOrigin = wsOrigin;
  }

  create(url, options) {
    return super.create(url.startsWith(PRODUCTION_WS) ? this.wsOrigin + url.slice(PRODUCTION_WS.length) : url, options);
  }
}

/** No device: records what the SDK plays; the "microphone" says `speech` once the
 * agent's voice is heard (the user barges in), then 1 s of silence. */
class SpeakingMic extends AudioInterface {
  constructor(speech) {
    super();
    this.speech = speech;
    this.played = 0;
    this.playedChunks = new Inbox("agent audio");
    this.interruptions = new Inbox("interrupt()");
    this.input = null;
    this.spoke = false;
  }

  start(inputCallback) {
    this.input = inputCallback;
  }

  stop() {
    this.input = null;
  }

  output(audio) {
    this.played += audio.length;
    this.playedChunks.push(audio.length);
    if (!this.spoke && this.input && this.speech) {
      this.spoke = true;
      const speech = Buffer.concat([this.speech, Buffer.alloc(32000)]);
      for (let i = 0; i < speech.length; i += 3200) this.input(speech.subarray(i, i + 3200));
    }
  }

  interrupt() {
    this.interruptions.push(true);
  }
}

function makeConversation(params, { audioInterface = new SpeakingMic(null), requiresAuth = false, apiKey } = {}) {
  const seen = {
    responses: new Inbox("agent response"),
    transcripts: new Inbox("user transcript"),
    corrections: new Inbox("agent response correction"),
    toolCalls: new Inbox("client tool call"),
    messages: new Inbox("message"),
    ended: new Inbox("session_ended"),
    errors: [],
  };
  const tools = new ClientTools();
  tools.register("get_current_time", (parameters) => {
    seen.toolCalls.push(parameters);
    return "12:34";
  });
  const client = new ElevenLabsClient({ apiKey: apiKey ?? params.apiKey, baseUrl: params.baseUrl });
  const conversation = new Conversation({
    client,
    agentId: params.agentId,
    requiresAuth,
    audioInterface,
    clientTools: tools,
    webSocketFactory: new LocalWebSocketFactory(params.baseUrl.replace(/^http/, "ws")),
    config: params.textOnly
      ? { extraBody: {}, conversationConfigOverride: { conversation: { text_only: true } }, dynamicVariables: {} }
      : undefined,
    callbackAgentResponse: (text) => seen.responses.push(text),
    callbackUserTranscript: (text) => seen.transcripts.push(text),
    callbackAgentResponseCorrection: (original, corrected) => seen.corrections.push({ original, corrected }),
    callbackMessageReceived: (message) => seen.messages.push(message.type),
  });
  conversation.on("session_ended", (conversationId, code, reason) => seen.ended.push({ conversationId, code, reason }));
  conversation.on("error", (error) => seen.errors.push(String(error)));
  return { conversation, seen };
}

const scenarios = {
  /** Greeting, reply, tool round trip, contextual update, user activity, multimodal
   * message, pings, then "bye": the agent's end_call closes with 1000. */
  async text(params) {
    const { conversation, seen } = makeConversation({ ...params, textOnly: true });
    await conversation.startSession();
    const out = { conversationId: null };
    out.greeting = await seen.responses.next();
    out.conversationId = conversation.getConversationId();
    conversation.sendUserMessage("hello");
    out.reply = await seen.responses.next();
    conversation.sendUserMessage("what time is it?");
    out.toolParams = await seen.toolCalls.next();
    out.toolReply = await seen.responses.next();
    conversation.sendContextualUpdate("The user opened the pricing page.");
    conversation.registerUserActivity();
    conversation.sendMultimodalMessage({ text: "look at these", fileIds: ["file_a", "file_b"] });
    out.multimodalReply = await seen.responses.next();
    await seen.messages.next(10000, (t) => t === "ping", "ping");
    conversation.sendUserMessage("bye");
    out.goodbye = await seen.responses.next();
    out.ended = await seen.ended.next(10000, (e) => e.code !== undefined, "close");
    out.errors = seen.errors;
    return out;
  },

  /** The agent greets by voice; the "microphone" barges in with real speech. */
  async voice(params) {
    const mic = new SpeakingMic(wavData(readFileSync(params.speechWav)));
    const { conversation, seen } = makeConversation(params, { audioInterface: mic });
    await conversation.startSession();
    const out = {};
    out.greeting = await seen.responses.next();
    await mic.interruptions.next(20000);
    out.correction = await seen.corrections.next();
    out.transcript = await seen.transcripts.next(15000);
    const playedBeforeReply = mic.played;
    out.reply = await seen.responses.next();
    // The answer is spoken too: its audio reaches output() (filtered by event id).
    while (mic.played < playedBeforeReply + 32000) await mic.playedChunks.next(10000);
    out.playedBeforeReply = playedBeforeReply;
    out.played = mic.played;
    conversation.endSession();
    out.ended = await seen.ended.next(10000, (e) => e.code !== undefined, "close");
    out.errors = seen.errors;
    return out;
  },

  /** requiresAuth: the SDK fetches a signed URL with the API key, then connects. */
  async signed(params) {
    const { conversation, seen } = makeConversation({ ...params, textOnly: true }, { requiresAuth: true });
    await conversation.startSession();
    const out = {};
    out.greeting = await seen.responses.next();
    conversation.sendUserMessage("hello");
    out.reply = await seen.responses.next();
    conversation.endSession();
    out.ended = await seen.ended.next(10000, (e) => e.code !== undefined, "close");
    out.errors = seen.errors;
    return out;
  },

  /** A wrong API key: fetching the signed URL fails with 401. */
  async bad_key(params) {
    const { conversation } = makeConversation(params, { requiresAuth: true, apiKey: "wrong-key" });
    try {
      await conversation.startSession();
    } catch (error) {
      return { statusCode: error.statusCode, body: error.body, name: error.constructor.name };
    }
    throw new Error("startSession() succeeded with a wrong API key");
  },
};

async function run(params) {
  const scenario = scenarios[params.scenario];
  if (!scenario) throw new Error(`unknown scenario ${params.scenario}`);
  return scenario(params);
}

// `node node_sdk.mjs --serve`: one scenario per stdin line (the tests' module-wide worker).
if (process.argv[2] === "--serve") serveLines(run);
else runMain(run);
