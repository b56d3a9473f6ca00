// Sends sealed records to the audit service with the Node forward client
// (@fluent-org/logger), logged in as a producer: shared key, username, password, acks.
// Usage: node emit.js PORT SHARED_KEY USERNAME PASSWORD MODE < records.ndjson
"use strict";
const { FluentClient } = require("@fluent-org/logger");
const [port, sharedKey, username, password, eventMode] = process.argv.slice(2);
const lines = require("fs").readFileSync(0, "utf8").split("\n").filter((l) => l.trim());
const client = new FluentClient("ffaudit.node", {
  socket: { host: "127.0.0.1", port: Number(port), timeout: 10000 },
  security: { clientHostname: "node-engine", sharedKey, username, password },
  ack: { ackTimeout: 10000 },
  eventMode,
  milliseconds: true,
});
(async () => {
  await Promise.all(lines.map((line) => client.emit(JSON.parse(line))));
  await client.disconnect();
  process.stdout.write(`acked ${lines.length}\n`);
})().catch((err) => {
  process.stderr.write(`refused: ${err && err.message}\n`);
  process.exit(3);
});
