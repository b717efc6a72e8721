// Big Red Button worker SDK for Node: a gate that pauses background work when the brake is
// pulled, acknowledges it to the control plane, and releases work gradually after.
export { Gate, Permit, type GateChange, type GateEvents, type SwitchState, type WaitOptions, type WorkerStatus } from "./gate.js";
export { ApiError, BrbError, type BrbErrorCode } from "./errors.js";
export { defaultWorkerId, type FailPolicy, type GateOptions, type LogLevel, type Logger, type Transport } from "./config.js";
export { backoffMs, rampFraction, parseRamp, type ParsedRamp, type Ramp } from "./ramp.js";
export { SseParser, type SseEvent, type SseSink } from "./sse.js";
