// The Socket.IO peer of chat-bench's fan-out scenario (`--protocol socketio`).
//
// A client connects with `auth: {user, rooms: [..]}` (or the same as query
// parameters `user` and `rooms=a,b`) and is joined to those rooms. On
// `send` {room, body} the server emits `message` {room, from, body} to the
// room (the sender included) through the sharded Redis adapter, so every
// Node process of the group delivers to its own sockets. Nothing is stored,
// nothing is sequenced, nothing is acknowledged: this is the plain
// Socket.IO fan-out that our chat servers are compared with.
//
// Usage: node server.js --port 9101 [--redis redis://127.0.0.1:7100,...]
// Env:   SIO_PORT, SIO_REDIS_URLS (comma-separated cluster node URLs; none:
//        in-process adapter only, one process)
// GET /healthz answers 200 once the adapter is connected.
"use strict";

const http = require("node:http");
const { Server } = require("socket.io");

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const port = Number(arg("port", process.env.SIO_PORT || "9101"));
const redisUrls = (arg("redis", process.env.SIO_REDIS_URLS || ""))
  .split(",")
  .map((s) => s.trim())
  .filter(Boolean);

let ready = false;
let connections = 0;
const httpServer = http.createServer((req, res) => {
  if (req.url === "/healthz" || req.url === "/readyz") {
    res.writeHead(ready ? 200 : 503, { "content-type": "application/json" });
    res.end(JSON.stringify({ ready, connections, pid: process.pid }));
    return;
  }
  res.writeHead(404);
  res.end();
});

const io = new Server(httpServer, {
  transports: ["websocket"],
  serveClient: false,
  // Like chat-bench's server: no per-message compression.
  perMessageDeflate: false,
  pingInterval: 20000,
  pingTimeout: 20000,
  maxHttpBufferSize: 64 * 1024,
});

function roomsOf(socket) {
  const { auth, query } = socket.handshake;
  let rooms = (auth && auth.rooms) || query.rooms || [];
  if (typeof rooms === "string") rooms = rooms.split(",");
  return Array.isArray(rooms) ? rooms.filter((r) => typeof r === "string" && r) : [];
}

io.on("connection", (socket) => {
  connections++;
  const { auth, query } = socket.handshake;
  const user = String((auth && auth.user) || query.user || socket.id);
  for (const room of roomsOf(socket)) socket.join(room);
  socket.on("send", (msg) => {
    if (!msg || typeof msg.room !== "string" || typeof msg.body !== "string") return;
    io.to(msg.room).emit("message", { room: msg.room, from: user, body: msg.body });
  });
  socket.on("disconnect", () => {
    connections--;
  });
});

async function main() {
  if (redisUrls.length > 0) {
    const { createCluster } = require("redis");
    const { createShardedAdapter } = require("@socket.io/redis-adapter");
    const rootNodes = redisUrls.map((url) => ({ url }));
    const pubClient = createCluster({ rootNodes });
    const subClient = pubClient.duplicate();
    for (const c of [pubClient, subClient]) {
      c.on("error", (e) => console.error(`[sio:${port}] redis: ${e.message}`));
    }
    await Promise.all([pubClient.connect(), subClient.connect()]);
    io.adapter(createShardedAdapter(pubClient, subClient));
  }
  httpServer.listen(port, "127.0.0.1", () => {
    ready = true;
    console.error(
      `[sio:${port}] listening (pid ${process.pid}, ${
        redisUrls.length ? `sharded Redis adapter over ${redisUrls.length} nodes` : "in-process adapter"
      })`,
    );
  });
}

function shutdown() {
  ready = false;
  io.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);

main().catch((e) => {
  console.error(`[sio:${port}] failed to start: ${e.stack || e}`);
  process.exit(1);
});
