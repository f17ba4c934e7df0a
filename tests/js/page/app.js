// The browser client (@elevenlabs/client, unmodified) against the simulator, bundled by
// esbuild into app.bundle.js (tests/fixtures_official.py) and driven by browser.mjs:
//
//   await window.harness.run("text", {wsOrigin, apiOrigin, agentId})  // -> what it saw
//
// The page is served from another origin than the simulator, like a real front end; its
// own server plays the app's back end (/api/signed-url). Every wait has a deadline.
import { Conversation } from "@elevenlabs/client";

import { Inbox } from "../lib.mjs";

const log = (text) => {
  const item = document.createElement("li");
  item.textContent = text;
  document.getElementById("log").appendChild(item);
};

/** Options with every callback the scenarios need, recorded into inboxes. */
function callbacks() {
  const seen = {
    agent: new Inbox("agent message"),
    user: new Inbox("user message"),
    toolCalls: new Inbox("client tool call"),
    interruptions: new Inbox("interruption"),
    corrections: new Inbox("agent response correction"),
    audio: new Inbox("agent audio"),
    modes: new Inbox("mode change"),
    feedback: new Inbox("can-send-feedback change"),
    disconnects: new Inbox("disconnect"),
    pings: new Inbox("ping"),
    errors: [],
    statuses: [],
    vadScores: 0,
    audioBytes: 0,
    maxOutputVolume: 0,
  };
  const options = {
    clientTools: {
      get_current_time: async (parameters) => {
        seen.toolCalls.push(parameters);
        return "12:34";
      },
    },
    onMessage: ({ message, role }) => {
      log(`${role}: ${message}`);
      (role === "agent" ? seen.agent : seen.user).push(message);
    },
    onStatusChange: ({ status }) => {
      seen.statuses.push(status);
      document.getElementById("status").textContent = status;
    },
    onModeChange: ({ mode }) => seen.modes.push(mode),
    onCanSendFeedbackChange: ({ canSendFeedback }) => seen.feedback.push(canSendFeedback),
    onInterruption: (event) => seen.interruptions.push(event),
    onAgentResponseCorrection: (event) => seen.corrections.push(event),
    onAudio: (base64) => {
      seen.audioBytes += (base64.length * 3) / 4;
      seen.audio.push(base64.length);
    },
    onVadScore: () => {
      seen.vadScores += 1;
    },
    onPing: (event) => seen.pings.push(event.event_id),
    onError: (message) => seen.errors.push(String(message)),
    onDisconnect: (details) => seen.disconnects.push(details),
  };
  return { seen, options };
}

function summary(seen) {
  return {
    agentMessages: seen.agent.all,
    userMessages: seen.user.all,
    modes: seen.modes.all,
    statuses: seen.statuses,
    feedbackChanges: seen.feedback.all,
    pings: seen.pings.all.length,
    vadScores: seen.vadScores,
    audioBytes: seen.audioBytes,
    maxOutputVolume: seen.maxOutputVolume,
    errors: seen.errors,
  };
}

