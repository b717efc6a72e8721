// The web console's backend: same-origin HTTP for requests, SSE read with fetch for live events.

import {
  BackendError,
  type ApiErrorBody,
  type AuditEntry,
  type BreakGlassRequest,
  type CreateResumeRequest,
  type DecideResumeRequest,
  type DrillReport,
  type DrillRequest,
  type DrillStarted,
  type RampControlRequest,
  type Series,
  type ServerInfo,
  type SetStateRequest,
  type Switch,
  type WorkerCounts,
} from "./api";
import type { Backend, ConnectionStatus, LiveEvent } from "./backend";
import { SseParser } from "./sse";

/** How long a read may take before it counts as failed. */
const READ_TIMEOUT_MS = 10_000;
/**
 * The longest silence of a live stream before it counts as dead. The control plane sends a
 * keep-alive on `/api/v1/events` at least every 2 s (and samples every second), so 5 s of
 * nothing means it is frozen or the path to it is, even if the socket does not say so.
 */
export const SILENCE_MS = 5_000;

export class HttpBackend implements Backend {
  readonly source = "web" as const;

  constructor(
    private token: string,
    private base = "",
  ) {}

  private async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    let res: Response;
    try {
      res = await fetch(`${this.base}/api/v1${path}`, {
        method,
        // Reads give up after a while so a frozen control plane cannot hang a refresh. A
        // change is not aborted: its answer, however late, tells the page that it was applied.
        signal: method === "GET" ? AbortSignal.timeout(READ_TIMEOUT_MS) : undefined,
        headers: {
          authorization: `Bearer ${this.token}`,
          ...(body === undefined ? {} : { "content-type": "application/json" }),
        },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      throw new BackendError("unreachable", `cannot reach the control plane (${String(e)})`);
    }
    const text = await res.text();
    if (!res.ok) {
      try {
        const b = JSON.parse(text) as ApiErrorBody;
        throw new BackendError(b.error.code, b.error.message, b.error.current);
      } catch (e) {
        if (e instanceof BackendError) throw e;
        throw new BackendError("protocol", `HTTP ${res.status}`);
      }
    }
    return JSON.parse(text) as T;
  }

  info() {
    return this.call<ServerInfo>("GET", "/info");
  }

  async switches() {
    return (await this.call<{ switches: Switch[] }>("GET", "/switches")).switches;
  }

  setState(name: string, req: SetStateRequest) {
    return this.call<Switch>("PUT", `/switches/${encodeURIComponent(name)}/state`, req);
  }

  rampControl(name: string, req: RampControlRequest) {
    return this.call<Switch>("POST", `/switches/${encodeURIComponent(name)}/ramp`, req);
  }

  requestResume(name: string, req: CreateResumeRequest) {
    return this.call<Switch>("POST", `/switches/${encodeURIComponent(name)}/resume-requests`, req);
  }

  decideResume(name: string, id: number, approve: boolean, req: DecideResumeRequest) {
    const verb = approve ? "approve" : "reject";
    return this.call<Switch>("POST", `/switches/${encodeURIComponent(name)}/resume-requests/${id}/${verb}`, req);
  }

  breakGlass(name: string, req: BreakGlassRequest) {
    return this.call<Switch>("POST", `/switches/${encodeURIComponent(name)}/break-glass`, req);
  }

  drill(name: string, req: DrillRequest) {
    return this.call<DrillStarted>("POST", `/switches/${encodeURIComponent(name)}/drill`, req);
  }

  drillReport(name: string, version: number) {
    return this.call<DrillReport>("GET", `/switches/${encodeURIComponent(name)}/drills/${version}`);
  }

  async audit(limit: number, switchName?: string) {
    const q = switchName ? `&switch=${encodeURIComponent(switchName)}` : "";
    return (await this.call<{ entries: AuditEntry[] }>("GET", `/audit?limit=${limit}${q}`)).entries;
  }

  workers(name: string) {
    return this.call<WorkerCounts>("GET", `/switches/${encodeURIComponent(name)}/workers`);
  }

  async series(sinceUnix: number) {
    return (await this.call<{ series: Series[] }>("GET", `/metrics/series?since=${sinceUnix}`)).series;
  }

  subscribe(onEvent: (e: LiveEvent) => void, onStatus: (s: ConnectionStatus, lastHeard?: number) => void): () => void {
    let stopped = false;
    let controller: AbortController | null = null;
    let lastId: string | null = null;
    let delay = 250;
    // When the control plane last said anything on the stream (or answered its request).
    let lastHeard = Date.now();
    const run = async () => {
      while (!stopped) {
        onStatus("connecting");
        const ctl = new AbortController();
        controller = ctl;
        // One watchdog for the whole attempt: no answer, or silence, for SILENCE_MS ends it.
        let timer = 0;
        const arm = () => {
          clearTimeout(timer);
          timer = window.setTimeout(() => ctl.abort(), SILENCE_MS);
        };
        arm();
        try {
          const res = await fetch(`${this.base}/api/v1/events`, {
            headers: {
              authorization: `Bearer ${this.token}`,
              accept: "text/event-stream",
              ...(lastId ? { "last-event-id": lastId } : {}),
            },
            signal: ctl.signal,
          });
          if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
          lastHeard = Date.now();
          arm();
          onStatus("open", lastHeard);
          delay = 250;
          const parser = new SseParser();
          const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            lastHeard = Date.now();
            arm();
            for (const ev of parser.feed(value)) {
              if (parser.lastId) lastId = parser.lastId;
              dispatch(ev.event, ev.data, onEvent);
            }
          }
        } catch {
          // fall through to reconnect
        } finally {
          clearTimeout(timer);
        }
        if (stopped) return;
        onStatus("lost", lastHeard);
        await new Promise((r) => setTimeout(r, delay * (0.5 + Math.random())));
        delay = Math.min(delay * 2, 5000);
      }
    };
    void run();
    return () => {
      stopped = true;
      controller?.abort();
    };
  }
}

export function dispatch(event: string, data: string, onEvent: (e: LiveEvent) => void) {
  try {
    const parsed = JSON.parse(data);
    if (
      event === "switch" ||
      event === "deleted" ||
      event === "workers" ||
      event === "samples" ||
      event === "guard" ||
      event === "resync"
    ) {
      onEvent({ kind: event, data: parsed } as LiveEvent);
    }
  } catch {
    // A malformed event is ignored; the next full refresh corrects the picture.
  }
}
