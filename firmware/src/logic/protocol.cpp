#include "protocol.h"

#include <string.h>

namespace brb {

static const char HEX[] = "0123456789ABCDEF";

const char *show_name(uint8_t s) {
  switch (s) {
    case SHOW_RUNNING: return "running";
    case SHOW_PAUSED: return "paused";
    case SHOW_DRAINING: return "draining";
    case SHOW_RAMPING: return "ramping";
    case SHOW_NO_CONNECTION: return "no-connection";
    case SHOW_ERROR: return "error";
    case SHOW_SENDING: return "sending";
    default: return "?";
  }
}

const char *frame_error_name(FrameResult r) {
  switch (r) {
    case FRAME_ERR_HEX: return "hex";
    case FRAME_ERR_TOOLONG: return "toolong";
    case FRAME_ERR_LENGTH: return "length";
    case FRAME_ERR_CRC: return "crc";
    case FRAME_ERR_INTERRUPTED: return "interrupted";
    default: return "";
  }
}

uint16_t crc16(const uint8_t *data, uint8_t len) {
  uint16_t crc = 0xffff;
  for (uint8_t i = 0; i < len; i++) {
    crc ^= (uint16_t)data[i] << 8;
    for (uint8_t k = 0; k < 8; k++) {
      crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
  }
  return crc;
}

static void put16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v) {
  for (uint8_t i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

void msg_hello(Msg &m, const uint8_t fw[3], uint8_t caps, const char *serial) {
  m.b[0] = T_HELLO;
  m.b[1] = PROTOCOL_VERSION;
  m.b[2] = fw[0];
  m.b[3] = fw[1];
  m.b[4] = fw[2];
  m.b[5] = caps;
  uint8_t n = 0;
  // Keep only printable ASCII, as the host requires.
  for (const char *s = serial; *s && n < MAX_SERIAL; s++) {
    if (*s >= 0x21 && *s <= 0x7e) m.b[7 + n++] = (uint8_t)*s;
  }
  if (n == 0) m.b[7 + n++] = '?';
  m.b[6] = n;
  m.len = 7 + n;
}

void msg_press(Msg &m, uint16_t seq, bool armed) {
  m.b[0] = T_PRESS;
  put16(m.b + 1, seq);
  m.b[3] = armed ? 1 : 0;
  m.len = 4;
}

void msg_release(Msg &m, uint16_t seq, uint32_t hold_ms, bool armed) {
  m.b[0] = T_RELEASE;
  put16(m.b + 1, seq);
  put32(m.b + 3, hold_ms);
  m.b[7] = armed ? 1 : 0;
  m.len = 8;
}

void msg_arming(Msg &m, bool armed) {
  m.b[0] = T_ARMING;
  m.b[1] = armed ? 1 : 0;
  m.len = 2;
}

void msg_heartbeat(Msg &m, uint32_t uptime_ms, uint8_t shown, bool armed) {
  m.b[0] = T_HEARTBEAT;
  put32(m.b + 1, uptime_ms);
  m.b[5] = shown;
  m.b[6] = armed ? 1 : 0;
  m.len = 7;
}

uint8_t line_encode(const Msg &m, char *out) {
  uint8_t n = 0;
  out[n++] = '$';
  uint16_t crc = crc16(m.b, m.len);
  for (uint8_t i = 0; i < m.len + 2; i++) {
    uint8_t b = i < m.len ? m.b[i] : (i == m.len ? (uint8_t)(crc >> 8) : (uint8_t)crc);
    out[n++] = HEX[b >> 4];
    out[n++] = HEX[b & 0x0f];
  }
  out[n++] = '\n';
  out[n] = 0;
  return n;
}

static int8_t nibble(uint8_t c) {
  if (c >= '0' && c <= '9') return (int8_t)(c - '0');
  if (c >= 'A' && c <= 'F') return (int8_t)(c - 'A' + 10);
  return -1;
}

FrameResult LineDecoder::push(uint8_t c, Msg &out) {
  if (c == '$') {
    bool interrupted = in_frame_ && n_ > 0;
    in_frame_ = true;
    n_ = 0;
    return interrupted ? FRAME_ERR_INTERRUPTED : FRAME_NONE;
  }
  if (!in_frame_) return FRAME_NONE;  // garbage between frames
  if (c == '\r') return FRAME_NONE;
  if (c == '\n') {
    in_frame_ = false;
    uint8_t n = n_;
    n_ = 0;
    if (n < 6 || (n & 1)) return FRAME_ERR_LENGTH;
    uint8_t total = n / 2;
    uint8_t bytes[MAX_MESSAGE + 2];
    for (uint8_t i = 0; i < total; i++) {
      bytes[i] = (uint8_t)((nibble(buf_[2 * i]) << 4) | nibble(buf_[2 * i + 1]));
    }
    uint8_t len = total - 2;
    uint16_t got = (uint16_t)((bytes[len] << 8) | bytes[len + 1]);
    if (got != crc16(bytes, len)) return FRAME_ERR_CRC;
    memcpy(out.b, bytes, len);
    out.len = len;
    return FRAME_OK;
  }
  if (nibble(c) < 0) {
    in_frame_ = false;
    n_ = 0;
    return FRAME_ERR_HEX;
  }
  if (n_ >= MAX_LINE) {
    in_frame_ = false;
    n_ = 0;
    return FRAME_ERR_TOOLONG;
  }
  buf_[n_++] = (char)c;
  return FRAME_NONE;
}

DecodeResult decode_host(const Msg &m, HostMsg &out) {
  if (m.len == 0) return DEC_ERR_LENGTH;
  switch (m.b[0]) {
    case T_SHOW:
      if (m.len != 2) return DEC_ERR_LENGTH;
      if (m.b[1] >= SHOW_COUNT) return DEC_ERR_VALUE;
      out.kind = HOST_SHOW;
      out.show = m.b[1];
      return DEC_OK;
    case T_PING:
      if (m.len != 1) return DEC_ERR_LENGTH;
      out.kind = HOST_PING;
      out.show = 0;
      return DEC_OK;
    default:
      return DEC_ERR_TYPE;
  }
}

void hid_pack(const Msg &m, uint8_t report[REPORT_SIZE]) {
  memset(report, 0, REPORT_SIZE);
  report[0] = m.len;
  memcpy(report + 1, m.b, m.len);
}

bool hid_unpack(const uint8_t *report, uint8_t n, Msg &out) {
  if (n < 1 || report[0] == 0 || report[0] > MAX_MESSAGE || report[0] + 1 > n) return false;
  out.len = report[0];
  memcpy(out.b, report + 1, out.len);
  return true;
}

}  // namespace brb
