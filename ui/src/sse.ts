// An incremental Server-Sent Events parser (the browser's EventSource cannot send an
// Authorization header, so the web console reads the stream with fetch).

export interface SseEvent {
  event: string;
  id: string | null;
  data: string;
}

export class SseParser {
  private buf = "";
  private event = "";
  private data: string[] = [];
  private hasData = false;
  lastId: string | null = null;

  /** Feeds decoded text; returns the events it completed. */
  feed(chunk: string): SseEvent[] {
    this.buf += chunk;
    const out: SseEvent[] = [];
    for (;;) {
      const m = /\r\n|\r|\n/.exec(this.buf);
      if (!m) break;
      // A lone trailing \r may be the first half of \r\n: wait for more.
      if (m[0] === "\r" && m.index === this.buf.length - 1) break;
      const line = this.buf.slice(0, m.index);
      this.buf = this.buf.slice(m.index + m[0].length);
      this.line(line, out);
    }
    return out;
  }

  private line(line: string, out: SseEvent[]) {
    if (line === "") {
      if (this.hasData) {
        out.push({ event: this.event || "message", id: this.lastId, data: this.data.join("\n") });
      }
      this.event = "";
      this.data = [];
      this.hasData = false;
      return;
    }
    if (line.startsWith(":")) return;
    const i = line.indexOf(":");
    const field = i < 0 ? line : line.slice(0, i);
    let value = i < 0 ? "" : line.slice(i + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.event = value;
    else if (field === "data") {
      this.data.push(value);
      this.hasData = true;
    } else if (field === "id" && !value.includes("\0")) this.lastId = value;
  }
}
