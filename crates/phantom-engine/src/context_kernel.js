// A code context's JavaScript interpreter: a long-lived node inside a persistent
// sandbox, started as `node -e <this file>` by phantom's front end, with the same
// protocol as context_kernel.py: one JSON request per line on stdin, one JSON event
// per line on stdout.
//
//   request: {"id": N, "code": "...", "env": {...}}   or   {"interrupt": true}
//   events:  {"id": N, "type": "stdout"|"stderr", "text": "..."}
//            {"id": N, "type": "result", "text": ..., "is_main_result": true}
//            {"id": N, "type": "error", "name": ..., "value": ..., "traceback": ...}
//            {"id": N, "type": "done", "execution_count": K}
//
// Cells run in one vm context, so globals and top-level `let`/`const`/`class`
// declarations persist between them; a cell's last expression is its result (a
// promise is awaited first; top-level `await` works). Requests are read by a worker
// thread, so that an interrupt arrives while a cell runs: the worker sends SIGINT to
// this process and the cell, run with breakOnSigint, stops with an error.
"use strict";
const { Worker } = require("worker_threads");
const fs = require("fs");
const util = require("util");
const vm = require("vm");

// The reader (a worker thread): whole lines of stdin, forwarded; an interrupt acts
// at once, even while a cell keeps the main thread busy.
const READER = `
const fs = require("fs");
const { parentPort } = require("worker_threads");
let pending = "";
const buf = Buffer.alloc(65536);
for (;;) {
  let n;
  try {
    n = fs.readSync(0, buf, 0, buf.length, null);
  } catch (e) {
    if (e.code === "EAGAIN") continue;
    break;
  }
  if (n === 0) break;
  pending += buf.toString("utf8", 0, n);
  let cut;
  while ((cut = pending.indexOf("\\n")) >= 0) {
    const line = pending.slice(0, cut);
    pending = pending.slice(cut + 1);
    let request;
    try {
      request = JSON.parse(line);
    } catch (e) {
      continue;
    }
    if (request.interrupt) process.kill(process.pid, "SIGINT");
    else parentPort.postMessage(request);
  }
}
parentPort.postMessage(null);
`;

// fd 1 is the channel (the cells' console and process.stdout are events).
const emit = (event) => {
  fs.writeSync(1, JSON.stringify(event) + "\n");
};
let current = null;
let count = 0;

const show = (args) => util.formatWithOptions({ colors: false }, ...args) + "\n";
const out = (kind) => (...args) => {
  emit({ id: current, type: kind, text: show(args) });
};
const sandboxConsole = {
  log: out("stdout"),
  info: out("stdout"),
  debug: out("stdout"),
  dir: (v) => {
    emit({ id: current, type: "stdout", text: util.inspect(v) + "\n" });
  },
  table: out("stdout"),
  error: out("stderr"),
  warn: out("stderr"),
  trace: out("stderr"),
};
// The cells' process.stdout/stderr are events too: fd 1 is the channel.
const writer = (kind) => ({
  write: (chunk) => {
    emit({ id: current, type: kind, text: String(chunk) });
    return true;
  },
  isTTY: false,
});
const cellProcess = Object.create(process, {
  stdout: { value: writer("stdout") },
  stderr: { value: writer("stderr") },
});
const context = vm.createContext({
  console: sandboxConsole,
  require,
  process: cellProcess,
  Buffer,
  setTimeout,
  clearTimeout,
  setInterval,
  clearInterval,
  setImmediate,
  clearImmediate,
  URL,
  TextEncoder,
  TextDecoder,
  fetch: globalThis.fetch,
});
// SIGINT outside a cell does nothing (breakOnSigint handles it inside one).
process.on("SIGINT", () => {});

// A cell with top-level `await` as an async function that returns its last
// expression: the last split (at a `;` or a line end) whose tail compiles as an
// expression; none: the cell's value is undefined.
function asyncCell(code) {
  const text = code.trimEnd().replace(/;$/, "");
  for (let p = text.length - 1; p >= -1; p--) {
    if (p >= 0 && text[p] !== ";" && text[p] !== "\n") continue;
    const last = text.slice(p + 1).trim();
    if (!last) continue;
    const src = "(async () => {" + text.slice(0, p + 1) + "\nreturn (" + last + ");\n})()";
    try {
      new vm.Script(src);
      return src;
    } catch (e) {
      // not an expression there: try an earlier split
    }
  }
  return "(async () => {" + code + "\n})()";
}

async function run(request) {
  count += 1;
  current = request.id;
  for (const [k, v] of Object.entries(request.env || {})) process.env[k] = String(v);
  try {
    const code = request.code || "";
    let value;
    try {
      value = vm.runInContext(code, context, { filename: "<cell>", breakOnSigint: true });
    } catch (e) {
      // `await` at the top level: run the cell as the body of an async function
      // whose last expression statement is returned.
      // (The cell's errors come from the context's realm: compared by name.)
      if (!e || e.name !== "SyntaxError" || !/await/.test(code)) throw e;
      value = vm.runInContext(asyncCell(code), context, {
        filename: "<cell>",
        breakOnSigint: true,
      });
    }
    if (value && typeof value.then === "function") value = await value;
    if (value !== undefined) {
      emit({ id: current, type: "result", text: util.inspect(value), is_main_result: true });
    }
  } catch (e) {
    const isError = e !== null && typeof e === "object" && "message" in e;
    const name = isError ? String(e.name) : "Error";
    const message = isError ? String(e.message) : util.inspect(e);
    const interrupted = /Script execution was interrupted/.test(message);
    emit({
      id: current,
      type: "error",
      name: interrupted ? "KeyboardInterrupt" : name,
      value: message,
      // The cell's frames, not the kernel's.
      traceback: ((isError && e.stack) || name + ": " + message)
        .split("\n")
        .filter((line) => !/\((node:|\[eval\])|at (node:|\[eval\])/.test(line))
        .join("\n"),
    });
  } finally {
    emit({ id: current, type: "done", execution_count: count });
    current = null;
  }
}

const queue = [];
let busy = false;
async function next() {
  if (busy) return;
  busy = true;
  while (queue.length) {
    const request = queue.shift();
    if (request === null) process.exit(0);
    await run(request);
  }
  busy = false;
}
const reader = new Worker(READER, { eval: true });
reader.on("message", (request) => {
  queue.push(request);
  next();
});
emit({ id: null, type: "ready" });
