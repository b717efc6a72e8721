// An incremental Server-Sent Events parser (the WHATWG event-stream format), with no I/O.
//
// Bytes arrive in arbitrary chunks: a frame may be split anywhere, even inside a UTF-8 sequence
// or between `\r` and `\n`. Lines are kept as bytes until complete, so a split character is
// decoded whole. A line longer than MAX_LINE is a protocol error rather than a way to make the
// client buffer without bound.

/** Longest line accepted, in bytes. */
export const MAX_LINE = 1 << 20;

export interface SseEvent {
  /** `message` when the stream named none. */
  event: string;
  /** The last `id:` seen on the stream (carried over, as the spec says). */
  id: string | null;
  data: string;
}

/** Receives the events a parser completes (an object, so feeding allocates no callback). */
export interface SseSink {
  onSseEvent(ev: SseEvent): void;
}

export class SseLineTooLong extends Error {
  constructor() {
    super(`event-stream line longer than ${MAX_LINE} bytes`);
    this.name = "SseLineTooLong";
  }
}

const LF = 0x0a;
const CR = 0x0d;
const COLON = 0x3a;
const SPACE = 0x20;

const enum Field {
  Event,
  Data,
  Id,
  Retry,
  Other,
}

const is = (b: Uint8Array, s: number, e: number, name: string): boolean => {
  if (e - s !== name.length) return false;
  for (let i = 0; i < name.length; i++) if (b[s + i] !== name.charCodeAt(i)) return false;
  return true;
};

function fieldOf(b: Uint8Array, s: number, e: number): Field {
  if (is(b, s, e, "data")) return Field.Data;
  if (is(b, s, e, "event")) return Field.Event;
  if (is(b, s, e, "id")) return Field.Id;
  if (is(b, s, e, "retry")) return Field.Retry;
  return Field.Other;
}

/** UTF-8 text of `b[s, e)` (invalid sequences replaced), without a Buffer view when `b` is one. */
function utf8(b: Uint8Array, s: number, e: number): string {
  if (s === e) return "";
  if (Buffer.isBuffer(b)) return b.toString("utf8", s, e);
  return Buffer.from(b.buffer, b.byteOffset + s, e - s).toString("utf8");
}

export class SseParser {
  /** Bytes of the line not yet ended (null when none: the common case costs nothing). */
  #partial: Buffer | null = null;
  /** The previous chunk ended in `\r`: a leading `\n` of the next chunk belongs to it. */
  #afterCr = false;
  #event = "";
  #data = "";
  #hasData = false;
  #lastId: string | null = null;
  /** Reconnection delay the server asked for, in milliseconds. */
  retryMs: number | null = null;

  /** The id to send as `Last-Event-ID` when reconnecting. */
  get lastEventId(): string | null {
    return this.#lastId;
  }

  /** Nothing buffered, no event half-read: the next byte starts a line of a new event. */
  get idle(): boolean {
    return this.#partial === null && !this.#afterCr && !this.#hasData && this.#event === "";
  }

  /** What reading a FrameMemo's frame does to an idle parser: the id the frame set. */
  resume(lastId: string | null): void {
    if (lastId !== null) this.#lastId = lastId;
  }

  /**
   * Feeds `buf[start, end)`; calls `sink.onSseEvent` for each event completed. Throws SseLineTooLong
   * (and drops the line) when a line grows past MAX_LINE.
   */
  feed(buf: Uint8Array, start: number, end: number, sink: SseSink): void {
    let i = start;
    if (this.#afterCr) {
      this.#afterCr = false;
      if (i < end && buf[i] === LF) i++;
    }
    while (i < end) {
      let j = i;
      while (j < end && buf[j] !== LF && buf[j] !== CR) j++;
      if (j === end) {
        this.#keep(buf, i, end);
        return;
      }
      this.#line(buf, i, j, sink);
      if (buf[j] === CR) {
        if (j + 1 < end) {
          if (buf[j + 1] === LF) j++;
        } else {
          this.#afterCr = true;
        }
      }
      i = j + 1;
    }
  }

  /** Forgets a half-received event (the connection ended: the spec discards it). */
  reset(): void {
    this.#partial = null;
    this.#afterCr = false;
    this.#event = "";
    this.#data = "";
    this.#hasData = false;
  }

