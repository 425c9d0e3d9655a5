// An MCP client (the official TypeScript SDK over Streamable HTTP) driven line by line for
// tests/tests/gateway_mcp.rs: each line on stdin is a JSON command, each answer one JSON line
// on stdout ({ok: true, ...} or {ok: false, error, code}). Notifications the server sends are
// counted, so the test can wait for them.
//
//   {"op": "connect", "url": "...", "token": "..."}     -> {ok, protocolVersion, serverInfo, capabilities, instructions, sessionId}
//   {"op": "list"}                                        -> {ok, tools}
//   {"op": "call", "name": "...", "arguments": {...}}     -> {ok, result}
//   {"op": "waitListChanged", "after": N, "timeoutMs": M}-> {ok, count}  (count > N, or ok: false on timeout)
//   {"op": "close"}                                       -> {ok}
import { createInterface } from "node:readline";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { ToolListChangedNotificationSchema } from "@modelcontextprotocol/sdk/types.js";

let client;
let transport;
let listChanged = 0;
let waiters = [];

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function fail(e) {
  out({ ok: false, error: String(e && e.message ? e.message : e), code: e && e.code !== undefined ? e.code : null });
}

async function handle(cmd) {
  switch (cmd.op) {
    case "connect": {
      client = new Client({ name: "oauth3-tests", version: "1.0.0" }, { capabilities: {} });
      client.setNotificationHandler(ToolListChangedNotificationSchema, () => {
        listChanged += 1;
        const ready = waiters.filter((w) => listChanged > w.after);
        waiters = waiters.filter((w) => listChanged <= w.after);
        for (const w of ready) w.resolve();
      });
      const headers = cmd.token ? { Authorization: `Bearer ${cmd.token}` } : {};
      transport = new StreamableHTTPClientTransport(new URL(cmd.url), { requestInit: { headers } });
      await client.connect(transport);
      return {
        ok: true,
        protocolVersion: transport.protocolVersion ?? null,
        sessionId: transport.sessionId ?? null,
        serverInfo: client.getServerVersion(),
        capabilities: client.getServerCapabilities(),
        instructions: client.getInstructions() ?? null,
      };
    }
    case "list": {
      const r = await client.listTools();
      return { ok: true, tools: r.tools };
    }
    case "call": {
      const r = await client.callTool({ name: cmd.name, arguments: cmd.arguments ?? {} }, undefined, {
        timeout: cmd.timeoutMs ?? 120000,
      });
      return { ok: true, result: r };
    }
    case "waitListChanged": {
      const after = cmd.after ?? 0;
      if (listChanged > after) return { ok: true, count: listChanged };
      await new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`no tools/list_changed within ${cmd.timeoutMs} ms`)), cmd.timeoutMs ?? 10000);
        waiters.push({ after, resolve: () => { clearTimeout(t); resolve(); } });
      });
      return { ok: true, count: listChanged };
    }
    case "count":
      return { ok: true, count: listChanged };
    case "close":
      if (transport) await transport.terminateSession().catch(() => {});
      if (client) await client.close();
      return { ok: true };
    default:
      throw new Error(`unknown op ${cmd.op}`);
  }
}

const rl = createInterface({ input: process.stdin });
for await (const line of rl) {
  if (!line.trim()) continue;
  try {
    out(await handle(JSON.parse(line)));
  } catch (e) {
    fail(e);
  }
}
process.exit(0);