const scenarios = {
  /** Public agent, text: greeting, reply, client tool, feedback, contextual update, user
   * activity, multimodal message, then "bye": the agent ends the call. */
  async text({ wsOrigin, agentId }) {
    const { seen, options } = callbacks();
    const conversation = await Conversation.startSession({
      agentId,
      origin: wsOrigin,
      connectionType: "websocket",
      textOnly: true,
      ...options,
    });
    const out = { conversationId: conversation.getId() };
    out.greeting = await seen.agent.next();
    conversation.sendUserMessage("hello");
    out.reply = await seen.agent.next();
    conversation.sendUserMessage("what time is it?");
    out.toolParams = await seen.toolCalls.next();
    out.toolReply = await seen.agent.next();
    await seen.feedback.next(10000, (can) => can === true, "canSendFeedback: true");
    conversation.sendFeedback(true);
    conversation.sendContextualUpdate("The user opened the pricing page.");
    conversation.sendUserActivity();
    conversation.sendMultimodalMessage({ text: "look at these", fileIds: ["file_a", "file_b"] });
    out.multimodalReply = await seen.agent.next();
    await seen.pings.next(); // answered with a pong by the client
    conversation.sendUserMessage("bye");
    out.goodbye = await seen.agent.next();
    out.disconnect = await seen.disconnects.next();
    return { ...out, ...summary(seen) };
  },

  /** Private agent: the page asks its own back end for a signed URL, then the user ends. */
  async signed({ agentId }) {
    const answer = await fetch(`/api/signed-url?agent_id=${encodeURIComponent(agentId)}`);
    if (!answer.ok) throw new Error(`back end answered ${answer.status}`);
    const { signed_url: signedUrl } = await answer.json();
    const { seen, options } = callbacks();
    const conversation = await Conversation.startSession({ signedUrl, textOnly: true, ...options });
    const out = { conversationId: conversation.getId() };
    out.greeting = await seen.agent.next();
    conversation.sendUserMessage("hello");
    out.reply = await seen.agent.next();
    await conversation.endSession();
    out.disconnect = await seen.disconnects.next();
    return { ...out, ...summary(seen) };
  },

  /** A front-end team's dev setup (`elevenconv simulate --agent ID:private --api-key K`):
   * the page itself fetches a signed URL from the simulator, cross-origin (CORS preflight
   * for the xi-api-key header), then text: greeting, tool, feedback, the user ends. */
  async frontend({ apiOrigin, agentId, apiKey }) {
    const answer = await fetch(
      `${apiOrigin}/v1/convai/conversation/get-signed-url?agent_id=${encodeURIComponent(agentId)}`,
      { headers: { "xi-api-key": apiKey } },
    );
    if (!answer.ok) throw new Error(`get-signed-url answered ${answer.status}`);
    const { signed_url: signedUrl } = await answer.json();
    const { seen, options } = callbacks();
    const conversation = await Conversation.startSession({ signedUrl, textOnly: true, ...options });
    const out = { conversationId: conversation.getId() };
    out.greeting = await seen.agent.next();
    conversation.sendUserMessage("what time is it?");
    out.toolParams = await seen.toolCalls.next();
    out.toolReply = await seen.agent.next();
    await seen.feedback.next(10000, (can) => can === true, "canSendFeedback: true");
    conversation.sendFeedback(false);
    await conversation.endSession();
    out.disconnect = await seen.disconnects.next();
    return { ...out, ...summary(seen) };
  },

  /** A conversation token fetched cross-origin from the API, sent as `authorization`
   * (the bearer.<token> subprotocol next to convai). */
  async token({ wsOrigin, apiOrigin, agentId, token }) {
    let authorization = token;
    if (authorization === undefined) {
      const answer = await fetch(`${apiOrigin}/v1/convai/conversation/token?agent_id=${encodeURIComponent(agentId)}`);
      if (!answer.ok) throw new Error(`token endpoint answered ${answer.status}`);
      authorization = (await answer.json()).token;
    }
    const { seen, options } = callbacks();
    let conversation;
    try {
      conversation = await Conversation.startSession({
        agentId,
        origin: wsOrigin,
        authorization,
        connectionType: "websocket",
        textOnly: true,
        ...options,
      });
    } catch (error) {
      return { refused: true, error: String(error), ...summary(seen) };
    }
    const out = { refused: false, conversationId: conversation.getId() };
    out.greeting = await seen.agent.next();
    await conversation.endSession();
    out.disconnect = await seen.disconnects.next();
    return { ...out, ...summary(seen) };
  },

  /** Voice over WebSocket: the fake microphone plays a WAV of speech; the simulator hears
   * it, barges in and answers; the agent's audio is played by the client's worklet. */
  async voice({ wsOrigin, agentId }) {
    const { seen, options } = callbacks();
    const conversation = await Conversation.startSession({
      agentId,
      origin: wsOrigin,
      connectionType: "websocket",
      ...options,
    });
    // Sample the output analyser: proof that the audio really went through the player.
    const meter = setInterval(() => {
      seen.maxOutputVolume = Math.max(seen.maxOutputVolume, conversation.getOutputVolume());
    }, 20);
    try {
      const out = { conversationId: conversation.getId() };
      out.greeting = await seen.agent.next(15000);
      out.interruption = await seen.interruptions.next(30000);
      out.correction = await seen.corrections.next(10000);
      out.transcript = await seen.user.next(20000);
      out.reply = await seen.agent.next(15000);
      // The answer is spoken too: wait for a second of its audio (PCM16 16 kHz).
      const audioAtReply = seen.audioBytes;
      seen.audio.drain();
      while (seen.audioBytes < audioAtReply + 32000) await seen.audio.next(15000);
      out.audioAfterReply = seen.audioBytes - audioAtReply;
      await seen.modes.next(15000, (mode) => mode === "speaking", "mode: speaking");
      await conversation.endSession();
      out.disconnect = await seen.disconnects.next();
      return { ...out, ...summary(seen) };
    } finally {
      clearInterval(meter);
    }
  },
};

window.harness = {
  ready: true,
  async run(name, params, timeoutFactor = 1) {
    Inbox.factor = timeoutFactor;
    const scenario = scenarios[name];
    if (!scenario) throw new Error(`unknown scenario ${name}`);
    return scenario(params);
  },
};
document.getElementById("status").textContent = "ready";