  #keep(buf: Uint8Array, from: number, to: number): void {
    const have = this.#partial ? this.#partial.length : 0;
    if (have + (to - from) > MAX_LINE) {
      this.#partial = null;
      throw new SseLineTooLong();
    }
    // Copied: the caller's buffer is reused for the next read.
    const piece = Buffer.from(buf.subarray(from, to));
    this.#partial = this.#partial ? Buffer.concat([this.#partial, piece]) : piece;
  }

  #line(buf: Uint8Array, from: number, to: number, sink: SseSink): void {
    let line: Uint8Array;
    let s: number;
    let e: number;
    if (this.#partial) {
      if (this.#partial.length + (to - from) > MAX_LINE) {
        this.#partial = null;
        throw new SseLineTooLong();
      }
      line = Buffer.concat([this.#partial, buf.subarray(from, to)]);
      this.#partial = null;
      s = 0;
      e = line.length;
    } else {
      line = buf;
      s = from;
      e = to;
    }
    if (s === e) {
      this.#dispatch(sink);
      return;
    }
    if (line[s] === COLON) return; // a comment: the keep-alive
    let colon = s;
    while (colon < e && line[colon] !== COLON) colon++;
    // The field's name is matched on its bytes: no string is made for it, on every line of every
    // event of every gate.
    const field = fieldOf(line, s, colon);
    if (field === Field.Other) return; // unknown fields are ignored, per the spec
    let vs = colon < e ? colon + 1 : e;
    if (vs < e && line[vs] === SPACE) vs++;
    const value = utf8(line, vs, e);
    switch (field) {
      case Field.Event:
        this.#event = value === "switch" ? "switch" : value;
        break;
      case Field.Data:
        this.#data = this.#hasData ? this.#data + "\n" + value : value;
        this.#hasData = true;
        break;
      case Field.Id:
        if (!value.includes("\0")) this.#lastId = value;
        break;
      case Field.Retry:
        if (/^\d+$/.test(value)) this.retryMs = Number(value);
        break;
    }
  }

  #dispatch(sink: SseSink): void {
    if (!this.#hasData) {
      // An event with no data is not dispatched (the spec), but its type does not carry over.
      this.#event = "";
      return;
    }
    const ev: SseEvent = { event: this.#event || "message", id: this.#lastId, data: this.#data };
    this.#event = "";
    this.#data = "";
    this.#hasData = false;
    sink.onSseEvent(ev);
  }
}

/** Collects a parser's events into a list (the memo's own decoding). */
class Collect implements SseSink {
  events: SseEvent[] = [];
  onSseEvent(ev: SseEvent): void {
    this.events.push(ev);
  }
}

/**
 * The decoding of the last frame, shared by the streams of a process. A press reaches every gate
 * of a process on one switch with the same bytes: the first stream decodes them, the others
 * compare bytes and get the same event objects (which nobody may change), so a delivery to a
 * thousand gates makes one string and one JSON document instead of a thousand (garbage that,
 * surviving in the gates, grew V8's young generation press after press). A frame is remembered
 * only when decoding it does not depend on what came before: read by an idle parser, leaving it
 * idle, every event carrying an id the frame itself set, no `retry:`. Anything else is decoded
 * by the stream's own parser.
 */
export class FrameMemo {
  #bytes: Buffer | null = null;
  #events: SseEvent[] = [];
  #id: string | null = null;

  /** As `parser.feed(buf, start, end, sink)`, answered from the last frame when it is the same. */
  feed(parser: SseParser, buf: Uint8Array, start: number, end: number, sink: SseSink): void {
    if (!parser.idle) {
      parser.feed(buf, start, end, sink);
      return;
    }
    const m = this.#bytes;
    // Buffer#compare with ranges: no view of `buf` is made for the comparison.
    if (m === null || m.length !== end - start || m.compare(buf, start, end) !== 0) {
      const fresh = new SseParser();
      const got = new Collect();
      try {
        fresh.feed(buf, start, end, got);
      } catch {
        parser.feed(buf, start, end, sink); // the stream's own parser says what is wrong
        return;
      }
      if (!fresh.idle || fresh.retryMs !== null || got.events.some((e) => e.id === null)) {
        parser.feed(buf, start, end, sink);
        return;
      }
      this.#bytes = Buffer.from(buf.subarray(start, end));
      this.#events = got.events;
      this.#id = fresh.lastEventId;
    }
    parser.resume(this.#id);
    const evs = this.#events;
    for (let i = 0; i < evs.length; i++) sink.onSseEvent(evs[i]!);
  }
}
