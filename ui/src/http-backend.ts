// The web console's backend: same-origin HTTP for requests, SSE read with fetch for live events.

import {
  BackendError,
  type ApiErrorBody,
  type AuditEntry,
  type RampControlRequest,
  type Series,
  type ServerInfo,
  type SetStateRequest,
  type Switch,
  type WorkerCounts,
} from "./api";
import type { Backend, ConnectionStatus, LiveEvent } from "./backend";
import { SseParser } from "./sse";

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

  subscribe(onEvent: (e: LiveEvent) => void, onStatus: (s: ConnectionStatus) => void): () => void {
    let stopped = false;
    let controller: AbortController | null = null;
    let lastId: string | null = null;
    let delay = 250;
    const run = async () => {
      while (!stopped) {
        onStatus("connecting");
        controller = new AbortController();
        try {
          const res = await fetch(`${this.base}/api/v1/events`, {
            headers: {
              authorization: `Bearer ${this.token}`,
              accept: "text/event-stream",
              ...(lastId ? { "last-event-id": lastId } : {}),
            },
            signal: controller.signal,
          });
          if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
          onStatus("open");
          delay = 250;
          const parser = new SseParser();
          const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
          // A keep-alive comment arrives at least every 15 s; silence for 35 s means the line
          // is dead even if the socket does not say so.
          let timer = 0;
          const arm = () => {
            clearTimeout(timer);
            timer = window.setTimeout(() => controller?.abort(), 35_000);
          };
          arm();
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            arm();
            for (const ev of parser.feed(value)) {
              if (parser.lastId) lastId = parser.lastId;
              dispatch(ev.event, ev.data, onEvent);
            }
          }
          clearTimeout(timer);
        } catch {
          // fall through to reconnect
        }
        if (stopped) return;
        onStatus("lost");
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
      event === "resync"
    ) {
      onEvent({ kind: event, data: parsed } as LiveEvent);
    }
  } catch {
    // A malformed event is ignored; the next full refresh corrects the picture.
  }
}
