// The office-button wire protocol (docs/protocol.md), device side. Plain C++ with no Arduino
// headers so the same code runs on the AVR and in the host tests
// (firmware/test/test_logic.cpp) against docs/protocol-vectors.txt.
#pragma once
#include <stdint.h>

namespace brb {

const uint8_t PROTOCOL_VERSION = 1;
// Longest message accepted; the longest defined (a hello with a 16-byte serial) is 23, the
// one byte more is room for a message type added within this version (docs/protocol.md).
const uint8_t MAX_MESSAGE = 24;
const uint8_t MAX_SERIAL = 16;
// Characters between '$' and '\n': hex of the message and of the 2-byte CRC.
const uint8_t MAX_LINE = 2 * (MAX_MESSAGE + 2);
// '$' + body + '\n' + NUL.
const uint8_t LINE_BUFFER = MAX_LINE + 3;
const uint8_t REPORT_SIZE = 32;

enum MsgType : uint8_t {
  T_HELLO = 0x01,
  T_PRESS = 0x02,
  T_RELEASE = 0x03,
  T_ARMING = 0x04,
  T_HEARTBEAT = 0x05,
  T_SHOW = 0x81,
  T_PING = 0x82,
};

enum Capability : uint8_t {
  CAP_LED = 0x01,
  CAP_ARMING = 0x02,
  CAP_HID = 0x04,
  CAP_SERIAL = 0x08,
};

enum Show : uint8_t {
  SHOW_RUNNING = 0,
  SHOW_PAUSED = 1,
  SHOW_DRAINING = 2,
  SHOW_RAMPING = 3,
  SHOW_NO_CONNECTION = 4,
  SHOW_ERROR = 5,
  SHOW_SENDING = 6,
  SHOW_COUNT = 7,
};

const char *show_name(uint8_t s);

struct Msg {
  uint8_t len;
  uint8_t b[MAX_MESSAGE];
};

uint16_t crc16(const uint8_t *data, uint8_t len);

// Device-to-host encoders.
void msg_hello(Msg &m, const uint8_t fw[3], uint8_t caps, const char *serial);
void msg_press(Msg &m, uint16_t seq, bool armed);
void msg_release(Msg &m, uint16_t seq, uint32_t hold_ms, bool armed);
void msg_arming(Msg &m, bool armed);
void msg_heartbeat(Msg &m, uint32_t uptime_ms, uint8_t shown, bool armed);

// Serial line framing: writes "$<hex><crc>\n" and a NUL into out (LINE_BUFFER bytes);
// returns the length without the NUL.
uint8_t line_encode(const Msg &m, char *out);

enum FrameResult : uint8_t {
  FRAME_NONE = 0,  // nothing complete yet
  FRAME_OK,
  FRAME_ERR_HEX,
  FRAME_ERR_TOOLONG,
  FRAME_ERR_LENGTH,
  FRAME_ERR_CRC,
  FRAME_ERR_INTERRUPTED,
};

const char *frame_error_name(FrameResult r);

// Bytes in, CRC-checked messages out; resynchronises on '$'. Bounded memory.
class LineDecoder {
 public:
  LineDecoder() : in_frame_(false), n_(0) {}
  FrameResult push(uint8_t c, Msg &out);

 private:
  bool in_frame_;
  uint8_t n_;
  char buf_[MAX_LINE];
};

enum HostKind : uint8_t { HOST_SHOW, HOST_PING };

struct HostMsg {
  uint8_t kind;
  uint8_t show;
};

enum DecodeResult : uint8_t { DEC_OK = 0, DEC_ERR_LENGTH, DEC_ERR_TYPE, DEC_ERR_VALUE };

DecodeResult decode_host(const Msg &m, HostMsg &out);

// HID reports: length byte, message, zero padding to REPORT_SIZE.
void hid_pack(const Msg &m, uint8_t report[REPORT_SIZE]);
bool hid_unpack(const uint8_t *report, uint8_t n, Msg &out);

}  // namespace brb
