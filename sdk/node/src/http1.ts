// The HTTP/1.1 codec of the event stream, with no I/O: the answer's head and a chunked body.
//
// Why not node:http for the stream: a ClientRequest, an IncomingMessage and a parser per open
// stream cost about twice the memory of the socket itself (measured: ~24 KiB per idle stream
// against ~13 KiB for a bare socket), and a worker process may hold a thousand gates. The
// stream needs one GET and a body read as it comes, so the SDK writes the request itself and
// reads the answer with this codec. Reports and long-polls, short and few, use node:http.

/** Longest answer head accepted. */
export const MAX_HEAD = 16 * 1024;
/** Longest chunk-size line accepted (a size with extensions). */
const MAX_SIZE_LINE = 1024;

export class HttpProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "HttpProtocolError";
  }
}

export interface ResponseHead {
  status: number;
  /** Lower-cased names; a repeated header keeps its last value. */
  headers: Map<string, string>;
  /** Offset in the buffer passed to `parseHead` where the body starts. */
  bodyStart: number;
}

/**
 * Parses an answer's head from `buf` when it is complete: null while `\r\n\r\n` has not arrived
 * yet, a ResponseHead once it has. Throws HttpProtocolError for anything that is not HTTP/1.x.
 */
export function parseHead(buf: Buffer): ResponseHead | null {
  const end = buf.indexOf("\r\n\r\n", 0, "latin1");
  if (end < 0) {
    if (buf.length > MAX_HEAD) throw new HttpProtocolError(`answer head longer than ${MAX_HEAD} bytes`);
    return null;
  }
  if (end > MAX_HEAD) throw new HttpProtocolError(`answer head longer than ${MAX_HEAD} bytes`);
  const lines = buf.toString("latin1", 0, end).split("\r\n");
  const m = /^HTTP\/1\.[01] (\d{3})(?: .*)?$/.exec(lines[0] ?? "");
  if (!m) {
    throw new HttpProtocolError(`not an HTTP/1.1 answer: ${JSON.stringify((lines[0] ?? "").slice(0, 80))}`);
  }
  const headers = new Map<string, string>();
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i]!;
    const colon = line.indexOf(":");
    if (colon <= 0) throw new HttpProtocolError(`malformed header line: ${JSON.stringify(line.slice(0, 80))}`);
    headers.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim());
  }
  return { status: Number(m[1]), headers, bodyStart: end + 4 };
}

const enum ChunkState {
  Size,
  Data,
  DataEnd,
  Trailer,
  Done,
}

/** Receives a chunked body's payload (an object, so feeding allocates no callback). */
export interface ChunkSink {
  /** A piece of payload: `b[s, e)`, the caller's buffer, valid during the call only. */
  onChunkData(b: Uint8Array, s: number, e: number): void;
}

/** Decodes a `Transfer-Encoding: chunked` body incrementally, handing the payload to a sink. */
export class ChunkedDecoder {
  #state = ChunkState.Size;
  #left = 0;
  /** The chunk-size line so far: its value, its length, and whether the size's digits ended. */
  #size = 0;
  #lineLen = 0;
  #digits = 0;
  #sizeEnded = false;
  #trailerEmpty = true;

  get done(): boolean {
    return this.#state === ChunkState.Done;
  }

  feed(buf: Uint8Array, start: number, end: number, sink: ChunkSink): void {
    let i = start;
    while (i < end) {
      switch (this.#state) {
        case ChunkState.Size: {
          // Read on the bytes (no string per chunk): hex digits, then `;extensions` or spaces,
          // then CRLF (a lone LF is tolerated).
          for (; i < end; i++) {
            const b = buf[i]!;
            if (++this.#lineLen > MAX_SIZE_LINE) throw new HttpProtocolError("chunk-size line too long");
            if (b === 0x0a) break;
            if (this.#sizeEnded || b === 0x0d) {
              this.#sizeEnded = true;
              continue;
            }
            const d = hexDigit(b);
            if (d < 0) {
              if (b === 0x3b || b === 0x20 || b === 0x09) {
                this.#sizeEnded = true;
                continue;
              }
              throw new HttpProtocolError(`bad chunk size (byte 0x${b.toString(16)})`);
            }
            if (++this.#digits > 8) throw new HttpProtocolError("chunk size too large");
            this.#size = this.#size * 16 + d;
          }
          if (i === end) return;
          i++; // the LF
          if (this.#digits === 0) throw new HttpProtocolError("bad chunk size (no digits)");
          this.#left = this.#size;
          this.#size = 0;
          this.#lineLen = 0;
          this.#digits = 0;
          this.#sizeEnded = false;
          this.#state = this.#left === 0 ? ChunkState.Trailer : ChunkState.Data;
          break;
        }
        case ChunkState.Trailer: {
          // Trailer lines until an empty one.
          const b = buf[i++]!;
          if (++this.#lineLen > MAX_SIZE_LINE) throw new HttpProtocolError("trailer line too long");
          if (b === 0x0a) {
            if (this.#trailerEmpty) this.#state = ChunkState.Done;
            this.#trailerEmpty = true;
            this.#lineLen = 0;
          } else if (b !== 0x0d) {
            this.#trailerEmpty = false;
          }
          break;
        }
        case ChunkState.Data: {
          const n = Math.min(this.#left, end - i);
          sink.onChunkData(buf, i, i + n);
          this.#left -= n;
          i += n;
          if (this.#left === 0) this.#state = ChunkState.DataEnd;
          break;
        }
        case ChunkState.DataEnd: {
          // CRLF after the payload (a lone LF is tolerated).
          const b = buf[i]!;
          if (b === 0x0d && this.#lineLen === 0) {
            this.#lineLen = 1;
            i++;
          } else if (b === 0x0a) {
            this.#lineLen = 0;
            this.#state = ChunkState.Size;
            i++;
          } else {
            throw new HttpProtocolError("chunk not followed by CRLF");
          }
          break;
        }
        case ChunkState.Done:
          return; // anything after the last chunk is not ours
      }
    }
  }
}

function hexDigit(b: number): number {
  if (b >= 0x30 && b <= 0x39) return b - 0x30;
  if (b >= 0x61 && b <= 0x66) return b - 0x61 + 10;
  if (b >= 0x41 && b <= 0x46) return b - 0x41 + 10;
  return -1;
}

/** `Retry-After` in milliseconds: seconds or an HTTP date; null when absent or unreadable. */
export function retryAfterMs(value: string | undefined | null, nowMs: number = Date.now()): number | null {
  if (value == null) return null;
  const v = value.trim();
  if (/^\d{1,9}$/.test(v)) return Number(v) * 1000;
  const t = Date.parse(v);
  if (Number.isNaN(t)) return null;
  return Math.max(0, t - nowMs);
}
