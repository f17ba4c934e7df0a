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
    asrMetadata: [],
    debugTypes: [],
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
    onAsrInitiationMetadata: (event) => {
      seen.asrMetadata.push(event);
    },
    onDebug: (event) => {
      if (event && event.type) seen.debugTypes.push(event.type);
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
    asrMetadata: seen.asrMetadata,
    debugTypes: seen.debugTypes,
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
    // A public agent: the client's origin is the simulator (wsOrigin = "ws://127.0.0.1:8765").
    const conversation = await Conversation.startSession({
      agentId,
      origin: wsOrigin,
      connectionType: "websocket",
      textOnly: true,
      ...options, // your callbacks (onMessage, onDisconnect, ...) and clientTools
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
    conversation.sendMultimodalMessage({ fileId: "file_c" }); // files only: no text
    await seen.pings.next(); // answered with a pong by the client
    conversation.sendUserMessage("bye");
    out.goodbye = await seen.agent.next();
    out.disconnect = await seen.disconnects.next();
    return { ...out, ...summary(seen) };
  },

  /** Every named callback of the client for the server messages beyond chat: the default
   * agent's rules (guardrail, MCP call approved by onMCPToolApprovalRequest, context usage,
   * rich content answered with its id, attachments, a human operator, reasoning). */
  async events({ wsOrigin, agentId }) {
    const { seen, options } = callbacks();
    const named = {};
    const record = (name) => {
      named[name] = new Inbox(name);
      return (props) => named[name].push(props === undefined ? null : props);
    };
    for (const name of [
      "onGuardrailTriggered", "onMCPToolCall", "onMCPConnectionStatus", "onAgentToolRequest",
      "onAgentToolResponse", "onConversationMetadata", "onContextUsage", "onRichContent",
      "onAgentTyping", "onExternalAgentConnected", "onExternalAgentDisconnected",
      "onAgentReasoningResponsePart", "onAgentChatResponsePart", "onDebug",
    ]) {
      options[name] = record(name);
    }
    const attachments = new Inbox("agent message with attachments");
    const onMessage = options.onMessage;
    options.onMessage = (payload) => {
      onMessage(payload);
      if (payload.attachments) attachments.push(payload.attachments);
    };
    const approvals = new Inbox("onMCPToolApprovalRequest");
    options.onMCPToolApprovalRequest = (toolCall) => {
      approvals.push(toolCall);
      return true; // the client sends mcp_tool_approval_result for us
    };
    const conversation = await Conversation.startSession({
      agentId,
      origin: wsOrigin,
      connectionType: "websocket",
      textOnly: true,
      ...options,
    });
    const out = { greeting: await seen.agent.next() };
    out.mcpStatus = await named.onMCPConnectionStatus.next();

    conversation.sendUserMessage("tell me about the guardrail");
    await named.onGuardrailTriggered.next();
    out.guardrailReply = await seen.agent.next();

    conversation.sendUserMessage("I want a refund");
    out.toolRequest = await named.onAgentToolRequest.next();
    out.approvalRequest = await approvals.next();
    out.mcpStates = [];
    for (;;) {
      const call = await named.onMCPToolCall.next();
      out.mcpStates.push(call.state);
      if (call.state === "success" || call.state === "failure") break;
    }
    out.toolResponse = await named.onAgentToolResponse.next();
    out.mcpReply = await seen.agent.next();

    conversation.sendUserMessage("how many tokens of context did we use?");
    out.contextUsage = await named.onContextUsage.next();
    out.contextReply = await seen.agent.next();

    conversation.sendUserMessage("show me the options");
    out.richContent = await named.onRichContent.next();
    out.richPrompt = await seen.agent.next();
    const choice = out.richContent.props.options[1];
    conversation.sendUserMessage(choice, { richContentId: out.richContent.rich_content_id });
    out.choiceReply = await seen.agent.next();

    conversation.sendUserMessage("please attach the report");
    out.attachments = await attachments.next();
    out.attachReply = await seen.agent.next();

    conversation.sendUserMessage("let me talk to a human");
    await named.onExternalAgentConnected.next();
    out.typing = [await named.onAgentTyping.next(), await named.onAgentTyping.next()];
    out.operatorReply = await seen.agent.next();
    await named.onExternalAgentDisconnected.next();

    conversation.sendUserMessage("think before you answer");
    out.reasoning = [];
    for (;;) {
      const part = await named.onAgentReasoningResponsePart.next();
      out.reasoning.push(part);
      if (part.type === "stop") break;
    }
    out.reasoningReply = await seen.agent.next();
    out.chatParts = named.onAgentChatResponsePart.all.length;

    await conversation.endSession();
    out.disconnect = await seen.disconnects.next();
    out.metadataCallbacks = named.onConversationMetadata.all.length;
    out.unhandled = named.onDebug.all.map((event) => event.type);
    return { ...out, ...summary(seen) };
  },

  /** Private agent: the page asks its own back end for a signed URL, then the user ends. */
  async signed({ agentId }) {
    const { seen, options } = callbacks();
    // A private agent: the page's back end, which holds the API key, asks the simulator for
    // a signed URL (GET /v1/convai/conversation/get-signed-url?agent_id=ID, header xi-api-key).
    const answer = await fetch(`/api/signed-url?agent_id=${encodeURIComponent(agentId)}`);
    const { signed_url: signedUrl } = await answer.json();
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
