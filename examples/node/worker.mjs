// A Node worker that takes jobs only while the Big Red Button lets it: paused at once when the
// brake is pulled, released gradually after, counted by `brb pause` ("N/N workers paused").
//
//   (cd sdk/node && npm ci && npm run build)
//   BRB_URL=http://127.0.0.1:7070 BRB_TOKEN_FILE=~/.local/share/big-red-button/admin-token \
//     node examples/node/worker.mjs
//
// In your own project the import is `from "@big-red-button/gate"` (see sdk/node/README.md).
import { Gate } from "../../sdk/node/dist/index.js";

// URLs, token, CA and client certificate come from BRB_URL, BRB_TOKEN / BRB_TOKEN_FILE,
// BRB_CA_FILE, BRB_CLIENT_CERT / BRB_CLIENT_KEY.
const SLOTS = 4;
const gate = new Gate({ switch: "workers", maxConcurrency: SLOTS });
gate.on("change", (c) =>
  console.log(
    c.open
      ? `running (version ${c.version}${c.admittedFraction < 1 ? `, ramp at ${Math.round(c.admittedFraction * 100)}%` : ""})`
      : `paused (version ${c.version}, by ${c.changedBy ?? "?"}${c.cause === "policy" ? ", control plane unreachable" : ""})`,
  ),
);

// A stand-in for your queue (BullMQ, a database table, SQS...): a job is taken from it only
// once the gate has admitted one, so nothing is fetched while paused.
let seq = 0;
const queue = { next: async () => ({ id: ++seq, work: 50 + Math.random() * 100 }) };
async function handle(job) {
  await new Promise((r) => setTimeout(r, job.work));
  if (job.id % 20 === 0) console.log(`processed ${gate.processed} jobs`);
}

let stopping = false;
async function slot() {
  while (!stopping) {
    let permit;
    try {
      permit = await gate.acquire(); // waits while paused, rests the slot during a ramp
    } catch (e) {
      if (e.code === "closed") return; // shutting down
      throw e;
    }
    try {
      await handle(await queue.next());
    } finally {
      permit.release(); // counted, reported (draining → paused after a pause)
    }
  }
}

for (const signal of ["SIGINT", "SIGTERM"]) {
  process.once(signal, () => {
    stopping = true;
    console.log(`${signal}: finishing the jobs in flight`);
    void gate.close();
  });
}
console.log(`worker ${gate.workerId}: ${SLOTS} slots on switch "${gate.switchName}"`);
await Promise.all(Array.from({ length: SLOTS }, slot));
console.log("stopped");
