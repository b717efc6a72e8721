// The errors the SDK throws or reports. Each has a `code` a program can switch on; messages are
// for people and never contain the token.

export type BrbErrorCode =
  | "config" // a setting the SDK refuses (thrown by the constructor)
  | "unreachable" // no control plane answered (refused, reset, timed out)
  | "api" // the control plane answered with an error (see status and apiCode)
  | "protocol" // something answered that is not the control plane's API
  | "closed" // the gate was closed while waiting
  | "timeout"; // a wait ran out of time

export class BrbError extends Error {
  readonly code: BrbErrorCode;
  constructor(code: BrbErrorCode, message: string) {
    super(message);
    this.name = "BrbError";
    this.code = code;
  }
}

/** A duration for a person: `300 ms`, `10 s`. */
export function duration(ms: number): string {
  return ms < 10_000 && ms % 1000 !== 0 ? `${Math.round(ms)} ms` : `${Math.round(ms / 1000)} s`;
}

/** The control plane answered with an error status. */
export class ApiError extends BrbError {
  readonly status: number;
  /** The API's error code (`unauthorized`, `token_expired`, `rate_limited`, ...), when it sent one. */
  readonly apiCode: string | null;
  /** From `Retry-After`, when the answer had one. */
  readonly retryAfterMs: number | null;
  constructor(status: number, apiCode: string | null, message: string, retryAfterMs: number | null) {
    super("api", message);
    this.name = "ApiError";
    this.status = status;
    this.apiCode = apiCode;
    this.retryAfterMs = retryAfterMs;
  }
}

/** The error an answer with a non-success status stands for. */
export function errorFromAnswer(
  url: string,
  status: number,
  headers: { get(name: string): string | undefined | null },
  body: Buffer,
  retryAfterMs: number | null,
): BrbError {
  if (status >= 300 && status < 400) {
    const to = headers.get("location") ?? "(no Location)";
    return new BrbError(
      "protocol",
      `${url}: HTTP ${status} redirect to ${JSON.stringify(to.slice(0, 200))} not followed ` +
        `(the SDK never follows redirects: a token must not be sent to another host; give the final URL)`,
    );
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString("utf8"));
  } catch {
    parsed = undefined;
  }
  const err = (parsed as { error?: { code?: unknown; message?: unknown } } | undefined)?.error;
  if (err && typeof err.code === "string" && typeof err.message === "string") {
    return new ApiError(status, err.code, `${url}: ${err.message} (${err.code}, HTTP ${status})`, retryAfterMs);
  }
  const snippet = body.toString("utf8", 0, Math.min(body.length, 200)).replace(/[\x00-\x1f\x7f]+/g, " ");
  return new ApiError(status, null, `${url}: HTTP ${status}: ${snippet}`, retryAfterMs);
}
