// The button's behaviour, independent of the board: debouncing, press/hold timing, arming,
// heartbeats, the host watchdog and LED patterns. Time is passed in (milliseconds, wrapping
// uint32_t as from millis()), so the host tests drive it with a fake clock.
#pragma once
#include <stdint.h>

#include "protocol.h"

namespace brb {

// A raw input becomes a stable level only after it has read the same for `ms` milliseconds.
class Debouncer {
 public:
  explicit Debouncer(uint16_t ms) : ms_(ms), stable_(false), raw_(false), since_(0) {}
  void reset(bool level, uint32_t now) {
    stable_ = raw_ = level;
    since_ = now;
  }
  // Returns true when the stable level changed.
  bool update(bool raw, uint32_t now);
  bool level() const { return stable_; }

 private:
  uint16_t ms_;
  bool stable_;
  bool raw_;
  uint32_t since_;
};

// Whether the light is on at time t for a shown state.
bool led_pattern(uint8_t show, uint32_t t);

struct DeviceInfo {
  const char *serial;
  uint8_t firmware[3];
  uint8_t caps;
};

class Device {
 public:
  static const uint16_t DEBOUNCE_MS = 20;
  static const uint16_t ARM_DEBOUNCE_MS = 50;
  static const uint16_t HEARTBEAT_MS = 1000;
  // No valid host message for this long: show NO_CONNECTION on our own.
  static const uint16_t HOST_TIMEOUT_MS = 3000;
  static const uint8_t QUEUE = 6;

  explicit Device(const DeviceInfo &info);

  // Inputs are logical: `down` true while the button is pressed, `armed` true while the arming
  // input allows presses (no cover fitted reads as armed).
  void begin(uint32_t now, bool down, bool armed);
  void poll(uint32_t now, bool down, bool armed);
  void on_host_byte(uint8_t c, uint32_t now);
  void on_host_message(const Msg &m, uint32_t now);

  // What the light shows now (the host's last word, unless the host went quiet).
  uint8_t shown(uint32_t now) const;
  bool led(uint32_t now) const { return led_pattern(shown(now), now); }
  bool host_active(uint32_t now) const;

  // Next message to send to the host, oldest first.
  bool next_out(Msg &m);

  uint16_t bad_frames() const { return bad_frames_; }
  uint16_t dropped() const { return dropped_; }

 private:
  void push(const Msg &m);
  void hello();

  DeviceInfo info_;
  Debouncer button_;
  Debouncer arm_;
  LineDecoder decoder_;
  uint32_t boot_;
  uint32_t pressed_at_;
  uint32_t last_heartbeat_;
  uint32_t last_host_;
  bool heard_host_;
  uint8_t show_;
  uint16_t seq_;
  uint16_t bad_frames_;
  uint16_t dropped_;
  Msg queue_[QUEUE];
  uint8_t head_;
  uint8_t count_;
};

}  // namespace brb
